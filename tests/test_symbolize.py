"""The pclntab symbolizer (gotrace.binary.symbolize) against Go's own answers.

testdata/symtruth records runtime.Callers at known call sites (a direct call,
two calls inlined into one another, a method, a closure, two instantiations
of a generic function, a recursion, a second goroutine) and prints the raw
pcs with what runtime.CallersFrames makes of them. The symbolizer, reading
only the binary, must give the same function, file and line for every frame,
expanding inlined calls from the inline tree exactly where Go does, on every
amd64 build of the matrix (default, stripped, PIE, external linking; Go 1.19
to 1.27). arm64 binaries cannot run here: there `go tool addr2line` of the
same toolchain is the reference for the physical function and the innermost
file:line of every instruction of package main.
"""

from __future__ import annotations

import json
import random
import subprocess

import pytest

from support import gobuild
from gotrace.binary.gobinary import GoBinary
from gotrace.binary.symbolize import SourceFrame, Symbolizer, name_for_print

AMD64_BUILDS = [(v, m) for v in gobuild.TOOLCHAINS for m in gobuild.MODES]
ARM64_BUILDS = [(v, m) for v in gobuild.TOOLCHAINS for m in gobuild.CROSS_MODES]


def symbolizer(path) -> tuple[GoBinary, Symbolizer]:
    gobin = GoBinary(path)
    return gobin, Symbolizer(gobin.elf, gobin.pclntab, gobin.build.version_tuple)


