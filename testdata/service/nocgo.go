//go:build !cgo

package main

// cgoEnabled tells the summary whether this build calls into C.
const cgoEnabled = false

// cgoAdd is the pure-Go stand-in for the cgo version in cgo.go.
//
//go:noinline
func cgoAdd(a, b int) int {
	count("main.cgoAdd")
	return a + b
}
