// Command hotloop calls one tiny function in a tight loop, so that
// scripts/bench can measure what tracing a call costs.
//
// It prints "ready", then reads one number N per line on stdin: it calls
// main.hot N times and answers "ns=<elapsed nanoseconds> calls=N". It exits at
// the end of stdin. A tracer attaches between lines, so probes are in place
// before a run starts and removed after it ends.
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

// hot is the traced function: a few instructions, never inlined.
//
//go:noinline
func hot(x uint64) uint64 {
	return x*2654435761 + 1
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		n, err := strconv.Atoi(line)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "hotloop: want a call count, got %q\n", line)
			os.Exit(2)
		}
		x := uint64(n)
		start := time.Now()
		for i := 0; i < n; i++ {
			x = hot(x)
		}
		elapsed := time.Since(start)
		sink = x
		fmt.Fprintf(out, "ns=%d calls=%d\n", elapsed.Nanoseconds(), n)
		out.Flush()
	}
}
