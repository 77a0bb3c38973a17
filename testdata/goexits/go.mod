module example.com/goexits

go 1.18
