module slowtruth

go 1.19
