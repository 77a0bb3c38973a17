// Command argstruth calls functions taking and returning every kind of value
// gotrace args decodes, and logs what each call really received and returned
// (its ground truth) as one JSON line per call to the -truth file.
//
// Arguments are logged just before the call (as the entry probe sees them,
// pointees included) and results just after it returns. Each value is logged
// by truth() from its own memory, through reflect, as {"t": kind, ...}:
//
//	int, uint, bool, float      {"v": number}
//	string, bytes               {"b64": base64 of every byte, "len", "cap" (bytes)}
//	slice, array                {"v": [elements], "len", "cap"}; slice "v" null when nil
//	struct                      {"v": {field: value}}
//	ptr                         {"v": "0x..." or null, "to": pointee, "cycle": true when the
//	                             pointee is already on the path from the argument}
//	map                         {"v": [{"k", "v"}] or null, "len"}
//	chan                        {"v": "0x..." or null, "len", "cap"}
//	func                        {"v": "0x..." (the func value) or null, "name": the function}
//	iface, error                {"v": null or {"type": %T, "value": the concrete value, "msg": Error()}}
//	context                     {"v": null or {"type": %T}}
//	duration                    {"v": nanoseconds, "s": String()}
//	time                        {"s": String()}
//	floatreg                    a float passed in a vector register: gotrace must call it unavailable
//
// -bench SECONDS instead calls main.fnBench in a loop from -g goroutines
// (paced to -rate calls per second in all when given) and prints the number
// of calls made. -stream N calls main.fnStream N times, paced to -rate calls
// per second, and writes each call's return time (CLOCK_REALTIME, ns) as a
// JSON list to the -times file. -sleep LIST calls main.fnSleep once per
// duration of the comma-separated LIST.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

type V = map[string]interface{}

type Pair struct {
	A int
	B string
	C bool
}

type Mixed struct {
	N int32
	F float64
	S string
}

type Big struct {
	Arr [3]int
	S   string
	Fs  [2]float64
}

type Counter struct {
	n    int
	name string
}

type MyErr struct{ Code int }

func (e *MyErr) Error() string { return "code " + strconv.Itoa(e.Code) }

// codeError is an error type of the program: gotrace shows its fields.
type codeError struct {
	code int
	msg  string
}

func (e *codeError) Error() string { return fmt.Sprintf("%d %s", e.code, e.msg) }

// valErr is an error stored in an interface by value (not a pointer).
type valErr struct {
	op   string
	code int32
}

func (e valErr) Error() string { return e.op + " failed" }

type Point struct {
	X, Y  int
	Label string
}

type Node struct {
	Name string
	Next *Node
}

// adder makes Counter's methods callable through an interface, so their
// method types stay in the binary's type data (the linker drops the types
// of methods no interface can call).
type adder interface {
	Add(n int) int
	Get() (string, int)
}

var truthOut *json.Encoder

// Types gotrace must find in a stripped binary's runtime type data, by name
// (--sig 'func(p main.Point)'), and method tables of main.Counter.
var keepTypes = []interface{}{Point{}, &Node{}, Pair{}, &Counter{}, codeError{}, []Point{}, map[int]Point{}}

func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	fields := strings.Fields(string(buf))
	n, _ := strconv.ParseInt(fields[1], 10, 64)
	return n
}

// record logs one call: args and results are name, value, name, value, ...
// (values from T() or the explicit helpers below).
func record(fn string, args, results []interface{}) {
	toMap := func(kv []interface{}) V {
		m := V{}
		order := []string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
			order = append(order, kv[i].(string))
		}
		m["__order"] = order
		return m
	}
	truthOut.Encode(V{"func": fn, "goid": goid(), "pid": os.Getpid(), "args": toMap(args), "results": toMap(results)})
}

func tFloatReg() V { return V{"t": "floatreg"} }

//go:noinline
func fnInts(a int, b int8, c int16, d int32, e int64, f uint, g uint8, h uint16, i uint32) (uint64, uintptr) {
	s := uint64(a) + uint64(b) + uint64(c) + uint64(d) + uint64(e) + uint64(f) + uint64(g) + uint64(h) + uint64(i)
	return s, uintptr(s) ^ 0xff
}

//go:noinline
func fnSpill(a, b, c, d, e, f, g, h, i int, j int64, s string) (int, string) {
	return a + b + c + d + e + f + g + h + i + int(j), s + "!"
}

//go:noinline
func fnBool(a, b bool) bool { return a != b }

//go:noinline
func fnStr(s string, t string) (string, int) { return t, len(s) + len(t) }

//go:noinline
func fnBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return b[:len(b)/2]
}

