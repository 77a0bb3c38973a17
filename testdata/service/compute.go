package main

import (
	"fmt"
	"strings"
)

// fib is plain recursion: fib(n) makes fib(n+1)*2-1 calls in all
// (177 for n=10).
//
//go:noinline
func fib(n int) int {
	count("main.fib")
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

// Map is generic; handle instantiates it with int and string, which gives
// main.Map[go.shape.int] and main.Map[go.shape.string].
//
//go:noinline
func Map[T any](xs []T, f func(T) T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// makeScaler returns the closure main.makeScaler.func1.
//
//go:noinline
func makeScaler(k int) func(int) int {
	return func(x int) int {
		count("main.makeScaler.func1")
		return x * k
	}
}

// shout upper-cases names through the closure main.shout.func1.
//
//go:noinline
func shout(names []string) []string {
	return Map(names, func(s string) string {
		count("main.shout.func1")
		return strings.ToUpper(s)
	})
}

// failure is the value fail panics with.
type failure int

func (f failure) Error() string { return fmt.Sprintf("failure %d", int(f)) }

// fail only panics: it has no ret instruction.
//
//go:noinline
func fail(code int) {
	panic(failure(code))
}

// tryFail calls fail and recovers its panic.
//
//go:noinline
func tryFail(code int) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("recovered: %v", r)
		}
	}()
	count("main.fail")
	fail(code)
	return nil
}

// grow recurses depth levels with a ~1 KiB frame each; run on a fresh
// goroutine (8 KiB initial stack) the stack is copied to a bigger one while
// the outer calls are in progress.
//
//go:noinline
func grow(depth int) int {
	count("main.grow")
	var frame [1024]byte
	for i := range frame {
		frame[i] = byte(depth + i)
	}
	if depth <= 1 {
		return int(frame[0])
	}
	return grow(depth-1) + int(frame[(depth*7)%len(frame)])
}

// growInGoroutine runs grow on a new goroutine (main.growInGoroutine.func1)
// and waits for it.
//
//go:noinline
func growInGoroutine(depth int) int {
	done := make(chan int)
	go func() {
		done <- grow(depth)
	}()
	return <-done
}
