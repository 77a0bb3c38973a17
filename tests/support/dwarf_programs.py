"""Small Go programs built with DWARF for the DWARF, runtime-offset and ABI tests, and their builder.

`build_snippet(name, version, arch)` compiles one of SOURCES with toolchain
`version` for `arch` (cached under /var/cache/gotrace/dwarf-test/, keyed by
source, version and arch) and returns the binary's path; a toolchain not
installed yet is installed with scripts/toolchains.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path


from support import gobuild

TOOLCHAINS = tuple(sorted(gobuild.TOOLCHAINS + gobuild.DWARF_ONLY_TOOLCHAINS,
                         key=lambda v: tuple(int(part) for part in v.split("."))))
ARCHES = ("amd64", "arm64")
DWARF_TEST_DIR = gobuild.CACHE_ROOT / "dwarf-test"

MINIMAL = """\
package main

import "fmt"

func main() { fmt.Println("hello") }
"""

# Functions whose parameters exercise every rule of the register ABI. Each
# body hands all its parameters to keep() so they are live at entry and
# DWARF records where they arrive.
ABI_CASES = """\
package main

import (
	"errors"
	"fmt"
	"unsafe"
)

type Pair struct {
	A int64
	B float64
	C string
}

type Small struct {
	X uint16
	Y uint8
	Z int32
	W int32
}

type WithArr struct {
	A int
	B [2]int
}

type OneF struct{ F [1]float64 }

type Empty struct{}

type Node struct {
	Next *Node
	V    int
}

type T struct{ X, Y int }

var sink []any

//go:noinline
func keep(v ...any) { sink = append(sink[:0], v...) }

//go:noinline
func Args(i int, s string, sl []byte, f float64, p Pair, e error, arr [2]int) (int, string) {
	keep(i, s, sl, f, p, e, arr)
	return i, s
}

//go:noinline
func (t *T) Method(a int8, b uint16, c complex128, m map[string]int, ch chan int, fn func(int) int, x any) (ok bool, err error) {
	keep(t, a, b, c, m, ch, fn, x)
	return a > 0, nil
}

//go:noinline
func (t T) ValueMethod(a [1]int32, z struct{}, u uintptr, c64 complex64, f32 float32) (x [0]int, y [1]string) {
	keep(t, a, z, u, c64, f32)
	return
}

//go:noinline
func ManyInts(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q int, s string) (x, y, z int) {
	keep(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, s)
	return a, b, c
}

//go:noinline
func ManyFloats(f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16 float64, x float32) float64 {
	keep(f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15, f16, x)
	return f0
}

//go:noinline
func Spec(a1 uint8, a2 [2]uintptr, a3 uint8) (r1 struct {
	x uintptr
	y [2]uintptr
}, r2 string) {
	keep(a1, a2, a3)
	return
}

//go:noinline
func Split(a, b, c, d, e, f, g int, s []int, z int) int {
	keep(a, b, c, d, e, f, g, s, z)
	return z
}

//go:noinline
func SplitArm(a, b, c, d, e, f, g, h, i, j, k, l, m, n int, s []int, z int) int {
	keep(a, b, c, d, e, f, g, h, i, j, k, l, m, n, s, z)
	return z
}

//go:noinline
func Structs(s Small, w WithArr, o OneF, e Empty, b bool, n *Node, u unsafe.Pointer) (Small, bool) {
	keep(s, w, o, e, b, n, u)
	return s, b
}

//go:noinline
func Results() (a, b, c, d, e, f, g, h, i, j int, s string, arr [3]byte) {
	return
}

//go:noinline
func ByteArrays(a [3]byte) (r [2]byte) {
	keep(a)
	return
}

//go:noinline
func Ifaces(e error, x interface{}, f fmt.Stringer) (any, error) {
	keep(e, x, f)
	return x, e
}

//go:noinline
func Blank(_ int, b string, _ float64, c int64) (_ int, named string, _ error) {
	keep(b, c)
	return 0, b, nil
}

// Inlined into main and also called through a func value: DWARF has an
// abstract DIE (without the unnamed results) and an out-of-line instance.
func Inlinable(a int, s string) (int, error) { return a + len(s), nil }