//go:noinline
func fnSlices(xs []int, ys []int32, zs []uint16, bs []bool) int {
	return len(xs) + len(ys) + len(zs) + len(bs)
}

//go:noinline
func fnPtrs(p *int, q *Pair, u unsafe.Pointer) *int {
	if p == nil {
		return nil
	}
	return p
}

//go:noinline
func fnStruct(p Pair) Pair { return Pair{p.A * 2, p.B + p.B, !p.C} }

//go:noinline
func fnMixed(m Mixed) (float64, int32) { return m.F * 2, m.N }

//go:noinline
func fnBig(b Big) (n int) { return b.Arr[0] + b.Arr[1] + b.Arr[2] + len(b.S) }

//go:noinline
func fnErr(kind int) (n int, err error) {
	base := errors.New("disk on fire")
	switch kind {
	case 0:
		return 0, nil
	case 1:
		return 1, base
	case 2:
		return 2, fmt.Errorf("reading \"cfg\": %w", base)
	case 3:
		return 3, &MyErr{Code: 7}
	case 4:
		return 4, fmt.Errorf("plain %d", kind)
	case 5:
		return 5, fmt.Errorf("two causes: %w; %w", base, &codeError{503, "unavailable"})
	case 6:
		return 6, &codeError{404, "not found: /a/b"}
	default:
		return 7, valErr{"write", 28}
	}
}

//go:noinline
func fnErrArg(err error, label string) bool { return err != nil && label != "" }

//go:noinline
func fnIface(v interface{}) interface{} { return v }

//go:noinline
func fnRefs(m map[string]int, c chan int, f func() int) int { return len(m) + cap(c) }

//go:noinline
func fnFloats(f float64, g float32) float64 { return f + float64(g) }

//go:noinline
func (c *Counter) Add(n int) int {
	c.n += n
	return c.n
}

//go:noinline
func (c Counter) Get() (string, int) { return c.name, c.n }

//go:noinline
func fnEmpty() {}

// fnSame's whole body is a `ret`: one probe sees the arguments and the results.
//
//go:noinline
func fnSame(n int) int { return n }

//go:noinline
func fnBench(n int, s string) int { return n + len(s) }

//go:noinline
func fnStream(n int) int { return n * 2 }

//go:noinline
func fnSleep(d time.Duration) time.Duration {
	time.Sleep(d)
	return d
}

//go:noinline
func fnSliceKinds(ss []string, ps []Point, pp []*Point) (int, []string) {
	return len(ss) + len(ps) + len(pp), ss[:len(ss)/2]
}

//go:noinline
func fnMaps(m map[string]int, mp map[int]Point) (map[string]int, int) { return m, len(mp) }

//go:noinline
func fnChain(n *Node) *Node {
	if n == nil {
		return nil
	}
	return n.Next
}

//go:noinline
func fnAnyStruct(v interface{}, p Point) (interface{}, *Point) { return p, &p }

//go:noinline
func fnTime(t time.Time, d time.Duration) (time.Time, time.Duration) { return t.Add(d), d * 2 }

//go:noinline
func fnRaw(b []byte, s string) (string, []byte) { return s + "\xfe", append(b, 0x80) }

type ctxKey struct{}

// callCtx calls fnCtx, or fnCtxNil for a nil context (fnCtx would call a method on it).
func callCtx(ctx context.Context, n int) (context.Context, error) {
	if ctx == nil {
		return fnCtxNil(ctx, n)
	}
	return fnCtx(ctx, n)
}

//go:noinline
func fnCtxNil(ctx context.Context, n int) (context.Context, error) { return ctx, nil }

//go:noinline
func fnCtx(ctx context.Context, n int) (context.Context, error) {
	return context.WithValue(ctx, ctxKey{}, n), ctx.Err()
}

var longString = strings.Repeat("0123456789", 30)
var escapes = "\x1b[31mred\x1b[0m\n\t\"q\" \\ \x00 \u200b end"
var unicodeStr = "héllo wörld 日本語 😀"

