"""gotrace args without BPF: --sig parsing, capture plans, decoding and rendering, CLI errors.

The plans are run through a small Python model of probes/args.bpf.c's three
operations (as probes/gotrace.h defines them) over a fake register file and
fake memory, then decoded: what a value looks like after the whole
user-space path, with no kernel involved.
"""

from __future__ import annotations

import struct

import pytest

from support import gobuild
from support.cli import run_gotrace_process
from gotrace import header as probes_header
from gotrace.capture.abi import AMD64
from gotrace.capture.plan import BYTES, plan_function
from gotrace.trace.args import CallRecord, pack_plan, parse_record
from gotrace.output.args import ArgsSummary, call_json, format_call, format_value, quote, value_json
from gotrace.errors import UsageError
from gotrace.binary.gotypes import Kind, Param, Signature, basic, interface_type, slice_of, string_type, struct_of
from gotrace.capture.sigparse import parse_signature
from gotrace.capture.values import Interface, Text, decode_call

C = probes_header.constant


# -- --sig --------------------------------------------------------------------------


def test_sig_named_grouped_and_unnamed_results():
    sig = parse_signature("func(a, b int, s string, xs ...byte) (n int, err error)", "main.f")
    assert [(p.name, p.type.name, p.type.size) for p in sig.params] == [
        ("a", "int", 8), ("b", "int", 8), ("s", "string", 16), ("xs", "[]byte", 24)]
    assert [(p.name, p.type.kind) for p in sig.results] == [("n", Kind.INT), ("err", Kind.INTERFACE)]
    unnamed = parse_signature("func(int, string) (int, error)")
    assert [p.name for p in unnamed.params] == ["~p0", "~p1"]
    assert [p.name for p in unnamed.results] == ["~r0", "~r1"]


def test_sig_struct_and_composites_have_go_layout():
    sig = parse_signature("func(p struct{ A int32; B string; C bool }, m map[string]int, a [3]int16, e any) *main.T")
    pair = sig.params[0].type
    assert [(f.name, f.offset) for f in pair.fields] == [("A", 0), ("B", 8), ("C", 24)]
    assert pair.size == 32
    assert sig.params[1].type.size == 8 and sig.params[2].type.size == 6
    assert sig.params[3].type.empty is True
    assert sig.results[0].type.kind is Kind.POINTER


@pytest.mark.parametrize("text, message", [
    ("fun(x int)", "must start with 'func'"),
    ("func(x main.T)", "named type main.T"),
    ("func(a int, string)", "mixed named and unnamed"),
    ("func(x int", "expected"),
    ("func(x int) (int) extra", "unexpected text"),
])
def test_sig_errors_say_what_is_wrong(text, message):
    with pytest.raises(UsageError, match=message):
        parse_signature(text)


# -- plans --------------------------------------------------------------------------


def _model(ops, regs: dict[str, int], memory: dict[int, bytes], sp: int, size: int) -> tuple[bytes, int, int]:
    """What probes/args.bpf.c's gt_capture does, in Python: (buffer, ok mask, fail mask)."""
    buf = bytearray(size + C("GT_ARGS_MAX_READ"))
    ok = fail = 0

    def read(addr: int, n: int) -> bytes | None:
        for base, blob in memory.items():
            if base <= addr and addr + n <= base + len(blob):
                return blob[addr - base:addr - base + n]
        return None

    for i, op in enumerate(ops):
        if op.kind == C("GT_OP_REG"):
            value = regs.get(AMD64.int_regs[op.reg], 0) & (2**64 - 1)
            buf[op.dst:op.dst + op.size] = value.to_bytes(8, "little")[:op.size]
            ok |= 1 << i
        elif op.kind == C("GT_OP_STACK"):
            data = read(sp + op.offset, op.size)
            if data is None:
                fail |= 1 << i
            else:
                buf[op.dst:op.dst + op.size] = data
                ok |= 1 << i
        elif op.kind == C("GT_OP_DEREF"):
            if op.dep != C("GT_OP_NO_DEP") and not ok >> op.dep & 1:
                continue
            ptr = int.from_bytes(buf[op.src:op.src + 8], "little")
            n = op.size
            if op.len_src != C("GT_OP_NO_SRC"):
                n = min(n, int.from_bytes(buf[op.len_src:op.len_src + 8], "little") << op.shift)
            if ptr == 0 or n == 0:
                continue
            data = read(ptr + op.offset, n)
            if data is None:
                fail |= 1 << i
            else:
                buf[op.dst:op.dst + n] = data
                ok |= 1 << i
    return bytes(buf), ok, fail


