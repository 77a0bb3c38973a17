package main

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Request kinds: request i has kind i%10. Besides (*Server).handle,
// Request.Weight and work, which every request calls, a request of kind
//
//	0 computes fib(-fib)                       recursion
//	1 maps ints and strings                    Map[int], Map[string], closures
//	2 calls fail, which panics; tryFail recovers
//	3 recurses -depth levels in a new goroutine  stack growth mid-call
//	4 reads a pipe another goroutine writes    blocking syscall (readFD)
//	5 calls Describe through an interface      promoted-method wrapper (tail jump)
//	6 sleeps -sleep-us in slowPath             goroutine parks, may change thread
//	7 calls into C (cgo builds) or Go          cgoAdd
//	8, 9 nothing more
const (
	kindCompute = iota
	kindTransform
	kindFail
	kindGrow
	kindSyscall
	kindDescribe
	kindSlow
	kindCgo
	numKinds = 10
)

// Request is one unit of work. Its Size is negative for every request with
// i%50 == 49, which makes work return an error.
type Request struct {
	ID   int
	Name string
	Size int
	Kind int
}

// Response is what handle returns for a Request.
type Response struct {
	ID     int
	Weight int
	Sum    int
	Note   string
	Err    error
}

func newRequest(i int) Request {
	size := i%100 + 1
	if i%50 == 49 {
		size = -size
	}
	return Request{ID: i, Name: fmt.Sprintf("req-%d", i), Size: size, Kind: i % numKinds}
}

// Describer is called through an interface holding a *Wrapped, so the
// program really calls the promoted-method wrapper main.(*Wrapped).Describe.
type Describer interface {
	Describe() string
}

// Base is embedded by pointer in Wrapped.
type Base struct {
	name string
}

//go:noinline
func (b *Base) Describe() string {
	count("main.(*Base).Describe")
	return "base " + b.name
}

// Wrapped embeds *Base. The compiler-made wrapper main.(*Wrapped).Describe
// loads the embedded pointer and tail-jumps to (*Base).Describe: it has no
// ret instruction. (main.Wrapped.Describe also exists but is never called.)
type Wrapped struct {
	*Base
	tag int
}

// Server handles requests.
type Server struct {
	cfg       Config
	describer Describer
	handled   int64
	failures  int64
	recovered int64
}

// NewServer returns a Server for the workload cfg.
//
//go:noinline
func NewServer(cfg Config) *Server {
	return &Server{cfg: cfg, describer: &Wrapped{Base: &Base{name: "svc"}}}
}

// Handled is the number of requests handled so far.
func (s *Server) Handled() int64 { return atomic.LoadInt64(&s.handled) }

// Failures is the number of requests for which work returned an error.
func (s *Server) Failures() int64 { return atomic.LoadInt64(&s.failures) }

// Recovered is the number of panics of fail that tryFail recovered.
func (s *Server) Recovered() int64 { return atomic.LoadInt64(&s.recovered) }

// handle is the pointer-receiver method every request goes through.
//
//go:noinline
func (s *Server) handle(req Request) Response {
	count("main.(*Server).handle")
	resp := Response{ID: req.ID, Weight: tiny(req.Weight())}
	sum, err := work(req.Size, req.Name)
	resp.Sum, resp.Err = sum, err
	if err != nil {
		atomic.AddInt64(&s.failures, 1)
	}
	switch req.Kind {
	case kindCompute:
		resp.Sum += fib(s.cfg.Fib)
	case kindTransform:
		count("main.Map[int]")
		count("main.Map[string]")
		ints := Map([]int{req.ID, req.Size, 3}, makeScaler(3))
		names := shout([]string{req.Name, "x"})
		resp.Sum += ints[0]
		resp.Note = names[0]
	case kindFail:
		if tryFail(req.ID) != nil {
			atomic.AddInt64(&s.recovered, 1)
		}
	case kindGrow:
		resp.Sum += growInGoroutine(s.cfg.Depth)
	case kindSyscall:
		n, err := blockingRead(time.Duration(s.cfg.SleepUs) * time.Microsecond)
		if err != nil {
			resp.Err = err
		}
		resp.Sum += n
	case kindDescribe:
		count("main.(*Wrapped).Describe")
		resp.Note = s.describer.Describe()
	case kindSlow:
		s.slowPath(time.Duration(s.cfg.SleepUs) * time.Microsecond)
	case kindCgo:
		resp.Sum += cgoAdd(req.ID, 1)
	}
	atomic.AddInt64(&s.handled, 1)
	return resp
}

// Weight is a value-receiver method: the receiver is a struct passed in
// registers (ID, Name.ptr, Name.len, Size, Kind).
//
//go:noinline
func (r Request) Weight() int {
	count("main.Request.Weight")
	return r.ID%7 + len(r.Name)
}

// work returns 1+2+...+n; work(1000, "hello") is (500500, nil). A negative
// n is an error (*errors.errorString).
//
//go:noinline
func work(n int, s string) (int, error) {
	count("main.work")
	if n < 0 {
		return 0, errNegative
	}
	sum := 0
	for i := 1; i <= n; i++ {
		sum += i
	}
	return sum, nil
}

var errNegative = errors.New("negative size")

// slowPath parks the goroutine for d; it may resume on another thread.
//
//go:noinline
func (s *Server) slowPath(d time.Duration) {
	count("main.(*Server).slowPath")
	time.Sleep(d)
}

// tiny is inlined at every call site: the binary has no main.tiny symbol.
func tiny(x int) int { return x + 1 }