def run_symtruth(version: str, mode: str) -> tuple[GoBinary, Symbolizer, int, list[dict]]:
    """(binary, symbolizer, load bias, samples) of one run of symtruth."""
    path = gobuild.build("symtruth", version, mode)
    lines = subprocess.run([str(path)], capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    first, *samples = (json.loads(line) for line in lines)
    gobin, sym = symbolizer(path)
    (anchor,) = gobin.functions.indices_named("main.anchor")
    bias = first["anchor"] - gobin.pclntab.entries[anchor]
    if "pie" not in mode:  # pie, stripped-pie: loaded anywhere
        assert bias == 0
    return gobin, sym, bias, samples


def expand_like_callers(sym: Symbolizer, pcs: list[int], bias: int) -> list[SourceFrame]:
    """Frames of a runtime.Callers buffer: each physical return address expands into its inlined calls;
    runtime.Callers wrote one (synthetic) pc per inlined frame, so as many pcs are consumed."""
    frames: list[SourceFrame] = []
    i = 0
    while i < len(pcs):
        chain = sym.frames_at_return(pcs[i] - bias)
        assert chain, f"no function at pc {pcs[i]:#x} (bias {bias:#x})"
        frames += chain
        i += len(chain)
    return frames


@pytest.mark.parametrize("version,mode", AMD64_BUILDS, ids=[f"go{v}-{m}" for v, m in AMD64_BUILDS])
def test_frames_equal_callersframes(version, mode):
    _, sym, bias, samples = run_symtruth(version, mode)
    tags = {s["tag"] for s in samples}
    assert tags == {"inlined-chain", "direct", "method", "generic", "closure", "recursion", "goroutine"}
    for sample in samples:
        mine = expand_like_callers(sym, sample["pcs"], bias)
        got = [(f.function, f.file, f.line) for f in mine]
        want = [(f["function"], f["file"], f["line"]) for f in sample["frames"]]
        assert got == want, f"{sample['tag']}: frames differ from runtime.CallersFrames"
        if sample["tag"] in ("inlined-chain", "goroutine"):
            # leaf's caller is inner, inlined into middle, inlined into outer (or the goroutine's closure)
            assert [(f.function, f.inlined) for f in mine[1:4]] == [
                ("main.inner", True), ("main.middle", True),
                ("main.outer" if sample["tag"] == "inlined-chain" else "main.main.func2", False)]
        elif sample["tag"] == "closure":  # a func literal called where it is written is inlined into main
            assert [(f.function, f.inlined) for f in mine[1:3]] == [("main.main.func1", True), ("main.main", False)]
        else:
            assert not any(f.inlined for f in mine), sample["tag"]
    recursion = next(s for s in samples if s["tag"] == "recursion")
    assert [f["function"] for f in recursion["frames"]].count("main.recurse") == 6


@pytest.mark.parametrize("version", gobuild.TOOLCHAINS)
def test_gofunc_from_moduledata_equals_symbol(version):
    """Stripped binaries find go:func.* through moduledata; where .symtab names it, both agree."""
    for mode in ("default", "pie", "extlink"):
        gobin, sym = symbolizer(gobuild.build("symtruth", version, mode))
        from_symbol = sym.gofunc_vaddr
        assert from_symbol and from_symbol == (gobin.elf.symbol_vaddr("go:func.*") or gobin.elf.symbol_vaddr("go.func.*"))
        sym.elf.symbol_vaddr = lambda name: None  # as if stripped
        del sym.__dict__["gofunc_vaddr"]
        assert sym.gofunc_vaddr == from_symbol, mode


def addr2line(version: str, path, pcs: list[int]) -> list[tuple[str, str]]:
    proc = subprocess.run([str(gobuild.go_binary(version)), "tool", "addr2line", str(path)],
                          input="".join(f"{pc:#x}\n" for pc in pcs), capture_output=True, text=True,
                          env=gobuild.go_env(version), check=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * len(pcs)
    return list(zip(lines[0::2], lines[1::2]))


@pytest.mark.parametrize("version,mode", ARM64_BUILDS, ids=[f"go{v}-{m}-arm64" for v, m in ARM64_BUILDS])
def test_arm64_agrees_with_addr2line(version, mode):
    path = gobuild.build("symtruth", version, mode, "arm64")
    gobin, sym = symbolizer(path)
    pcs = [pc for fn in gobin.match(["main.*"]) for pc in range(fn.entry_vaddr, fn.entry_vaddr + fn.size, 4)]
    inlined = 0
    for pc, (function, position) in zip(pcs, addr2line(version, path, pcs)):
        frames = sym.frames(pc)
        if function == "?":  # padding after a function's last instruction
            continue
        assert (frames[-1].function, f"{frames[0].file}:{frames[0].line}") == (name_for_print(function), position), hex(pc)
        inlined += len(frames) > 1
    # Go 1.19's arm64 PIE builds (compiled -shared) came out with no inlined call in main.* (addr2line agrees
    # with every frame above); every other build must show some, or the inline tree was not read.
    if not (version.startswith("1.19") and "pie" in mode):
        assert inlined > 0, "no pc inside an inlined call: the inline tree was not read"


def test_pc_outside_go_code():
    gobin, sym = symbolizer(gobuild.build("symtruth", "1.23.9", "default"))
    assert sym.frames(0) == []
    assert sym.frames(gobin.pclntab.entries[gobin.pclntab.nfunc] + 16) == []
    assert sym.function_name(0) is None


def test_damaged_tables_never_raise(tmp_path):
    """Bytes of pclntab overwritten at random: every pc still symbolizes to a list, never an exception."""
    source = gobuild.build("symtruth", "1.27.3", "stripped")
    gobin, _ = symbolizer(source)
    section = gobin.elf.get_section(".gopclntab")
    pcs = [pc for fn in gobin.match(["main.*"]) for pc in range(fn.entry_vaddr, fn.entry_vaddr + fn.size, 7)]
    original = source.read_bytes()
    rng = random.Random(12)
    for round_ in range(20):
        data = bytearray(original)
        for _ in range(200):
            at = section.file_offset + rng.randrange(section.size)
            data[at] = rng.randrange(256)
        damaged = tmp_path / f"damaged{round_}"
        damaged.write_bytes(bytes(data))
        try:
            gobin, sym = symbolizer(damaged)
        except Exception as e:  # the table itself may no longer parse: that is the analysis layer's error
            assert type(e).__name__ == "BinaryError", e
            continue
        for pc in pcs:
            assert isinstance(sym.frames(pc), list)
            assert isinstance(sym.frames_at_return(pc), list)
