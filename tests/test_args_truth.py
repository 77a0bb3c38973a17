"""`gotrace args` against real uprobes: every value it reports equals what the traced program logged it passed.

testdata/argstruth calls functions taking and returning every kind of value
gotrace decodes and logs, from each value's own memory, what the call really
received (just before it) and returned (just after): integers of all sizes,
bools, strings (unicode, terminal escapes, bytes that are not UTF-8), []byte,
slices of numbers, strings, structs and pointers, pointers followed (a chain
longer than --depth, a two-node cycle), structs in registers and on the
stack, maps (small, empty, nil, larger than --max-elems), errors as
arguments and results (errors.New, fmt.Errorf with one and two %w, custom
error types by pointer and by value), interfaces holding numbers, strings,
structs, pointers and slices, chans, funcs, floats in registers and in
memory, time.Duration and time.Time, methods.

The test computes what gotrace must print from the program's own record and
the documented limits (--depth, --max-elems, --str-len; JSON as README
describes it) and compares value by value, per toolchain and build mode.
Stripped builds are traced with --sig for functions (named types resolved
through the binary's runtime type data) and with no --sig at all for
methods, whose signatures the type data's method tables give.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from support import gobuild
from support.cli import run_gotrace_process

pytestmark = pytest.mark.bpf

PATTERNS = ["main.fn*", "main.(*Counter).Add", "main.Counter.Get"]
KNOWN_ERRORS = {"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors"}
DEPTH, MAX_ELEMS, STR_LEN = 3, 8, 64
UNAVAILABLE = "unavailable"

# What a user of a stripped build writes: one --sig per function; named types come from the
# binary's runtime type data, structs without a descriptor are spelled out. Methods need none.
SIGS = {
    "main.fnInts": "func(a int, b int8, c int16, d int32, e int64, f uint, g uint8, h uint16, i uint32) (uint64, uintptr)",
    "main.fnSpill": "func(a, b, c, d, e, f, g, h, i int, j int64, s string) (int, string)",
    "main.fnBool": "func(a, b bool) bool",
    "main.fnStr": "func(s string, t string) (string, int)",
    "main.fnBytes": "func(b []byte) []byte",
    "main.fnSlices": "func(xs []int, ys []int32, zs []uint16, bs []bool) int",
    "main.fnPtrs": "func(p *int, q *main.Pair, u unsafe.Pointer) *int",
    "main.fnStruct": "func(p main.Pair) main.Pair",
    "main.fnMixed": "func(m struct{ N int32; F float64; S string }) (float64, int32)",
    "main.fnBig": "func(b struct{ Arr [3]int; S string; Fs [2]float64 }) (n int)",
    "main.fnErr": "func(kind int) (n int, err error)",
    "main.fnErrArg": "func(err error, label string) bool",
    "main.fnIface": "func(v any) any",
    "main.fnRefs": "func(m map[string]int, c chan int, f func() int) int",
    "main.fnFloats": "func(f float64, g float32) float64",
    "main.fnEmpty": "func()",
    "main.fnSame": "func(n int) int",
    "main.fnBench": "func(n int, s string) int",
    "main.fnStream": "func(n int) int",
    "main.fnSleep": "func(d time.Duration) time.Duration",
    "main.fnSliceKinds": "func(ss []string, ps []main.Point, pp []*main.Point) (int, []string)",
    "main.fnMaps": "func(m map[string]int, mp map[int]main.Point) (map[string]int, int)",
    "main.fnChain": "func(n *main.Node) *main.Node",
    "main.fnAnyStruct": "func(v any, p main.Point) (any, *main.Point)",
    "main.fnTime": "func(t time.Time, d time.Duration) (time.Time, time.Duration)",
    "main.fnRaw": "func(b []byte, s string) (string, []byte)",
    "main.fnCtx": "func(ctx context.Context, n int) (context.Context, error)",
    "main.fnCtxNil": "func(ctx context.Context, n int) (context.Context, error)",
}
FROM_TYPE_DATA = ("main.(*Counter).Add", "main.Counter.Get")


# -- what gotrace must print, from the program's record -----------------------------------


def text_json(raw: bytes, extra: dict | None = None):
    """README: a string or []byte is a JSON string when it is UTF-8, else {"base64": ...}; one cut at
    --str-len is an object with "len" and "truncated" (and "cap" for []byte), its text ending at the
    last whole character."""
    cut = len(raw) > STR_LEN
    data = raw[:STR_LEN]
    try:
        body = {"value": data.decode("utf-8")}
    except UnicodeDecodeError as e:
        body = {"base64": base64.b64encode(data).decode()}
        if cut and e.reason == "unexpected end of data" and e.end == len(data):
            try:
                body = {"value": data[:e.start].decode("utf-8")}
            except UnicodeDecodeError:
                pass
    if not cut:
        return body.get("value", body)
    return {**body, "len": len(raw), "truncated": True, **(extra or {})}


class MapMatch:
    """A map gotrace shows in part: its len, and entries each of which must be one of the program's."""

    def __init__(self, length: int, entries: list):
        self.length, self.entries = length, entries

    def matches(self, got) -> bool:
        if not isinstance(got, dict) or got.get("len") != self.length:
            return False
        shown = got.get("entries", [])
        if any(not any(_same(k, e["key"]) and _same(v, e["value"]) for k, v in self.entries) for e in shown):
            return False
        if self.length <= MAX_ELEMS:  # one group or bucket: all of it shown
            return len(shown) == self.length and "truncated" not in got
        return 0 < len(shown) <= MAX_ELEMS and got.get("truncated") is True

    def __repr__(self) -> str:
        return f"MapMatch(len={self.length}, entries={self.entries})"


