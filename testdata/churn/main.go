// Command churn floods a latency tracer's maps: it makes over a million
// goroutines that each enter a traced function and never return from it
// (main.lost always panics; the goroutine recovers and ends), while a crowd
// of goroutines sits inside another traced function (main.park) until the end.
//
// Every lost call leaves an entry without a return, under a goroutine id that
// is never seen again, and the parked goroutines alone outnumber a 65536-entry
// start map: a tracer must keep its memory bounded and count what it could
// not pair, without slowing the program to a halt or breaking it.
//
// Afterwards main.steady is called -steady times, one call after another:
// pairing must still be exact once the flood is over.
//
// With -wait it prints "ready pid=N" and waits for a line on stdin before
// starting; with -pause it prints "flooded" after the million lost calls,
// while the crowd is still parked, and waits for another line (a quiet
// moment to look at the tracer's maps). It ends by printing one JSON object with the calls it made:
// {"lost_calls": N, "recovered": N, "park_calls": N, "park_returns": N,
// "steady_calls": N}, and exits 0 when every lost call panicked and was
// recovered and every parked goroutine returned.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
)

var errLost = errors.New("lost: this call never returns")

// lost panics for every i >= 0, so its return instruction exists but is
// never reached: each call is an entry that no return matches.
//
//go:noinline
func lost(i int) int {
	if i >= 0 {
		panic(errLost)
	}
	return i + 1
}

// tryLost calls lost and recovers its panic: every call of lost from one
// goroutine is at the same depth of its stack.
//
//go:noinline
func tryLost(i int, recovered *int64) {
	defer func() {
		if r := recover(); r == errLost {
			atomic.AddInt64(recovered, 1)
		}
	}()
	lost(i)
}

// park blocks until release is closed, then returns 1.
//
//go:noinline
func park(release <-chan struct{}, parked *sync.WaitGroup) int {
	parked.Done()
	<-release
	return 1
}

// steady is an ordinary function that returns.
//
//go:noinline
func steady(i int) int {
	return i*3 + 1
}

func main() {
	n := flag.Int("n", 1000000, "goroutines that each call lost once")
	live := flag.Int("live", 100000, "goroutines parked inside park until the end")
	steadyCalls := flag.Int("steady", 10000, "calls of steady after the flood")
	inflight := flag.Int("inflight", 10000, "lost goroutines running at once")
	repeat := flag.Int("repeat", 1, "calls of lost per lost goroutine, each recovered, all at the same stack depth")
	wait := flag.Bool("wait", false, "print 'ready pid=N' and wait for a line on stdin before starting")
	pause := flag.Bool("pause", false, "print 'flooded' and wait for a line on stdin before releasing the parked goroutines")
	flag.Parse()
	if *n < 0 || *live < 0 || *steadyCalls < 0 || *inflight < 1 || *repeat < 1 {
		fmt.Fprintln(os.Stderr, "churn: -n, -live and -steady must be >= 0, -inflight and -repeat >= 1")
		os.Exit(2)
	}
	stdin := bufio.NewReader(os.Stdin)
	waitLine := func(prompt string) {
		fmt.Println(prompt)
		if _, err := stdin.ReadString('\n'); err != nil {
			fmt.Fprintf(os.Stderr, "churn: stdin closed after %q\n", prompt)
			os.Exit(2)
		}
	}
	if *wait {
		waitLine(fmt.Sprintf("ready pid=%d", os.Getpid()))
	}

	// The crowd: live goroutines inside park at the same time.
	release := make(chan struct{})
	var parked, parkDone sync.WaitGroup
	var parkReturns int64
	parked.Add(*live)
	parkDone.Add(*live)
	for i := 0; i < *live; i++ {
		go func() {
			defer parkDone.Done()
			atomic.AddInt64(&parkReturns, int64(park(release, &parked)))
		}()
	}
	parked.Wait()

	// The churn: n short-lived goroutines, each lost inside lost.
	var recovered int64
	var lostDone sync.WaitGroup
	slots := make(chan struct{}, *inflight)
	for i := 0; i < *n; i++ {
		slots <- struct{}{}
		lostDone.Add(1)
		go func(i int) {
			defer func() {
				<-slots
				lostDone.Done()
			}()
			for r := 0; r < *repeat; r++ {
				tryLost(i, &recovered)
			}
		}(i)
	}
	lostDone.Wait()

	if *pause {
		waitLine("flooded")
	}
	close(release)
	parkDone.Wait()

	sum := 0
	for i := 0; i < *steadyCalls; i++ {
		sum += steady(i)
	}

	summary := map[string]int64{
		"lost_calls":   int64(*n) * int64(*repeat),
		"recovered":    recovered,
		"park_calls":   int64(*live),
		"park_returns": parkReturns,
		"steady_calls": int64(*steadyCalls),
	}
	out, _ := json.Marshal(summary)
	fmt.Println(string(out))
	if recovered != int64(*n)*int64(*repeat) || parkReturns != int64(*live) || sum < *steadyCalls {
		os.Exit(1)
	}
}