def _run(sig: Signature, entry_regs, ret_regs, memory, sp=0x7000, str_len=16):
    plan = plan_function(sig, "amd64", str_len)
    args, a_ok, a_fail = _model(plan.entry.ops, entry_regs, memory, sp, C("GT_ARGS_DATA"))
    res, r_ok, r_fail = _model(plan.ret.ops, ret_regs, memory, sp, C("GT_RES_DATA"))
    record = CallRecord(0, 4242, 17, 1_000, 1_051_000, 0x401000, args, a_ok, a_fail, res, r_ok, r_fail)
    return plan, decode_call(record, plan, types=None, load_bias=0, wall_offset_ns=0)


def test_plan_reads_registers_then_follows_strings():
    sig = Signature("main.work", (Param("n", basic(Kind.INT)), Param("s", string_type())),
                    (Param("~r0", basic(Kind.INT), True), Param("~r1", interface_type("error"), True)))
    plan = plan_function(sig, "amd64", 64)
    kinds = [(op.kind, op.reg, op.dst, op.size) for op in plan.entry.ops]
    # n = RAX at 0; s = RBX (ptr) at 8, RCX (len) at 16; then the string bytes
    assert kinds[:3] == [(C("GT_OP_REG"), 0, 0, 8), (C("GT_OP_REG"), 1, 8, 8), (C("GT_OP_REG"), 2, 16, 8)]
    deref = plan.entry.ops[3]
    assert (deref.kind, deref.src, deref.len_src, deref.size) == (C("GT_OP_DEREF"), 8, 16, 64)
    assert (8, BYTES) in plan.entry.derefs
    assert len(pack_plan(plan.entry.packed_ops())) == 8 + 16 * C("GT_ARGS_MAX_OPS")


def test_decoded_call_text_and_json():
    sig = Signature("main.work", (Param("n", basic(Kind.INT)), Param("s", string_type())),
                    (Param("~r0", basic(Kind.INT), True), Param("~r1", interface_type("error"), True)))
    memory = {0x5000: b"hello"}
    _, call = _run(sig, {"RAX": 1000, "RBX": 0x5000, "RCX": 5}, {"RAX": 500500, "RBX": 0, "RCX": 0}, memory)
    line = format_call(call, local_time=False)
    assert line.endswith('pid=4242 goid=17 main.work(n=1000, s="hello") => (500500, <nil>) 1.05ms')
    assert call_json(call)["args"] == {"n": 1000, "s": "hello"}
    assert call_json(call)["results"] == {"~r0": 500500, "~r1": None}
    assert call_json(call)["latency_ns"] == 1_050_000


def test_stack_spill_truncation_floats_and_faults():
    pair = struct_of("main.P", [("A", basic(Kind.INT)), ("F", basic(Kind.FLOAT64)), ("B", basic(Kind.BOOL))])
    nine = tuple(Param(f"a{i}", basic(Kind.INT)) for i in range(9))
    sig = Signature("main.f", nine + (Param("s", string_type()), Param("p", pair), Param("xs", slice_of(basic(Kind.INT32)))), ())
    regs = {r: i for i, r in enumerate(AMD64.int_regs)}
    # s, p and xs no longer fit in registers: on the stack at SP+8, +24, +48
    stack = struct.pack("<QQ", 0x6000, 40) + struct.pack("<qdQ", -3, 2.5, 1) + struct.pack("<QQQ", 0xdead000, 3, 4)
    memory = {0x7008: stack, 0x6000: b"x" * 40}
    plan, call = _run(sig, regs, {}, memory)
    values = dict(call.args)
    assert value_json(values["a8"]) == 8
    assert value_json(values["s"]) == {"value": "x" * 16, "len": 40, "truncated": True}
    assert value_json(values["p"]) == {"A": -3, "F": 2.5, "B": True}  # in memory, a float is exact
    assert value_json(values["xs"]) == {"unavailable": "unreadable memory at 0xdead000"}
    assert format_value(values["s"]) == '"' + "x" * 16 + '"...(len=40)'

    floats = Signature("main.g", (Param("f", basic(Kind.FLOAT64)), Param("n", basic(Kind.INT))), ())
    _, call = _run(floats, {"RAX": 7}, {}, {})
    assert value_json(dict(call.args)["f"]) == {"unavailable": "in floating-point register X0 (not readable from a uprobe)"}
    assert value_json(dict(call.args)["n"]) == 7


def test_nil_and_empty_values():
    sig = Signature("main.f", (Param("b", slice_of(basic(Kind.UINT8))), Param("xs", slice_of(basic(Kind.INT))),
                               Param("e", interface_type("interface {}", empty=True))), ())
    regs = {"RAX": 0, "RBX": 0, "RCX": 0, "RDI": 0x5000, "RSI": 0, "R8": 8, "R9": 0, "R10": 0}
    _, call = _run(sig, regs, {}, {0x5000: b"\0" * 64})
    assert [value_json(v) for _, v in call.args] == [None, [], None]
    assert [format_value(v) for _, v in call.args] == ["nil", "[]int{}(len=0 cap=8)", "<nil>"]


