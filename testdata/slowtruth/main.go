// Command slowtruth is the ground truth for `gotrace latency --slow` and `--by caller`.
//
// One function, main.target, is called from two callers with different
// latency distributions: main.fastCaller calls it directly, mostly for tens
// to hundreds of microseconds and every tenth call for a few milliseconds;
// main.slowCaller calls it through main.viaHelper, a small function the
// compiler inlines into it, for 0.5 to 5 milliseconds. The callers run on
// two goroutines at once.
//
// target times itself (time.Now at its top and after its work) and then
// logs, per call: its caller and the file:line of the call as Go's runtime
// reports them (runtime.Caller(1), so an inlined caller is named as Go names
// it), its own latency, its goroutine id and the wall-clock time of its end.
// The caller times the call too (time.Now just before and just after it):
// a tracer's entry and return probes lie between the caller's clock reads
// and the function's own, so what a tracer measures for a call is at least
// own_ns and at most outer_ns. At exit the log goes to -out as JSON Lines,
// one object per call.
//
// -n sets the calls per caller, -seed the generator (runs are reproducible),
// -loop N repeats the whole run N times with a pause (for `gotrace top`).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

type call struct {
	Caller    string `json:"caller"`
	File      string `json:"file"`
	Line      int    `json:"line"`
	Goid      int64  `json:"goid"`
	OwnNs     int64  `json:"own_ns"`
	OuterNs   int64  `json:"outer_ns"`
	EndWallNs int64  `json:"end_wall_ns"`
}

type callLog struct {
	goid  int64
	calls []call
}

func spin(d time.Duration) {
	start := time.Now()
	for time.Since(start) < d {
	}
}

// target is the traced function.
//
//go:noinline
func target(d time.Duration, log *callLog) {
	start := time.Now()
	spin(d)
	end := time.Now()
	pc, file, line, _ := runtime.Caller(1)
	name := "?"
	if f := runtime.FuncForPC(pc); f != nil {
		name = f.Name()
	}
	// runtime.Caller gives the logical caller; FuncForPC names the physical
	// function, so ask CallersFrames for the name of an inlined caller.
	frames := runtime.CallersFrames([]uintptr{pc})
	if fr, _ := frames.Next(); fr.Function != "" {
		name = fr.Function
	}
	log.calls = append(log.calls, call{name, file, line, log.goid, int64(end.Sub(start)), 0, end.UnixNano()})
}

// rng is a small deterministic generator.
type rng struct{ state uint64 }

func (r *rng) next() uint64 {
	r.state ^= r.state << 13
	r.state ^= r.state >> 7
	r.state ^= r.state << 17
	return r.state
}

func (r *rng) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.next()%uint64(hi-lo))
}

//go:noinline
func fastCaller(n int, r *rng, log *callLog) {
	for i := 0; i < n; i++ {
		d := r.between(20*time.Microsecond, 400*time.Microsecond)
		if i%10 == 9 {
			d = r.between(4*time.Millisecond, 6*time.Millisecond)
		}
		start := time.Now()
		target(d, log)
		log.calls[len(log.calls)-1].OuterNs = int64(time.Since(start))
	}
}

// viaHelper is inlined into slowCaller: target's caller is then an inlined frame.
func viaHelper(d time.Duration, log *callLog) {
	target(d, log)
}

//go:noinline
func slowCaller(n int, r *rng, log *callLog) {
	for i := 0; i < n; i++ {
		d := r.between(500*time.Microsecond, 8*time.Millisecond)
		start := time.Now()
		viaHelper(d, log)
		log.calls[len(log.calls)-1].OuterNs = int64(time.Since(start))
	}
}

// goid is the current goroutine's id, from the first line of its stack ("goroutine 18 [running]:").
func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	fields := bytes.Fields(buf)
	id, _ := strconv.ParseInt(string(fields[1]), 10, 64)
	return id
}

func main() {
	n := flag.Int("n", 200, "calls per caller")
	seed := flag.Uint64("seed", 1, "generator seed")
	loops := flag.Int("loop", 1, "repeat the run this many times, 200 ms apart")
	out := flag.String("out", "", "write the call log here (JSON Lines)")
	flag.Parse()

	var logs []*callLog
	for loop := 0; loop < *loops; loop++ {
		if loop > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		var wg sync.WaitGroup
		fastLog, slowLog := &callLog{}, &callLog{}
		logs = append(logs, fastLog, slowLog)
		wg.Add(2)
		go func() {
			defer wg.Done()
			fastLog.goid = goid()
			fastCaller(*n, &rng{*seed*2 + uint64(loop)*7 + 1}, fastLog)
		}()
		go func() {
			defer wg.Done()
			slowLog.goid = goid()
			slowCaller(*n/2, &rng{*seed*2 + uint64(loop)*7 + 2}, slowLog)
		}()
		wg.Wait()
	}
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			panic(err)
		}
		w := bufio.NewWriter(f)
		enc := json.NewEncoder(w)
		for _, l := range logs {
			for _, c := range l.calls {
				enc.Encode(c)
			}
		}
		w.Flush()
		f.Close()
	}
}
