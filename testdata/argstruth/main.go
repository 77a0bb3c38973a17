// Command argstruth calls functions taking and returning every kind of value
// gotrace args decodes, and logs what each call really received and returned
// (its ground truth) as one JSON line per call to the -truth file.
//
// Each value is logged as {"t": kind, "v": value}: kinds int, uint, bool,
// string, bytes (base64, with cap), slice (len, cap, elems), ptr (hex
// address), struct (fields), array (elems), error and iface (concrete type
// from %T, message or value), floatreg (a float passed in a vector register:
// gotrace must call it unavailable) and float (a float in memory: exact).
//
// -bench SECONDS instead calls main.fnBench in a loop from -g goroutines
// (paced to -rate calls per second in all when given) and prints the number
// of calls made.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
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

var truth *json.Encoder

func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	fields := strings.Fields(string(buf))
	n, _ := strconv.ParseInt(fields[1], 10, 64)
	return n
}

func record(fn string, args, results []interface{}) {
	// args/results: name, value, name, value, ...
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
	truth.Encode(V{"func": fn, "goid": goid(), "pid": os.Getpid(), "args": toMap(args), "results": toMap(results)})
}

func tInt(x int64) V   { return V{"t": "int", "v": x} }
func tUint(x uint64) V { return V{"t": "uint", "v": x} }
func tBool(b bool) V   { return V{"t": "bool", "v": b} }
func tStr(s string) V  { return V{"t": "string", "v": s} }
func tBytes(b []byte) V {
	if b == nil {
		return V{"t": "bytes", "v": nil}
	}
	return V{"t": "bytes", "v": b, "len": len(b), "cap": cap(b)}
}
func tPtr(p uintptr) V {
	if p == 0 {
		return V{"t": "ptr", "v": nil}
	}
	return V{"t": "ptr", "v": fmt.Sprintf("%#x", p)}
}
func tSlice(isNil bool, n, c int, elems []interface{}, esize int) V {
	if isNil {
		return V{"t": "slice", "v": nil}
	}
	return V{"t": "slice", "v": elems, "len": n, "cap": c, "esize": esize}
}
func tFloatReg() V       { return V{"t": "floatreg"} }
func tFloat(f float64) V { return V{"t": "float", "v": f} }
func tErr(err error) V {
	if err == nil {
		return V{"t": "error", "v": nil}
	}
	out := V{"type": fmt.Sprintf("%T", err), "msg": err.Error()}
	if rv := reflect.ValueOf(err); rv.Kind() == reflect.Ptr {
		out["ptr"] = fmt.Sprintf("%#x", rv.Pointer())
	}
	return V{"t": "error", "v": out}
}
func tIface(x interface{}) V {
	if x == nil {
		return V{"t": "iface", "v": nil}
	}
	out := V{"type": fmt.Sprintf("%T", x)}
	switch y := x.(type) {
	case int:
		out["value"] = tInt(int64(y))
	case string:
		out["value"] = tStr(y)
	case bool:
		out["value"] = tBool(y)
	case float64:
		out["value"] = tFloat(y)
	case *Pair:
		out["value"] = tPtr(uintptr(unsafe.Pointer(y)))
	}
	return V{"t": "iface", "v": out}
}
func tPair(p Pair) V {
	return V{"t": "struct", "v": V{"A": tInt(int64(p.A)), "B": tStr(p.B), "C": tBool(p.C)}}
}
func word(p unsafe.Pointer) uintptr { return *(*uintptr)(p) }

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
	default:
		return 4, fmt.Errorf("plain %d", kind)
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

//go:noinline
func fnBench(n int, s string) int { return n + len(s) }

var longString = strings.Repeat("0123456789", 30)
var escapes = "\x1b[31mred\x1b[0m\n\t\"q\" \\ \x00 \u200b end"
var unicodeStr = "héllo wörld 日本語 😀"

func ptrOf(p interface{}) uintptr {
	switch q := p.(type) {
	case *int:
		return uintptr(unsafe.Pointer(q))
	case *Pair:
		return uintptr(unsafe.Pointer(q))
	}
	return 0
}