def test_quote_escapes_control_characters_like_go():
    assert quote(b"\x1b[31mred\x1b[0m\n\t\"q\" \\ \x00") == r'"\x1b[31mred\x1b[0m\n\t\"q\" \\ \x00"'
    assert quote("héllo 日本 😀".encode()) == '"héllo 日本 😀"'
    assert quote(b"\xff\xfe") == r'"\xff\xfe"'
    assert quote("\u200b\u2028".encode()) == r'"\u200b\u2028"'


def test_interface_and_truncated_json():
    assert value_json(Interface(None)) is None
    assert value_json(Interface("*errors.errorString", Text(b"boom", 4), True)) == {
        "type": "*errors.errorString", "value": "boom"}
    assert value_json(Text(b"ab", 10, is_bytes=True, cap=12)) == {"value": "ab", "len": 10, "truncated": True, "cap": 12}


def test_record_layout_matches_header():
    head = struct.pack("<QQQQIIIIII", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    raw = head + b"A" * C("GT_ARGS_BUF") + b"R" * C("GT_RES_BUF")
    record = parse_record(raw)
    assert (record.start_ns, record.end_ns, record.goid, record.entry_ip, record.tgid, record.func_id) == (1, 2, 3, 4, 5, 6)
    assert record.args == b"A" * C("GT_ARGS_BUF") and record.results == b"R" * C("GT_RES_BUF")
    assert C("GT_ARGS_BUF") == C("GT_ARGS_DATA") + C("GT_ARGS_MAX_READ")
    assert C("GT_RES_BUF") == C("GT_RES_DATA") + C("GT_ARGS_MAX_READ")


def test_summary_counts_every_drop():
    stats = {"dropped_rate_limit": 7, "dropped_ringbuf_full": 3, "returns_without_entry": 0, "stale_entries": 0}
    line = ArgsSummary(90, 0, stats, 1000, False).text()
    assert line == ("gotrace: 90 calls shown; 10 dropped (7 over --max-rate 1000/s, "
                    "3 because the reader fell behind (ring buffer full))")


# -- CLI errors (no root needed: they happen before any BPF) ----------------------------


def test_sig_that_does_not_fit_the_function_is_refused():
    binary = str(gobuild.build("argstruth", gobuild.TOOLCHAINS[-1], "stripped"))
    proc = run_gotrace_process("args", binary, "main.fnStr", "--sig", "func(x int) int")
    assert proc.returncode == 2
    assert proc.stderr.startswith("gotrace: --sig of main.fnStr needs 8 bytes of argument area but the function has 32")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_stripped_binary_without_sig_says_to_give_one():
    binary = str(gobuild.build("argstruth", gobuild.TOOLCHAINS[-1], "stripped"))
    proc = run_gotrace_process("args", binary, "main.fnStr")
    assert proc.returncode == 2
    assert "no DWARF" in proc.stderr and "--sig" in proc.stderr
    proc = run_gotrace_process("args", binary, "main.fn*", "--sig", "func(x int)")
    assert proc.returncode == 2 and "NAME=func" in proc.stderr


@pytest.mark.parametrize("version", gobuild.TOOLCHAINS)
@pytest.mark.parametrize("mode", ["default", "pie", "extlink"])
def test_types_section_found_from_moduledata_alone(version, mode, monkeypatch):
    """Stripped binaries have no runtime.types symbol: moduledata must give the same address."""
    from gotrace.binary.gobinary import GoBinary
    from gotrace.binary.rtypes import RuntimeTypes

    with GoBinary(gobuild.build("argstruth", version, mode)) as gobin:
        symbol = gobin.elf.symbol_vaddr("runtime.types")
        monkeypatch.setattr(gobin.elf, "symbol_vaddr", lambda name: None)
        types = RuntimeTypes.of(gobin)
        assert symbol and types.types_vaddr == symbol


@pytest.mark.parametrize("version", ["1.19", "1.27.3"])
def test_dwarf_signature_of_generic_instantiations(version):
    """Go 1.19's pclntab names both instantiations main.Map[...]; DWARF names them as .symtab does
    (main.Map[go.shape.int_0]): the plan finds each one's DWARF by its entry and keeps the runtime's name."""
    from gotrace.binary.gobinary import GoBinary
    from gotrace.capture.plan import plan_args

    with GoBinary.open(gobuild.build("service", version, "default", "amd64")) as gobin:
        plan = plan_args(gobin, ["main.Map[...]"])
    assert plan.skipped == []
    assert len(plan.traced) == 2
    for probes, fplan in plan.traced:
        assert fplan.name == probes.function.name
        assert [p.name for p in fplan.signature.params] == [".dict", "xs", "f"]
    names = sorted(fplan.name for _, fplan in plan.traced)
    expected = ["main.Map[...]"] * 2 if version == "1.19" else ["main.Map[go.shape.int]", "main.Map[go.shape.string]"]
    assert names == expected