var inlinable = Inlinable

//go:noinline
func Gen[V int | float64](a V, b []V) V {
	keep(a, b)
	return a
}

func main() {
	t := &T{1, 2}
	fmt.Println(Args(1, "s", []byte("b"), 2.5, Pair{1, 2, "c"}, errors.New("e"), [2]int{3, 4}))
	fmt.Println(t.Method(1, 2, 3, nil, nil, nil, nil))
	fmt.Println(T{}.ValueMethod([1]int32{1}, struct{}{}, 0, 0, 0))
	fmt.Println(ManyInts(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, "s"))
	fmt.Println(ManyFloats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18))
	fmt.Println(Spec(1, [2]uintptr{2, 3}, 4))
	fmt.Println(Split(1, 2, 3, 4, 5, 6, 7, []int{8}, 9))
	fmt.Println(SplitArm(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, []int{15}, 16))
	fmt.Println(Structs(Small{1, 2, 3, 4}, WithArr{}, OneF{}, Empty{}, true, nil, nil))
	fmt.Println(Results())
	fmt.Println(ByteArrays([3]byte{1, 2, 3}))
	fmt.Println(Ifaces(nil, 1, nil))
	fmt.Println(Blank(1, "b", 2, 3))
	fmt.Println(Gen(1, []int{2}), Gen(1.5, []float64{2}))
	fmt.Println(Inlinable(1, "x"))
	fmt.Println(inlinable(2, "yy"))
}
"""

# Functions of ABI_CASES with the parameters they declare (receiver first).
ABI_CASE_FUNCTIONS = {
    "main.Args": ["i", "s", "sl", "f", "p", "e", "arr"],
    "main.(*T).Method": ["t", "a", "b", "c", "m", "ch", "fn", "x"],
    "main.T.ValueMethod": ["t", "a", "z", "u", "c64", "f32"],
    "main.ManyInts": list("abcdefghijklmnopq") + ["s"],
    "main.ManyFloats": [f"f{i}" for i in range(17)] + ["x"],
    "main.Spec": ["a1", "a2", "a3"],
    "main.Split": list("abcdefg") + ["s", "z"],
    "main.SplitArm": list("abcdefghijklmn") + ["s", "z"],
    "main.Structs": ["s", "w", "o", "e", "b", "n", "u"],
    "main.Results": [],
    "main.ByteArrays": ["a"],
    "main.Ifaces": ["e", "x", "f"],
    "main.Blank": ["~p0", "b", "~p2", "c"],
    "main.Inlinable": ["a", "s"],
}

SOURCES = {"minimal": MINIMAL, "abicases": ABI_CASES}


def go_command(version: str) -> Path:
    """The `go` of that toolchain, installed with scripts/toolchains when missing (never a skip: a fresh
    machine must run these tests too)."""
    return gobuild.go_binary(version)


def build_snippet(name: str, version: str, arch: str = "amd64", ldflags: str = "") -> Path:
    """Build SOURCES[name] with Go `version` for `arch` (cached) and return the binary's path."""
    go = go_command(version)
    source = SOURCES[name]
    key = hashlib.sha256(f"{source}\0{version}\0{arch}\0{ldflags}".encode()).hexdigest()[:16]
    workdir = DWARF_TEST_DIR / f"{name}-go{version}-{arch}-{key}"
    binary = workdir / name
    if binary.is_file():
        return binary
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        (workdir / "main.go").write_text(source)
        (workdir / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.19\n")
        tmp = workdir / f".{name}.tmp.{os.getpid()}"
        cmd = [str(go), "build", "-buildvcs=false", "-o", str(tmp)]
        if ldflags:
            cmd.append(f"-ldflags={ldflags}")
        proc = subprocess.run(cmd + ["."], cwd=workdir, env=gobuild.go_env(version, arch),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=gobuild.BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"go build of {name} with Go {version} ({arch}) failed:\n{proc.stdout}")
        os.replace(tmp, binary)
    return binary


def version_tuple(version: str) -> tuple[int, int, int]:
    parts = [int(p) for p in version.split(".")] + [0, 0]
    return parts[0], parts[1], parts[2]
