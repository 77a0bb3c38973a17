// Command latencytruth is the ground truth for gotrace's latency tracer.
//
// Each traced function (main.work, main.recurse, main.growStack,
// main.blockingCall, main.mayPanic, main.safeCall) times its own calls:
// time.Now at its top, and again just before each return, with nothing but a
// lock-free store between that and the return instruction. At exit it writes,
// as JSON on stdout, per function: normal returns, panicked calls, exact
// p50/p99 of its own measurements, and how many calls ended on another OS
// thread than they started on. It waits for a line on stdin before it starts,
// so a tracer can attach first.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Enough calls per function that a p99 is not decided by two or three
// calls a busy machine happened to delay, few enough to keep uprobe costs
// (tens of microseconds per call on a VM) small.
const (
	maxCalls  = 4096
	growCalls = 600
	safeCalls = 1000 // every fifth one panics in mayPanic
)

// recorder keeps one function's measurements; add is lock-free.
type recorder struct {
	n         int64
	latencies [maxCalls]int64
	panicked  int64
	migrated  int64
}

var recorders = map[string]*recorder{
	"main.work":         {},
	"main.recurse":      {},
	"main.growStack":    {},
	"main.blockingCall": {},
	"main.mayPanic":     {},
	"main.safeCall":     {},
}

var (
	recWork     = recorders["main.work"]
	recRecurse  = recorders["main.recurse"]
	recGrow     = recorders["main.growStack"]
	recBlocking = recorders["main.blockingCall"]
	recPanic    = recorders["main.mayPanic"]
	recSafe     = recorders["main.safeCall"]
)

// add is nosplit: no preemption point between a function's last clock read
// and its return instruction.
//
//go:nosplit
func (r *recorder) add(start time.Time, end time.Time) {
	i := atomic.AddInt64(&r.n, 1) - 1
	r.latencies[i] = int64(end.Sub(start))
}

// spin busy-waits for d; not traced.
func spin(d time.Duration) {
	start := time.Now()
	for time.Since(start) < d {
	}
}

// rng is a small deterministic generator so runs are comparable.
type rng struct{ state uint64 }

func (r *rng) next() uint64 {
	r.state ^= r.state << 13
	r.state ^= r.state >> 7
	r.state ^= r.state << 17
	return r.state
}

func (r *rng) duration(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.next()%uint64(hi-lo))
}

//go:noinline
func work(d time.Duration) int64 {
	start := time.Now()
	spin(d)
	recWork.add(start, time.Now())
	return int64(d / time.Microsecond)
}

// recurse calls itself depth times: the same function open many times on one
// goroutine at once.
//
//go:noinline
func recurse(depth int, d time.Duration) int {
	start := time.Now()
	spin(d)
	if depth == 0 {
		recRecurse.add(start, time.Now())
		return 0
	}
	sum := depth + recurse(depth-1, d)
	spin(d)
	recRecurse.add(start, time.Now())
	return sum
}

// bigFrame needs about 4 KiB of stack per level: the goroutine's stack is
// grown (copied elsewhere) while growStack is running.
//
//go:noinline
func bigFrame(level int) int {
	var buf [4096]byte
	buf[level%len(buf)] = byte(level)
	if level == 0 {
		return int(buf[0])
	}
	return bigFrame(level-1) + int(buf[level%len(buf)])
}

//go:noinline
func growStack(levels int, d time.Duration) int {
	start := time.Now()
	spin(d)
	sum := bigFrame(levels)
	spin(d)
	recGrow.add(start, time.Now())
	return sum
}

// blockingCall blocks in a raw syscall (the thread blocks; its P moves on)
// and parks in time.Sleep (the goroutine may resume on another thread).
//
//go:noinline
func blockingCall(sleep time.Duration) int {
	start := time.Now()
	tid := syscall.Gettid()
	ts := syscall.NsecToTimespec(int64(sleep / 2))
	syscall.Nanosleep(&ts, nil)
	time.Sleep(sleep / 2)
	moved := syscall.Gettid() != tid
	end := time.Now()
	recBlocking.add(start, end)
	if moved {
		atomic.AddInt64(&recBlocking.migrated, 1)
		return 1
	}
	return 0
}

type planned struct{ i int }

//go:noinline
func mayPanic(i int, d time.Duration) int {
	start := time.Now()
	spin(d)
	if i%5 == 0 {
		atomic.AddInt64(&recPanic.panicked, 1)
		panic(planned{i})
	}
	recPanic.add(start, time.Now())
	return i
}