def expected(truth: dict, depth: int, kinds: Counter):
    """The JSON VALUE gotrace must print for a logged value at `depth`; counts each node shown by kind."""
    t, v = truth["t"], truth.get("v")
    kinds[t] += 1
    follow = depth + 1 <= DEPTH
    if t in ("int", "uint", "bool"):
        return v
    if t == "float":
        return float(v)  # Go's encoding/json writes 0.0 as 0
    if t == "duration":
        return v
    if t == "time":
        return truth["s"]
    if t == "floatreg":
        return UNAVAILABLE
    if t == "string":
        raw = base64.b64decode(truth["b64"])
        if not raw.decode("utf-8", "replace").encode() == raw:
            kinds["non-utf8"] += 1
        return text_json(raw)
    if t == "bytes":
        if truth["b64"] is None:
            return None
        raw = base64.b64decode(truth["b64"])
        if not raw.decode("utf-8", "replace").encode() == raw:
            kinds["non-utf8"] += 1
        return text_json(raw, {"cap": truth["cap"]})
    if t == "ptr":
        if v is None:
            return None
        if "to" not in truth and not truth.get("cycle") or not follow:
            return v
        if truth.get("cycle"):
            kinds["cycle"] += 1
            return {"pointer": v, "cycle": True}
        return {"pointer": v, "value": expected(truth["to"], depth + 1, kinds)}
    if t == "slice":
        if v is None:
            return None
        if not follow:
            return {"len": truth["len"], "cap": truth["cap"]}
        elems = [expected(e, depth + 1, kinds) for e in v[:MAX_ELEMS]]
        if truth["len"] > MAX_ELEMS:
            return {"value": elems, "len": truth["len"], "cap": truth["cap"], "truncated": True}
        return elems
    if t == "array":
        elems = [expected(e, depth, kinds) for e in v[:MAX_ELEMS]]
        return elems if len(v) <= MAX_ELEMS else {"value": elems, "len": len(v), "truncated": True}
    if t == "struct":
        return {name: expected(field, depth, kinds) for name, field in v.items()}
    if t == "map":
        if v is None:
            return None
        if not follow:
            return {"len": truth["len"]}
        entries = [(expected(e["k"], depth + 1, kinds), expected(e["v"], depth + 1, kinds)) for e in v]
        return MapMatch(truth["len"], entries)
    if t == "chan":
        if v is None:
            return None
        return {"chan": v, "len": truth["len"], "cap": truth["cap"]} if follow else v
    if t == "func":
        if v is None:
            return None
        return {"func": truth["name"], "pointer": v} if follow else v
    if t == "context":  # shown by its concrete type only
        return None if v is None else {"type": v["type"]}
    if t in ("iface", "error"):
        if v is None:
            return None
        out = {"type": v["type"]}
        if not follow:
            return out
        inner = v["value"]
        if t == "error" and v["type"] in KNOWN_ERRORS:
            kinds["error-message"] += 1
            out["value"] = text_json(v["msg"].encode())
        elif inner["t"] == "ptr":  # a pointer is stored in the data word itself
            out["value"] = expected(inner, depth, kinds)
        else:
            out["value"] = expected(inner, depth + 1, kinds)
        return out
    raise AssertionError(f"unknown truth kind {t}")


