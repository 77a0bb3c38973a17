module example.com/gosymdump

go 1.18
