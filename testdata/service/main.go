// Command service is the Go program gotrace's tests trace: a small
// request-handling service whose workload exercises the kinds of functions a
// tracer must handle (pointer and value receivers, closures, generics,
// recursion, panics, promoted-method wrappers, goroutines, stack growth,
// blocking syscalls, cgo).
//
// It handles -n requests, either in-process through a worker pool
// (-mode loop) or over HTTP on 127.0.0.1 (-mode http), prints a summary with
// how often each traced function was called, and exits 0.
//
// Request i has kind i%10, which decides what handle does besides calling
// Request.Weight and work (see server.go). The counts in the summary are what
// a tracer attached for the whole run must see.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Config is the workload selected by the command-line flags.
type Config struct {
	Mode     string
	Requests int
	Workers  int
	Fib      int
	Depth    int
	SleepUs  int
	Wait     bool
	Forever  bool
	JSON     bool
}

func parseFlags() Config {
	var c Config
	flag.StringVar(&c.Mode, "mode", "loop", "loop: in-process worker pool; http: net/http server on 127.0.0.1 and a client pool")
	flag.IntVar(&c.Requests, "n", 1000, "requests per round")
	flag.IntVar(&c.Workers, "workers", 4, "worker goroutines")
	flag.IntVar(&c.Fib, "fib", 10, "argument of fib for compute requests (kind 0)")
	flag.IntVar(&c.Depth, "depth", 64, "recursion depth of grow (kind 3); each level has a ~1 KiB frame")
	flag.IntVar(&c.SleepUs, "sleep-us", 1000, "time.Sleep of slowPath (kind 6) and writer delay of blockingRead (kind 4), in microseconds")
	flag.BoolVar(&c.Wait, "wait", false, "print 'ready pid=N' and wait for SIGUSR1 before starting")
	flag.BoolVar(&c.Forever, "forever", false, "repeat rounds until SIGINT or SIGTERM, then print the summary")
	flag.BoolVar(&c.JSON, "json", false, "print the summary as one JSON object")
	flag.Parse()
	return c
}

// counters counts calls of the traced functions, by their Go symbol name.
type counters struct {
	mu sync.Mutex
	n  map[string]int64
}

var calls = counters{n: map[string]int64{}}

func count(name string) {
	calls.mu.Lock()
	calls.n[name]++
	calls.mu.Unlock()
}

func (c *counters) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int64, len(c.n))
	for k, v := range c.n {
		out[k] = v
	}
	return out
}

func main() {
	cfg := parseFlags()
	if cfg.Mode != "loop" && cfg.Mode != "http" {
		fmt.Fprintf(os.Stderr, "service: unknown -mode %q (use loop or http)\n", cfg.Mode)
		os.Exit(2)
	}
	if cfg.Requests < 0 || cfg.Workers < 1 || cfg.Depth < 1 || cfg.Fib < 0 || cfg.SleepUs < 0 {
		fmt.Fprintln(os.Stderr, "service: -n, -fib and -sleep-us must be >= 0, -workers and -depth >= 1")
		os.Exit(2)
	}

	if cfg.Wait {
		start := make(chan os.Signal, 1)
		signal.Notify(start, syscall.SIGUSR1)
		fmt.Printf("ready pid=%d\n", os.Getpid())
		<-start
		signal.Stop(start)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)

	s := NewServer(cfg)
	began := time.Now()
	rounds := 0
	var err error
	for {
		if cfg.Mode == "http" {
			err = runHTTP(s, cfg)
		} else {
			runLoop(s, cfg)
		}
		rounds++
		if err != nil || !cfg.Forever {
			break
		}
		select {
		case <-stop:
		default:
			continue
		}
		break
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "service: %v\n", err)
		os.Exit(1)
	}
	printSummary(cfg, s, rounds, time.Since(began))
}

func printSummary(cfg Config, s *Server, rounds int, elapsed time.Duration) {
	snap := calls.snapshot()
	if cfg.JSON {
		out := map[string]interface{}{
			"mode":        cfg.Mode,
			"rounds":      rounds,
			"requests":    rounds * cfg.Requests,
			"handled":     s.Handled(),
			"work_errors": s.Failures(),
			"recovered":   s.Recovered(),
			"cgo":         cgoEnabled,
			"elapsed_ns":  elapsed.Nanoseconds(),
			"calls":       snap,
		}
		enc := json.NewEncoder(os.Stdout)
		if err := enc.Encode(out); err != nil {
			os.Exit(1)
		}
		return
	}
	fmt.Printf("service summary: mode=%s rounds=%d requests=%d handled=%d work_errors=%d recovered=%d cgo=%t elapsed_ms=%d\n",
		cfg.Mode, rounds, rounds*cfg.Requests, s.Handled(), s.Failures(), s.Recovered(), cgoEnabled, elapsed.Milliseconds())
	names := make([]string, 0, len(snap))
	for k := range snap {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("calls %s %d\n", k, snap[k])
	}
}