// safeCall recovers mayPanic's panics: it always returns normally.
//
//go:noinline
func safeCall(i int, d time.Duration) (result int) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			result = -r.(planned).i
		}
		recSafe.add(start, time.Now())
	}()
	return mayPanic(i, d)
}

type report struct {
	Count    int64 `json:"count"`
	Panicked int64 `json:"panicked"`
	Migrated int64 `json:"migrated"`
	P50      int64 `json:"p50_ns"`
	P99      int64 `json:"p99_ns"`
}

// percentile is the value of rank max(1, round-half-up(q/100 * n)) (hdrh's rule).
func percentile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q/100*float64(len(sorted)) + 0.5)
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func main() {
	// One P while a single goroutine is measured: with idle Ps, starting or
	// waking a goroutine also wakes an idle thread, and that wakeup tends to
	// preempt the measured thread exactly where a uprobe trap returns to user
	// space (outside the program's own interval). Two Ps for the concurrent
	// phases.
	runtime.GOMAXPROCS(1)
	// No garbage collection while measuring: a stop-the-world request takes
	// effect at the next function prologue, which can fall between a probe
	// and the program's own clock read. The run allocates a few MB.
	debug.SetGCPercent(-1)
	bufio.NewReader(os.Stdin).ReadString('\n')

	r := &rng{state: 88172645463325252}
	var wantWork, gotWork int64
	for i := 0; i < 400; i++ {
		d := r.duration(100*time.Microsecond, 1500*time.Microsecond)
		wantWork += int64(d / time.Microsecond)
		gotWork += work(d)
	}
	// Two goroutines calling work at once (no more CPU-bound threads than a
	// small machine has cores: scheduling delays would dominate the tails).
	var wg sync.WaitGroup
	var concurrent int64
	runtime.GOMAXPROCS(2)
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			gr := &rng{state: seed}
			for i := 0; i < 100; i++ {
				d := gr.duration(100*time.Microsecond, 800*time.Microsecond)
				atomic.AddInt64(&concurrent, work(d)-int64(d/time.Microsecond))
			}
		}(uint64(g)*7919 + 1)
	}
	wg.Wait()
	runtime.GOMAXPROCS(1)

	recurseSum := 0
	for i := 0; i < 100; i++ {
		recurseSum += recurse(8, time.Duration(20+i%5*10)*time.Microsecond)
	}

	// Each call on a fresh goroutine, whose small stack must grow mid-call.
	growSums := make(chan int)
	growSum := 0
	for i := 0; i < growCalls; i++ {
		go func() { growSums <- growStack(32, 50*time.Microsecond) }()
		growSum += <-growSums
	}

	moved := int64(0)
	runtime.GOMAXPROCS(2)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			if g%4 == 0 {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
			}
			for i := 0; i < 40; i++ {
				atomic.AddInt64(&moved, int64(blockingCall(time.Duration(200+(g*40+i)%7*100)*time.Microsecond)))
			}
		}(g)
	}
	wg.Wait()
	runtime.GOMAXPROCS(1)

	panicSum := 0
	for i := 0; i < safeCalls; i++ {
		panicSum += safeCall(i, time.Duration(50+i%4*50)*time.Microsecond)
	}

	// Every result must be what the program computes without a tracer.
	wantPanicSum := 0
	for i := 0; i < safeCalls; i++ {
		if i%5 == 0 {
			wantPanicSum -= i
		} else {
			wantPanicSum += i
		}
	}
	wantGrow := 0
	for level := 1; level <= 32; level++ {
		wantGrow += level % 256
	}
	ok := gotWork == wantWork && concurrent == 0 && recurseSum == 100*36 &&
		growSum == growCalls*wantGrow && panicSum == wantPanicSum && moved == recBlocking.migrated

	out := map[string]interface{}{"ok": ok}
	functions := map[string]report{}
	for name, rec := range recorders {
		n := atomic.LoadInt64(&rec.n)
		sorted := append([]int64(nil), rec.latencies[:n]...)
		sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
		functions[name] = report{
			Count:    n,
			Panicked: atomic.LoadInt64(&rec.panicked),
			Migrated: atomic.LoadInt64(&rec.migrated),
			P50:      percentile(sorted, 50),
			P99:      percentile(sorted, 99),
		}
	}
	out["functions"] = functions
	enc, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(enc))
	if !ok {
		fmt.Fprintln(os.Stderr, "latencytruth: a traced function returned a wrong result")
		os.Exit(1)
	}
}
