// Command hotloop calls one tiny function in a tight loop, so that
// scripts/bench can measure what tracing a call costs.
//
// It prints "ready", then reads one number N per line on stdin: it calls
// main.hot N times and answers "ns=<elapsed nanoseconds> calls=N". A line "N K"
// times the calls in chunks of K as well and adds " chunk_ns=<median> chunk_min_ns=<min>"
// of those chunks (a chunk the CPU was taken away during is an outlier the
// median ignores). It exits at the end of stdin. A tracer attaches between lines, so probes are in place
// before a run starts and removed after it ends.
package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
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
		fields := append(strings.Fields(in.Text()), "0")
		n, err := strconv.Atoi(fields[0])
		chunk, err2 := strconv.Atoi(fields[1])
		if err != nil || err2 != nil || n < 0 || chunk < 0 || len(fields) > 3 {
			fmt.Fprintf(os.Stderr, "hotloop: want a call count (and a chunk size), got %q\n", in.Text())
			os.Exit(2)
		}
		x := uint64(n)
		var chunks []int64
		start := time.Now()
		if chunk == 0 {
			for i := 0; i < n; i++ {
				x = hot(x)
			}
		} else {
			for done := 0; done < n; done += chunk {
				t := time.Now()
				for i := 0; i < chunk && done+i < n; i++ {
					x = hot(x)
				}
				chunks = append(chunks, time.Since(t).Nanoseconds())
			}
		}
		elapsed := time.Since(start)
		sink = x
		if len(chunks) > 0 {
			sort.Slice(chunks, func(i, j int) bool { return chunks[i] < chunks[j] })
			fmt.Fprintf(out, "ns=%d calls=%d chunk_ns=%d chunk_min_ns=%d\n", elapsed.Nanoseconds(), n,
				chunks[len(chunks)/2], chunks[0])
			out.Flush()
			continue
		}
		fmt.Fprintf(out, "ns=%d calls=%d\n", elapsed.Nanoseconds(), n)
		out.Flush()
	}
}