func roundOnce() {
	ints := [][9]int64{{1, -2, 300, -70000, 1 << 40, 12345678901, 255, 65535, 4294967295}, {-1, 127, -32768, 2147483647, -9223372036854775808, 0, 0, 0, 0}}
	for _, v := range ints {
		r0, r1 := fnInts(int(v[0]), int8(v[1]), int16(v[2]), int32(v[3]), v[4], uint(v[5]), uint8(v[6]), uint16(v[7]), uint32(v[8]))
		record("main.fnInts", []interface{}{"a", tInt(v[0]), "b", tInt(v[1]), "c", tInt(v[2]), "d", tInt(v[3]), "e", tInt(v[4]),
			"f", tUint(uint64(v[5])), "g", tUint(uint64(uint8(v[6]))), "h", tUint(uint64(uint16(v[7]))), "i", tUint(uint64(uint32(v[8])))},
			[]interface{}{"~r0", tUint(r0), "~r1", tUint(uint64(r1))})
	}
	for _, s := range []string{"", "spilled", unicodeStr} {
		r0, r1 := fnSpill(1, 2, 3, 4, 5, 6, 7, 8, 9, -10, s)
		record("main.fnSpill", []interface{}{"a", tInt(1), "b", tInt(2), "c", tInt(3), "d", tInt(4), "e", tInt(5), "f", tInt(6),
			"g", tInt(7), "h", tInt(8), "i", tInt(9), "j", tInt(-10), "s", tStr(s)}, []interface{}{"~r0", tInt(int64(r0)), "~r1", tStr(r1)})
	}
	for _, ab := range [][2]bool{{true, false}, {false, false}, {true, true}} {
		r := fnBool(ab[0], ab[1])
		record("main.fnBool", []interface{}{"a", tBool(ab[0]), "b", tBool(ab[1])}, []interface{}{"~r0", tBool(r)})
	}
	strs := []string{"", "hello", unicodeStr, escapes, longString}
	for i, s := range strs {
		t := strs[(i+1)%len(strs)]
		r0, r1 := fnStr(s, t)
		record("main.fnStr", []interface{}{"s", tStr(s), "t", tStr(t)}, []interface{}{"~r0", tStr(r0), "~r1", tInt(int64(r1))})
	}
	withCap := make([]byte, 3, 10)
	copy(withCap, "abc")
	for _, b := range [][]byte{nil, {}, []byte("bytes\x00\x01\xff"), withCap, bytes.Repeat([]byte{'z'}, 200)} {
		r := fnBytes(b)
		record("main.fnBytes", []interface{}{"b", tBytes(b)}, []interface{}{"~r0", tBytes(r)})
	}
	type sl struct {
		xs []int
		ys []int32
		zs []uint16
		bs []bool
	}
	many := make([]int, 20)
	for i := range many {
		many[i] = i * i
	}
	for _, c := range []sl{{nil, nil, nil, nil}, {[]int{}, []int32{-1, 2}, []uint16{65535}, []bool{true, false}}, {many, make([]int32, 0, 5), nil, nil}} {
		r := fnSlices(c.xs, c.ys, c.zs, c.bs)
		ints := func(n int, at func(int) int64) []interface{} {
			out := []interface{}{}
			for i := 0; i < n; i++ {
				out = append(out, at(i))
			}
			return out
		}
		xs := tSlice(c.xs == nil, len(c.xs), cap(c.xs), ints(len(c.xs), func(i int) int64 { return int64(c.xs[i]) }), 8)
		ys := tSlice(c.ys == nil, len(c.ys), cap(c.ys), ints(len(c.ys), func(i int) int64 { return int64(c.ys[i]) }), 4)
		zs := tSlice(c.zs == nil, len(c.zs), cap(c.zs), ints(len(c.zs), func(i int) int64 { return int64(c.zs[i]) }), 2)
		bl := []interface{}{}
		for _, b := range c.bs {
			bl = append(bl, b)
		}
		bs := tSlice(c.bs == nil, len(c.bs), cap(c.bs), bl, 1)
		record("main.fnSlices", []interface{}{"xs", xs, "ys", ys, "zs", zs, "bs", bs}, []interface{}{"~r0", tInt(int64(r))})
	}
	x := 42
	pair := &Pair{1, "p", true}
	for _, c := range []struct {
		p *int
		q *Pair
		u unsafe.Pointer
	}{{nil, nil, nil}, {&x, pair, unsafe.Pointer(pair)}} {
		r := fnPtrs(c.p, c.q, c.u)
		record("main.fnPtrs", []interface{}{"p", tPtr(ptrOf(c.p)), "q", tPtr(ptrOf(c.q)), "u", tPtr(uintptr(c.u))},
			[]interface{}{"~r0", tPtr(ptrOf(r))})
	}
	for _, p := range []Pair{{}, {-5, escapes, true}, {1 << 50, "", false}} {
		r := fnStruct(p)
		record("main.fnStruct", []interface{}{"p", tPair(p)}, []interface{}{"~r0", tPair(r)})
	}
	for _, m := range []Mixed{{3, 1.5, "m"}} {
		_, r1 := fnMixed(m)
		record("main.fnMixed", []interface{}{"m", V{"t": "struct", "v": V{"N": tInt(int64(m.N)), "F": tFloatReg(), "S": tStr(m.S)}}},
			[]interface{}{"~r0", tFloatReg(), "~r1", tInt(int64(r1))})
	}
	for _, b := range []Big{{[3]int{1, 2, 3}, "big", [2]float64{0.25, -1e300}}, {}} {
		r := fnBig(b)
		record("main.fnBig", []interface{}{"b", V{"t": "struct", "v": V{
			"Arr": V{"t": "array", "v": []interface{}{tInt(int64(b.Arr[0])), tInt(int64(b.Arr[1])), tInt(int64(b.Arr[2]))}},
			"S":   tStr(b.S),
			"Fs":  V{"t": "array", "v": []interface{}{tFloat(b.Fs[0]), tFloat(b.Fs[1])}}}}},
			[]interface{}{"n", tInt(int64(r))})
	}
	for kind := 0; kind < 5; kind++ {
		n, err := fnErr(kind)
		record("main.fnErr", []interface{}{"kind", tInt(int64(kind))}, []interface{}{"n", tInt(int64(n)), "err", tErr(err)})
		ok := fnErrArg(err, "label")
		record("main.fnErrArg", []interface{}{"err", tErr(err), "label", tStr("label")}, []interface{}{"~r0", tBool(ok)})
	}
	for _, v := range []interface{}{nil, 42, "in an interface", true, pair, 2.5} {
		r := fnIface(v)
		record("main.fnIface", []interface{}{"v", tIface(v)}, []interface{}{"~r0", tIface(r)})
	}
	m := map[string]int{"a": 1}
	ch := make(chan int, 4)
	f := func() int { return x }
	for _, c := range []struct {
		m map[string]int
		c chan int
		f func() int
	}{{nil, nil, nil}, {m, ch, f}} {
		r := fnRefs(c.m, c.c, c.f)
		record("main.fnRefs", []interface{}{"m", tPtr(word(unsafe.Pointer(&c.m))), "c", tPtr(word(unsafe.Pointer(&c.c))),
			"f", tPtr(word(unsafe.Pointer(&c.f)))}, []interface{}{"~r0", tInt(int64(r))})
	}
	r := fnFloats(1.25, 2.5)
	_ = r
	record("main.fnFloats", []interface{}{"f", tFloatReg(), "g", tFloatReg()}, []interface{}{"~r0", tFloatReg()})
	c := &Counter{name: "ctr"}
	for _, n := range []int{5, -2} {
		got := c.Add(n)
		record("main.(*Counter).Add", []interface{}{"c", tPtr(uintptr(unsafe.Pointer(c))), "n", tInt(int64(n))},
			[]interface{}{"~r0", tInt(int64(got))})
	}
	name, n := c.Get()
	record("main.Counter.Get", []interface{}{"c", V{"t": "struct", "v": V{"n": tInt(int64(c.n)), "name": tStr(c.name)}}},
		[]interface{}{"~r0", tStr(name), "~r1", tInt(int64(n))})
	fnEmpty()
	record("main.fnEmpty", nil, nil)
}

func main() {
	truthPath := flag.String("truth", "", "write the ground truth JSON lines to this file")
	rounds := flag.Int("n", 1, "rounds of calls")
	bench := flag.Float64("bench", 0, "call main.fnBench for this many seconds instead")
	rate := flag.Float64("rate", 0, "with -bench: calls per second (0: as fast as possible)")
	workers := flag.Int("g", 1, "with -bench: goroutines calling (each at -rate/g)")
	flag.Parse()
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
	truth = json.NewEncoder(out)
	truth.SetEscapeHTML(false)
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
