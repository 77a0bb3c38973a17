// Command goexits starts goroutines that end at once, so that a test can count
// what gotrace's probe on runtime.goexit1 sees and costs.
//
// It prints "ready", then reads one number N per line on stdin: it starts N
// goroutines one after another, each ended before the next starts, and
// answers "ns=<elapsed nanoseconds> goroutines=N". It exits at the end of stdin.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

var sink uint64

//go:noinline
func idle() uint64 { return sink + 1 } // traced by the test; never called

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	done := make(chan struct{})
	for in.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(in.Text()))
		if err != nil || n < 0 {
			if in.Text() == "never" { // keeps idle in the binary
				sink = idle()
			}
			fmt.Fprintf(os.Stderr, "goexits: want a goroutine count, got %q\n", in.Text())
			os.Exit(2)
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			go func() { done <- struct{}{} }()
			<-done
		}
		fmt.Fprintf(out, "ns=%d goroutines=%d\n", time.Since(start).Nanoseconds(), n)
		out.Flush()
	}
}
