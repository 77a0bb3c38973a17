module example.com/latencytruth

go 1.17
