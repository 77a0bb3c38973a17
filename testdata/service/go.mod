module example.com/service

// go 1.18, not 1.17: the program uses generics (Map[T]), which need 1.18.
// Every toolchain in the test matrix (1.19 and newer) builds it.
go 1.18
