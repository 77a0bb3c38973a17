module example.com/argstruth

go 1.18