func roundOnce() {
	ints := [][9]int64{{1, -2, 300, -70000, 1 << 40, 12345678901, 255, 65535, 4294967295}, {-1, 127, -32768, 2147483647, -9223372036854775808, 0, 0, 0, 0}}
	for _, v := range ints {
		a, b, c, d, e := int(v[0]), int8(v[1]), int16(v[2]), int32(v[3]), v[4]
		f, g, h, i := uint(v[5]), uint8(v[6]), uint16(v[7]), uint32(v[8])
		args := []interface{}{"a", T(&a), "b", T(&b), "c", T(&c), "d", T(&d), "e", T(&e), "f", T(&f), "g", T(&g), "h", T(&h), "i", T(&i)}
		r0, r1 := fnInts(a, b, c, d, e, f, g, h, i)
		record("main.fnInts", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	for _, s := range []string{"", "spilled", unicodeStr} {
		s := s
		one, ten := 1, int64(-10)
		args := []interface{}{"a", T(&one)}
		for k, name := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
			n := k + 2
			args = append(args, name, T(&n))
		}
		args = append(args, "j", T(&ten), "s", T(&s))
		r0, r1 := fnSpill(1, 2, 3, 4, 5, 6, 7, 8, 9, -10, s)
		record("main.fnSpill", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	for _, ab := range [][2]bool{{true, false}, {false, false}, {true, true}} {
		a, b := ab[0], ab[1]
		args := []interface{}{"a", T(&a), "b", T(&b)}
		r := fnBool(a, b)
		record("main.fnBool", args, []interface{}{"~r0", T(&r)})
	}
	strs := []string{"", "hello", unicodeStr, escapes, longString}
	for i, s := range strs {
		s, t := s, strs[(i+1)%len(strs)]
		args := []interface{}{"s", T(&s), "t", T(&t)}
		r0, r1 := fnStr(s, t)
		record("main.fnStr", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	withCap := make([]byte, 3, 10)
	copy(withCap, "abc")
	for _, b := range [][]byte{nil, {}, []byte("bytes\x00\x01\xff"), withCap, bytes.Repeat([]byte{'z'}, 200)} {
		b := b
		args := []interface{}{"b", T(&b)}
		r := fnBytes(b)
		record("main.fnBytes", args, []interface{}{"~r0", T(&r)})
	}
	many := make([]int, 20)
	for i := range many {
		many[i] = i * i
	}
	type sl struct {
		xs []int
		ys []int32
		zs []uint16
		bs []bool
	}
	for _, c := range []sl{{nil, nil, nil, nil}, {[]int{}, []int32{-1, 2}, []uint16{65535}, []bool{true, false}}, {many, make([]int32, 0, 5), nil, nil}} {
		c := c
		args := []interface{}{"xs", T(&c.xs), "ys", T(&c.ys), "zs", T(&c.zs), "bs", T(&c.bs)}
		r := fnSlices(c.xs, c.ys, c.zs, c.bs)
		record("main.fnSlices", args, []interface{}{"~r0", T(&r)})
	}
	x := 42
	pair := &Pair{1, "p", true}
	for _, c := range []struct {
		p *int
		q *Pair
		u unsafe.Pointer
	}{{nil, nil, nil}, {&x, pair, unsafe.Pointer(pair)}} {
		c := c
		args := []interface{}{"p", T(&c.p), "q", T(&c.q), "u", T(&c.u)}
		r := fnPtrs(c.p, c.q, c.u)
		record("main.fnPtrs", args, []interface{}{"~r0", T(&r)})
	}
	for _, p := range []Pair{{}, {-5, escapes, true}, {1 << 50, "", false}} {
		p := p
		args := []interface{}{"p", T(&p)}
		r := fnStruct(p)
		record("main.fnStruct", args, []interface{}{"~r0", T(&r)})
	}
	for _, m := range []Mixed{{3, 1.5, "m"}} {
		n, s := m.N, m.S
		_, r1 := fnMixed(m)
		record("main.fnMixed", []interface{}{"m", V{"t": "struct", "v": V{"N": T(&n), "F": tFloatReg(), "S": T(&s)}}},
			[]interface{}{"~r0", tFloatReg(), "~r1", T(&r1)})
	}
	for _, b := range []Big{{[3]int{1, 2, 3}, "big", [2]float64{0.25, -1e300}}, {}} {
		b := b
		args := []interface{}{"b", T(&b)}
		r := fnBig(b)
		record("main.fnBig", args, []interface{}{"n", T(&r)})
	}
	for kind := 0; kind < 8; kind++ {
		kind := kind
		n, err := fnErr(kind)
		record("main.fnErr", []interface{}{"kind", T(&kind)}, []interface{}{"n", T(&n), "err", T(&err)})
		label := "label"
		args := []interface{}{"err", T(&err), "label", T(&label)}
		ok := fnErrArg(err, label)
		record("main.fnErrArg", args, []interface{}{"~r0", T(&ok)})
	}
	for _, v := range []interface{}{nil, 42, "in an interface", true, pair, 2.5} {
		v := v
		args := []interface{}{"v", T(&v)}
		r := fnIface(v)
		record("main.fnIface", args, []interface{}{"~r0", T(&r)})
	}
	m := map[string]int{"a": 1}
	ch := make(chan int, 4)
	ch <- 1
	f := func() int { return x }
	for _, c := range []struct {
		m map[string]int
		c chan int
		f func() int
	}{{nil, nil, nil}, {m, ch, f}} {
		c := c
		args := []interface{}{"m", T(&c.m), "c", T(&c.c), "f", T(&c.f)}
		r := fnRefs(c.m, c.c, c.f)
		record("main.fnRefs", args, []interface{}{"~r0", T(&r)})
	}
	r := fnFloats(1.25, 2.5)
	_ = r
	record("main.fnFloats", []interface{}{"f", tFloatReg(), "g", tFloatReg()}, []interface{}{"~r0", tFloatReg()})
	c := &Counter{name: "ctr"}
	for _, n := range []int{5, -2} {
		n := n
		args := []interface{}{"c", T(&c), "n", T(&n)}
		got := c.Add(n)
		record("main.(*Counter).Add", args, []interface{}{"~r0", T(&got)})
	}
	cv := *c
	args := []interface{}{"c", T(&cv)}
	name, n := c.Get()
	record("main.Counter.Get", args, []interface{}{"~r0", T(&name), "~r1", T(&n)})
	fnEmpty()
	record("main.fnEmpty", nil, nil)
	sn := 9
	args = []interface{}{"n", T(&sn)}
	rs := fnSame(sn)
	record("main.fnSame", args, []interface{}{"~r0", T(&rs)})
	roundDeep()
}

// roundDeep: slices of strings, structs and pointers; maps; pointer chains
// with a cycle; any holding a struct; Duration and Time; bytes that are not
// UTF-8.
func roundDeep() {
	p1, p2 := &Point{1, 2, "one"}, &Point{-3, 4, "two"}
	tenStrings := make([]string, 10)
	for i := range tenStrings {
		tenStrings[i] = "s" + strconv.Itoa(i)
	}
	for _, c := range []struct {
		ss []string
		ps []Point
		pp []*Point
	}{
		{[]string{"a", "bb", "ccc"}, []Point{{1, 2, "p"}, {3, 4, "q"}}, []*Point{p1, nil, p2}},
		{tenStrings, nil, []*Point{}},
	} {
		c := c
		args := []interface{}{"ss", T(&c.ss), "ps", T(&c.ps), "pp", T(&c.pp)}
		r0, r1 := fnSliceKinds(c.ss, c.ps, c.pp)
		record("main.fnSliceKinds", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	big := map[string]int{}
	for i := 0; i < 20; i++ {
		big["key"+strconv.Itoa(i)] = i * 10
	}
	for _, c := range []struct {
		m  map[string]int
		mp map[int]Point
	}{
		{map[string]int{"one": 1, "two": 2, "three": 3}, map[int]Point{7: {7, 70, "seven"}, -1: {0, 0, ""}}},
		{map[string]int{}, nil},
		{big, map[int]Point{1: {1, 1, "a"}}},
	} {
		c := c
		args := []interface{}{"m", T(&c.m), "mp", T(&c.mp)}
		r0, r1 := fnMaps(c.m, c.mp)
		record("main.fnMaps", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	a := &Node{Name: "a"}
	b := &Node{Name: "b", Next: a}
	a.Next = b // a -> b -> a
	long := &Node{"n1", &Node{"n2", &Node{"n3", &Node{"n4", nil}}}}
	for _, n := range []*Node{nil, a, long} {
		n := n
		args := []interface{}{"n", T(&n)}
		r := fnChain(n)
		record("main.fnChain", args, []interface{}{"~r0", T(&r)})
	}
	for _, c := range []struct {
		v interface{}
		p Point
	}{{Point{1, 2, "any"}, Point{5, 6, "p"}}, {&Point{9, 8, "ptr"}, Point{}}, {[]int{1, 2}, Point{0, -1, "neg"}}} {
		c := c
		args := []interface{}{"v", T(&c.v), "p", T(&c.p)}
		r0, r1 := fnAnyStruct(c.v, c.p)
		record("main.fnAnyStruct", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	zone := time.FixedZone("XST", 5*3600+1800)
	for _, c := range []struct {
		t time.Time
		d time.Duration
	}{
		{time.Date(2024, 2, 29, 13, 14, 15, 123456789, time.UTC), 1500 * time.Microsecond},
		{time.Date(1999, 12, 31, 23, 59, 59, 0, zone), 90*time.Minute + 5*time.Second},
		{time.Now(), -250 * time.Nanosecond},
		{time.Unix(0, 0).UTC(), 0},
	} {
		c := c
		args := []interface{}{"t", T(&c.t), "d", T(&c.d)}
		r0, r1 := fnTime(c.t, c.d)
		record("main.fnTime", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i, ctx := range []context.Context{context.Background(), cancelled, nil} {
		ctx, i := ctx, i
		args := []interface{}{"ctx", T(&ctx), "n", T(&i)}
		r0, r1 := callCtx(ctx, i)
		name := "main.fnCtx"
		if ctx == nil {
			name = "main.fnCtxNil"
		}
		record(name, args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
	for _, c := range []struct {
		b []byte
		s string
	}{{[]byte{0xff, 'a', 0xc3}, "ok\xffok"}, {[]byte("plain"), "\xe6\x97\xa5\xe6"}} {
		c := c
		args := []interface{}{"b", T(&c.b), "s", T(&c.s)}
		r0, r1 := fnRaw(c.b, c.s)
		record("main.fnRaw", args, []interface{}{"~r0", T(&r0), "~r1", T(&r1)})
	}
}

func main() {
	truthPath := flag.String("truth", "", "write the ground truth JSON lines to this file")
	rounds := flag.Int("n", 1, "rounds of calls")
	bench := flag.Float64("bench", 0, "call main.fnBench for this many seconds instead")
	rate := flag.Float64("rate", 0, "with -bench or -stream: calls per second (0: as fast as possible)")
	workers := flag.Int("g", 1, "with -bench: goroutines calling (each at -rate/g)")
	stream := flag.Int("stream", 0, "call main.fnStream this many times instead, logging return times to -times")
	timesPath := flag.String("times", "", "with -stream: where to write the return times")
	delay := flag.Float64("delay", 0, "seconds to wait before the first call")
	sleeps := flag.String("sleep", "", "call main.fnSleep once per duration in this comma-separated list instead")
	flag.Parse()
	_ = time.Now().String() // the local time zone is loaded, as in any program that prints a time
	if len(os.Args) > 1000 { // never: keeps keepTypes' descriptors, and Counter's methods callable through an interface
		var a adder = &Counter{}
		fmt.Println(append(keepTypes, a.Add(1)), a.Get)
	}
	time.Sleep(time.Duration(*delay * float64(time.Second)))
	if *stream > 0 {
		runStream(*stream, *rate, *timesPath)
		return
	}
	if *sleeps != "" {
		for _, text := range strings.Split(*sleeps, ",") {
			d, err := time.ParseDuration(text)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			fnSleep(d)
		}
		return
	}
	if *bench > 0 {
		results := make(chan [2]int, *workers)
		start := time.Now()
		for w := 0; w < *workers; w++ {
			go func() {
				calls, sum := runBench(*bench, *rate/float64(*workers))
				results <- [2]int{calls, sum}
			}()
		}
		calls, sum := 0, 0
		for w := 0; w < *workers; w++ {
			r := <-results
			calls += r[0]
			sum += r[1]
		}
		fmt.Printf("{\"calls\": %d, \"seconds\": %.3f, \"sum\": %d}\n", calls, time.Since(start).Seconds(), sum)
		return
	}
	out := os.Stdout
	if *truthPath != "" {
		f, err := os.Create(*truthPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		out = f
	}
	truthOut = json.NewEncoder(out)
	truthOut.SetEscapeHTML(false)
	for i := 0; i < *rounds; i++ {
		roundOnce()
	}
}

func runBench(seconds, rate float64) (int, int) {
	calls := 0
	sum := 0
	start := time.Now()
	deadline := start.Add(time.Duration(seconds * float64(time.Second)))
	for {
		now := time.Now()
		if !now.Before(deadline) {
			break
		}
		if rate > 0 {
			due := int(now.Sub(start).Seconds() * rate)
			if calls >= due {
				time.Sleep(200 * time.Microsecond)
				continue
			}
		}
		sum += fnBench(calls, "bench")
		calls++
	}
	return calls, sum
}

// runStream calls fnStream(0..n-1) at rate calls per second and writes the
// wall-clock time (ns since the epoch) right after each call returned.
func runStream(n int, rate float64, path string) {
	returned := make([]int64, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			for time.Now().Before(due) {
				if wait := time.Until(due); wait > 2*time.Millisecond {
					time.Sleep(wait - time.Millisecond)
				}
			}
		}
		fnStream(i)
		returned[i] = time.Now().UnixNano()
	}
	data, _ := json.Marshal(returned)
	if path == "" {
		os.Stdout.Write(append(data, '\n'))
		return
	}
	os.WriteFile(path, data, 0o644)
}