def _same(want, got) -> bool:
    if isinstance(want, MapMatch):
        return want.matches(got)
    if want == UNAVAILABLE:
        return isinstance(got, dict) and set(got) == {"unavailable"}
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(_same(want[k], got[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_same(a, b) for a, b in zip(want, got))
    return type(want) is type(got) and want == got


# -- running -------------------------------------------------------------------------------


def trace_truth(binary: Path, tmp_path: Path, stripped: bool, as_json: bool = True) -> tuple[list, list, str]:
    """Run argstruth under gotrace args -c; (truth lines, gotrace output lines, stderr)."""
    truth_path = tmp_path / "truth.jsonl"
    # --max-overhead 0: every call is compared, so the cost guard only estimates (on an emulated VM, where a hit
    # costs tens of us, it detached functions of this program; the guard on args: tests/test_guard.py)
    cmd = ["args", "-c", f"{binary} -truth {truth_path}", binary, *PATTERNS, "--str-len", STR_LEN,
           "--depth", DEPTH, "--max-elems", MAX_ELEMS, "--max-rate", 0, "--max-overhead", 0]
    if as_json:
        cmd.append("--json")
    if stripped:
        for name, text in SIGS.items():
            cmd += ["--sig", f"{name}={text}"]
    proc = run_gotrace_process(*cmd, env={**os.environ, "GOTRACE_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    truth = [json.loads(line) for line in truth_path.read_text().splitlines()]
    lines = proc.stdout.splitlines()
    return truth, ([json.loads(line) for line in lines] if as_json else lines), proc.stderr


def score(truth: list[dict], calls: list[dict], stripped: bool = False) -> tuple[dict, list[str]]:
    """Per kind: [exact, total]; and a description of each mismatch."""
    by_func = defaultdict(list)
    for call in calls:
        by_func[call["func"]].append(call)
    seen = defaultdict(int)
    shares: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    misses: list[str] = []
    for record in truth:
        func = record["func"]
        index = seen[func]
        seen[func] += 1
        assert index < len(by_func[func]), f"gotrace reported {len(by_func[func])} calls of {func}, the program made more"
        call = by_func[func][index]
        for label, have_ok in (("pid", call["pid"] == record["pid"]), ("goid", call["goid"] == record["goid"])):
            shares[label][0] += have_ok
            shares[label][1] += 1
            if not have_ok:
                misses.append(f"{func}#{index} {label}: {call[label]} != {record[label]}")
        for side in ("args", "results"):
            order = record[side].pop("__order")
            got_items = list(call[side].items())
            assert len(got_items) == len(order), f"{func} {side}: {list(call[side])} vs {order}"
            for position, name in enumerate(order):
                got_name, got = got_items[position]
                if side == "args":
                    want_name = f"~p{position}" if stripped and func in FROM_TYPE_DATA else name
                    assert got_name == want_name, f"{func}: argument {position} is {got_name}, expected {want_name}"
                kinds: Counter = Counter()
                want = expected(record[side][name], 0, kinds)
                ok = _same(want, got)
                for kind, count in kinds.items():
                    shares[kind][0] += count if ok else 0
                    shares[kind][1] += count
                if not ok:
                    misses.append(f"{func}#{index} {name}: want {want!r}\n    got {got!r}")
    for func, calls_of in by_func.items():
        assert len(calls_of) == seen[func], f"{func}: gotrace saw {len(calls_of)} calls, the program made {seen[func]}"
    return dict(shares), misses


def _report(label: str, shares: dict) -> str:
    parts = [f"{kind} {ok}/{total}" for kind, (ok, total) in sorted(shares.items())]
    return f"{label}: " + ", ".join(parts)


REQUIRED_KINDS = ("int", "uint", "bool", "string", "bytes", "slice", "ptr", "struct", "array", "float", "floatreg",
                  "error", "error-message", "iface", "map", "chan", "func", "duration", "time", "context", "cycle",
                  "non-utf8",
                  "goid", "pid")


@pytest.mark.matrix
@pytest.mark.parametrize("version", gobuild.TOOLCHAINS)
@pytest.mark.parametrize("mode", gobuild.MODES)
def test_every_value_equals_ground_truth(version, mode, tmp_path):
    if gobuild.NATIVE_ARCH != "amd64" and mode not in gobuild.CROSS_MODES:
        pytest.skip(f"no {mode} builds for {gobuild.NATIVE_ARCH}")
    binary = gobuild.build("argstruth", version, mode, gobuild.NATIVE_ARCH)
    stripped = mode in gobuild.STRIPPED_MODES
    truth, calls, stderr = trace_truth(binary, tmp_path, stripped=stripped)
    shares, misses = score(truth, calls, stripped)
    print(_report(f"go{version} {mode}", shares))
    assert not misses, "\n".join(misses[:12])
    for kind in REQUIRED_KINDS:
        ok, total = shares.get(kind, (0, 0))
        assert total > 0 and ok == total, f"{kind}: {ok}/{total} exact"
    assert " 0 dropped" in stderr


def test_text_output_is_go_syntax(tmp_path):
    binary = gobuild.build("argstruth", gobuild.TOOLCHAINS[-1], "default")
    _, lines, _ = trace_truth(binary, tmp_path, stripped=False, as_json=False)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x00" not in text
    line = next(l for l in lines if "main.fnStr(s=\"hello\"" in l)
    assert 't="héllo wörld 日本語 😀"' in line and line.startswith(tuple("0123456789"))
    assert r'main.fnStruct(p=main.Pair{A: -5, B: "\x1b[31mred\x1b[0m\n\t\"q\" \\ \x00 \u200b end", C: true})' in text
    assert 'main.fnErr(kind=2) => (n=2, err=*fmt.wrapError("reading \\"cfg\\": disk on fire"))' in text
    assert 'main.fnErr(kind=6) => (n=6, err=&main.codeError{code: 404, msg: "not found: /a/b"})' in text
    assert 'main.fnErr(kind=7) => (n=7, err=main.valErr{op: "write", code: 28})' in text
    assert "main.fnFloats(f=<unavailable: in floating-point register X0" in text
    assert '...(len=300)' in text
    assert 'main.fnTime(t=2024-02-29 13:14:15.123456789 +0000 UTC, d=1.5ms) => ' \
           '(2024-02-29 13:14:15.124956789 +0000 UTC, 3ms)' in text
    assert 'main.fnAnyStruct(v=main.Point{X: 1, Y: 2, Label: "any"}, p=main.Point{X: 5, Y: 6, Label: "p"})' in text
    assert 'main.fnChain(n=&main.Node{Name: "a", Next: &main.Node{Name: "b", Next: (*main.Node)(0x' in text
    assert 'main.fnRaw(b=[]byte("\\xffa\\xc3"), s="ok\\xffok")' in text
    assert 'map[int]main.Point{' in text and '7: main.Point{X: 7, Y: 70, Label: "seven"}' in text
