// Command symtruth is the ground truth for gotrace's pclntab symbolizer.
//
// At known call sites (a direct call, a chain of two inlined calls, a
// method, a closure, a generic function, a deep recursion) it records the
// goroutine's stack with runtime.Callers and prints, one JSON object per
// line, the raw program counters and what runtime.CallersFrames makes of
// them: function, file, line, and the pc of each frame. It also prints the
// runtime address of main.anchor so that a reader can tell a PIE's load
// bias. gotrace must find the same frames from the same pcs, reading only
// the binary.
package main

import (
	"encoding/json"
	"os"
	"reflect"
	"runtime"
)

type frame struct {
	Function string  `json:"function"`
	File     string  `json:"file"`
	Line     int     `json:"line"`
	PC       uintptr `json:"pc"`
}

type sample struct {
	Tag    string    `json:"tag"`
	PCs    []uintptr `json:"pcs"`
	Frames []frame   `json:"frames"`
}

var out = json.NewEncoder(os.Stdout)

//go:noinline
func anchor() {}

// record writes the stack of its caller (runtime.Callers and record itself skipped).
//
//go:noinline
func record(tag string) {
	pcs := make([]uintptr, 128)
	pcs = pcs[:runtime.Callers(2, pcs)]
	s := sample{Tag: tag, PCs: pcs}
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		s.Frames = append(s.Frames, frame{f.Function, f.File, f.Line, f.PC})
		if !more {
			break
		}
	}
	out.Encode(s)
}

//go:noinline
func leaf(tag string) {
	record(tag)
}

// inner and middle are small enough to be inlined: leaf's caller frame is
// then inner inlined in middle inlined in outer.
func inner(tag string) {
	leaf(tag)
}

func middle(tag string) {
	inner(tag)
}

//go:noinline
func outer() {
	middle("inlined-chain")
	leaf("direct")
}

type T struct{ n int }

//go:noinline
func (t *T) Method() {
	leaf("method")
}

//go:noinline
func Generic[V any](v V) {
	leaf("generic")
}

//go:noinline
func recurse(n int) {
	if n == 0 {
		leaf("recursion")
		return
	}
	recurse(n - 1)
}

func main() {
	out.Encode(map[string]uintptr{"anchor": reflect.ValueOf(anchor).Pointer()})
	outer()
	(&T{}).Method()
	Generic(1)
	Generic("s")
	func() {
		leaf("closure")
	}()
	recurse(5)
	done := make(chan bool)
	go func() {
		middle("goroutine")
		done <- true
	}()
	<-done
}
