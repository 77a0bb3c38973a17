//go:build cgo

package main

/*
static int gotrace_add(int a, int b) { return a + b; }
*/
import "C"

// cgoEnabled tells the summary whether this build calls into C.
const cgoEnabled = true

// cgoAdd adds in C (through the cgo call machinery).
//
//go:noinline
func cgoAdd(a, b int) int {
	count("main.cgoAdd")
	return int(C.gotrace_add(C.int(a), C.int(b)))
}
