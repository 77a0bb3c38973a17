"""Tests for gotrace.binary.sites: probe sites against hand-encoded bytes and against objdump on real Go binaries.

The byte fixtures need nothing but capstone. The binary tests build
tests/fixtures/sites/prog with Go 1.19, 1.23.9 and 1.27.3 for amd64 and arm64
(cached under /var/cache/gotrace/sites-test/) and compare every function of
each binary with `objdump -d` (amd64) or `llvm-objdump -d` (arm64): a missing
toolchain or disassembler skips those tests with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from bisect import bisect_right
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gotrace.errors import BinaryError
from gotrace.binary.sites import (
    REASON_ABI0,
    REASON_ASM,
    REASON_BAD_STUB,
    REASON_EMPTY,
    REASON_INDIRECT_JUMP,
    REASON_NEVER_RETURNS,
    REASON_TAIL_JUMP,
    REASON_UNDECODABLE,
    ProbeSites,
    find_probe_sites,
)

BASE = 0x401000
INT3_PAD = b"\xcc" * 11


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# --- amd64 byte fixtures ----------------------------------------------------
# Bytes as Go 1.27 emits them (checked with objdump); call/jmp displacements
# that leave the function point nowhere in particular.

# main.multiRet-like, small frame: cmp rsp,[r14+0x10]; jbe stub; two rets; stub.
SMALL = h(
    "49 3b 66 10"  # 00 cmp rsp, [r14+0x10]
    "76 13"  # 04 jbe 0x19
    "55"  # 06 push rbp   <- entry site
    "48 89 e5"  # 07 mov rbp, rsp
    "48 83 f8 0a"  # 0a cmp rax, 10
    "7f 03"  # 0e jg 0x13
    "5d"  # 10 pop rbp
    "c3"  # 11 ret
    "90"  # 12 nop
    "b8 c3 c3 c3 c3"  # 13 mov eax, 0xc3c3c3c3 (C3 bytes that are not rets)
    "c3"  # 18 ret
    "48 89 44 24 08"  # 19 mov [rsp+8], rax   <- stub
    "e8 00 00 00 00"  # 1e call runtime.morestack_noctxt
    "48 8b 44 24 08"  # 23 mov rax, [rsp+8]
    "eb d6"  # 28 jmp 0x00 (back to the entry)
) + INT3_PAD

# main.mediumFrame: lea r12,[rsp-0xb78]; cmp r12,[r14+0x10]; jbe (rel32).
MEDIUM = h(
    "4c 8d a4 24 88 f4 ff ff"  # 00 lea r12, [rsp-0xb78]
    "4d 3b 66 10"  # 08 cmp r12, [r14+0x10]
    "0f 86 04 00 00 00"  # 0c jbe 0x16
    "55"  # 12 push rbp   <- entry site
    "5d"  # 13 pop rbp
    "c3"  # 14 ret
    "90"  # 15 nop
    "e8 00 00 00 00"  # 16 call morestack  <- stub
    "eb e3"  # 1b jmp 0x00
) + INT3_PAD

# main.hugeFrame (Go 1.19 and 1.27): mov r12,rsp; sub r12,N; jb stub; cmp r12,[r14+0x10]; jbe stub.
HUGE = h(
    "49 89 e4"  # 00 mov r12, rsp
    "49 81 ec 20 ea 00 00"  # 03 sub r12, 0xea20
    "72 0a"  # 0a jb 0x16
    "4d 3b 66 10"  # 0c cmp r12, [r14+0x10]
    "76 04"  # 10 jbe 0x16
    "55"  # 12 push rbp   <- entry site
    "5d"  # 13 pop rbp
    "c3"  # 14 ret
    "90"  # 15 nop
    "e8 00 00 00 00"  # 16 call morestack  <- stub
    "eb e3"  # 1b jmp 0x00
) + INT3_PAD

# main.(*Inner).Get: NOSPLIT leaf, no prologue.
LEAF = h("48 8b 08  48 8d 04 49  c3") + INT3_PAD

# main.(*Outer).Get: promoted method through an embedded pointer, a tail jump.
TAIL_JUMP = h("48 8b 00  e9 d8 f8 ff ff") + INT3_PAD

# main.onlyPanic: prologue, call runtime.gopanic, stub.
PANIC_ONLY = h(
    "49 3b 66 10"  # 00 cmp rsp, [r14+0x10]
    "76 0b"  # 04 jbe 0x11
    "55"  # 06 push rbp
    "48 89 e5"  # 07 mov rbp, rsp
    "e8 00 00 00 00"  # 0a call runtime.gopanic
    "90 90"  # 0f nop; nop
    "e8 00 00 00 00"  # 11 call morestack  <- stub
    "eb e8"  # 16 jmp 0x00
) + INT3_PAD


def test_small_frame_prologue_entry_after_jbe_and_every_ret():
    assert find_probe_sites(SMALL, BASE, "amd64") == ProbeSites(BASE + 0x06, (BASE + 0x11, BASE + 0x18), None)


def test_medium_frame_prologue_with_rel32_jbe():
    assert find_probe_sites(MEDIUM, BASE, "amd64") == ProbeSites(BASE + 0x12, (BASE + 0x14,), None)


def test_huge_frame_prologue_entry_after_the_second_branch():
    assert find_probe_sites(HUGE, BASE, "amd64") == ProbeSites(BASE + 0x12, (BASE + 0x14,), None)


def test_nosplit_leaf_entry_is_first_instruction():
    assert find_probe_sites(LEAF, BASE, "amd64") == ProbeSites(BASE, (BASE + 7,), None)


def test_tail_jump_wrapper_is_not_traceable():
    assert find_probe_sites(TAIL_JUMP, BASE, "amd64") == ProbeSites(BASE, (), REASON_TAIL_JUMP)


def test_panic_only_function_is_not_traceable():
    assert find_probe_sites(PANIC_ONLY, BASE, "amd64") == ProbeSites(BASE + 6, (), REASON_NEVER_RETURNS)


def test_indirect_jump_without_ret():
    assert find_probe_sites(h("48 8b 3f  ff e7") + INT3_PAD, BASE, "amd64").reason == REASON_INDIRECT_JUMP


def test_ret_imm16_is_a_return():
    assert find_probe_sites(h("31 c0  c2 08 00") + INT3_PAD, BASE, "amd64").return_vaddrs == (BASE + 2,)


def test_padding_produces_no_sites():
    """INT3 or zero fill after the last instruction is not code, whatever its length."""
    for pad in (b"", b"\xcc", b"\xcc" * 31, b"\x00", b"\x00" * 7, b"\xcc\xcc\x00\x00\x00"):
        assert find_probe_sites(LEAF[:8] + pad, BASE, "amd64") == ProbeSites(BASE, (BASE + 7,), None), pad


def test_undecodable_bytes_inside_the_code_make_it_untraceable():
    # Data embedded in code (as crypto/internal/boring/sig does): 0x06 is no instruction in 64-bit mode.
    sites = find_probe_sites(h("eb 02  06 06  c3") + INT3_PAD, BASE, "amd64")
    assert sites.reason == REASON_UNDECODABLE
    assert sites.return_vaddrs == ()


def test_prologue_match_is_strict_about_register_and_offset():
    """Only g.stackguard0 through R14 is a stack check: other bases or offsets leave the entry at the start."""
    rest = SMALL[4:]
    for fake in ("49 3b 66 18", "49 3b 65 10", "48 3b 66 10"):  # [r14+0x18], [r13+0x10], rsp vs [rsi+0x10]
        assert find_probe_sites(h(fake) + rest, BASE, "amd64").entry_vaddr == BASE, fake


def test_stack_check_whose_stub_does_not_return_to_the_entry():
    broken = SMALL[:0x28] + h("eb 00") + INT3_PAD  # the stub's jmp goes forward, not back to the entry
    assert find_probe_sites(broken, BASE, "amd64").reason == REASON_BAD_STUB


def test_abi0_code_that_takes_g_from_tls():
    tls_prologue = h("64 48 8b 0c 25 f8 ff ff ff  48 3b 61 10  76 01  c3  c3")  # mov rcx, fs:[-8]; cmp rsp,[rcx+0x10]
    assert find_probe_sites(tls_prologue, BASE, "amd64").reason == REASON_ABI0
    # ABI0-to-Go wrapper: sets R14 from TLS before calling the Go body.
    wrapper = h("55  48 89 e5  0f 57 ff  64 4c 8b 34 25 f8 ff ff ff  e8 00 00 00 00  5d  c3")
    assert find_probe_sites(wrapper, BASE, "amd64").reason == REASON_ABI0
    # PIE and external links: -8 goes into a register first (Go 1.19-1.27 wrappers).
    pie_wrapper = h("55  48 89 e5  0f 57 ff  49 c7 c6 f8 ff ff ff  64 4d 8b 36  e8 00 00 00 00  5d  c3")
    assert find_probe_sites(pie_wrapper, BASE, "amd64").reason == REASON_ABI0
    # Wrappers of many arguments copy them from the stack first: the TLS load comes late.
    late = h("48 8b 44 24 08" * 12 + "64 4c 8b 34 25 f8 ff ff ff  e8 00 00 00 00  c3")
    assert find_probe_sites(late, BASE, "amd64").reason == REASON_ABI0
    # A Go function reloading R14 after a call into assembly is still Go.
    go_after_call = h("e8 00 00 00 00  64 4c 8b 34 25 f8 ff ff ff  c3")
    assert find_probe_sites(go_after_call, BASE, "amd64").reason is None


def test_assembly_by_flag_and_by_name():
    """pclntab's assembly flag comes first; the runtime's g-switching assembly is known by its pclntab name."""
    assert find_probe_sites(LEAF, BASE, "amd64", is_asm=True).reason == REASON_ASM
    assert find_probe_sites(TAIL_JUMP, BASE, "amd64", is_asm=True).reason == REASON_ASM  # before "no return"
    assert find_probe_sites(LEAF, BASE, "amd64", name="runtime.systemstack").reason == REASON_ABI0
    assert find_probe_sites(LEAF, BASE, "amd64", name="main.leaf").reason is None


def test_sites_the_kernel_refuses():
    """A lock-prefixed entry (internal/runtime/atomic.(*Uint8).And in Go 1.26) cannot carry a uprobe."""
    lock_and = h("f0 20 18  c3") + INT3_PAD  # lock and byte ptr [rax], bl; ret
    sites = find_probe_sites(lock_and, BASE, "amd64")
    assert sites.refused == ((BASE, "lock prefix"),)
    assert sites.entry_refused
    assert sites.reason == "the kernel refuses a uprobe on its entry instruction (lock prefix)"
    assert sites.return_vaddrs == (BASE + 3,)
    # After a stack check the entry site is the instruction after the jbe: that one counts.
    guarded = h("49 3b 66 10  76 05  f0 0f c1 08  c3  e8 00 00 00 00  eb ee") + INT3_PAD
    sites = find_probe_sites(guarded, BASE, "amd64")
    assert sites.entry_vaddr == BASE + 6
    assert sites.refused == ((BASE + 6, "lock prefix"),)
    # A refused site does not hide a more basic reason.
    assert find_probe_sites(h("f0 20 18") + TAIL_JUMP, BASE, "amd64").reason == REASON_TAIL_JUMP
    # arm64: an exclusive load at the entry (ldaxr w1, [x0]; ret).
    sites = find_probe_sites(w(0x885FFC01, RET), A64, "arm64")
    assert sites.refused == ((A64, "exclusive load/store"),)
    assert "entry instruction (exclusive load/store)" in sites.reason


def test_empty_or_padding_only():
    assert find_probe_sites(b"", BASE, "amd64") == ProbeSites(None, (), REASON_EMPTY)
    assert find_probe_sites(b"\xcc" * 16, BASE, "amd64") == ProbeSites(None, (), REASON_EMPTY)


def test_unknown_arch_is_a_binary_error():
    with pytest.raises(BinaryError, match="amd64 and arm64"):
        find_probe_sites(LEAF, BASE, "riscv64")


def test_accepts_memoryview_and_bytearray():
    assert find_probe_sites(memoryview(SMALL), BASE, "amd64") == find_probe_sites(bytearray(SMALL), BASE, "amd64")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=96), st.sampled_from(["amd64", "arm64"]))
def test_any_bytes_give_sites_inside_the_code(code, arch):
    sites = find_probe_sites(code, BASE, arch)
    assert list(sites.return_vaddrs) == sorted(set(sites.return_vaddrs))
    assert all(BASE <= vaddr < BASE + len(code) for vaddr in sites.return_vaddrs)
    assert sites.entry_vaddr is None or BASE <= sites.entry_vaddr < BASE + len(code)
    assert sites.reason is not None or sites.return_vaddrs  # traceable means something to probe on return


# --- arm64 byte fixtures ----------------------------------------------------

A64 = 0x90E20
UDF = b"\x00" * 4


def w(*words: int) -> bytes:
    return b"".join(word.to_bytes(4, "little") for word in words)


LDR_GUARD = 0xF9400B90  # ldr x16, [x28, #16]
RET = 0xD65F03C0


def test_arm64_small_frame():
    code = w(
        LDR_GUARD,
        0xEB3063FF,  # cmp sp, x16
        0x540000A9,  # 0x08 b.ls 0x1c
        0xF81F0FFE,  # 0x0c str x30, [sp, #-16]!   <- entry site
        0xF84107FE,  # 0x10 ldr x30, [sp], #16
        RET,  # 0x14
        0xD503201F,  # 0x18 nop
        0xAA1E03E3,  # 0x1c mov x3, x30            <- stub
        0x94000000,  # 0x20 bl morestack
        0x17FFFFF7,  # 0x24 b 0x00
    ) + UDF
    assert find_probe_sites(code, A64, "arm64") == ProbeSites(A64 + 0xC, (A64 + 0x14,), None)


def test_arm64_medium_frame():
    code = w(
        LDR_GUARD,
        0xD12E03F1,  # 0x04 sub x17, sp, #0xb80
        0xEB10023F,  # 0x08 cmp x17, x16
        0x54000069,  # 0x0c b.ls 0x18
        0xD503201F,  # 0x10 nop   <- entry site
        RET,  # 0x14
        0x94000000,  # 0x18 bl morestack  <- stub
        0x17FFFFF9,  # 0x1c b 0x00
    )
    assert find_probe_sites(code, A64, "arm64") == ProbeSites(A64 + 0x10, (A64 + 0x14,), None)


def test_arm64_huge_frame_with_movk():
    code = w(
        LDR_GUARD,
        0xD29A021B,  # 0x04 mov x27, #0xd010
        0xF2A0007B,  # 0x08 movk x27, #3, lsl #16
        0xEB3B63F1,  # 0x0c subs x17, sp, x27
        0x540000A3,  # 0x10 b.lo 0x24
        0xEB10023F,  # 0x14 cmp x17, x16
        0x54000069,  # 0x18 b.ls 0x24
        0xD503201F,  # 0x1c nop   <- entry site
        RET,  # 0x20
        0x94000000,  # 0x24 bl morestack  <- stub
        0x17FFFFF6,  # 0x28 b 0x00
    )
    assert find_probe_sites(code, A64, "arm64") == ProbeSites(A64 + 0x1C, (A64 + 0x20,), None)


def test_arm64_huge_frame_with_immediate():
    code = w(
        LDR_GUARD,
        0xF13E43F1,  # 0x04 subs x17, sp, #0xf90
        0x540000A3,  # 0x08 b.lo 0x1c
        0xEB10023F,  # 0x0c cmp x17, x16
        0x54000069,  # 0x10 b.ls 0x1c
        0xD503201F,  # 0x14 nop   <- entry site
        RET,  # 0x18
        0x94000000,  # 0x1c bl morestack  <- stub
        0x17FFFFF8,  # 0x20 b 0x00
    )
    assert find_probe_sites(code, A64, "arm64") == ProbeSites(A64 + 0x14, (A64 + 0x18,), None)


def test_arm64_literal_pool_after_the_code_is_stepped_over():
    """Go <= 1.21 puts literal pools after a `b .`: undecodable words there are data, not the end of the code."""
    code = w(0xAA0003E1, RET, 0x14000000, 0x00010150, 0x00010148, 0x00210C00) + UDF * 2
    assert find_probe_sites(code, A64, "arm64") == ProbeSites(A64, (A64 + 4,), None)


def test_arm64_tail_jump_and_never_returns():
    tail = w(0xF9400000, 0x14001000)  # ldr x0, [x0]; b +0x4000 (outside)
    assert find_probe_sites(tail + UDF, A64, "arm64").reason == REASON_TAIL_JUMP
    panics = w(0x94000000, 0xD503201F)  # bl gopanic; nop
    assert find_probe_sites(panics + UDF, A64, "arm64").reason == REASON_NEVER_RETURNS
    conditional_out = w(0x54008000, RET)  # b.eq +0x1000; ret
    assert find_probe_sites(conditional_out, A64, "arm64").reason is None


# --- real binaries against objdump --------------------------------------------

PROGRAM = Path(__file__).parent / "fixtures" / "sites" / "prog"
CACHE = Path(os.environ.get("GOTRACE_CACHE", "/var/cache/gotrace")) / "sites-test"
TOOLCHAINS = {
    "1.19": Path("/usr/bin/go"),
    "1.23.9": CACHE.parent / "toolchains" / "go-1.23.9" / "bin" / "go",
    "1.27.3": CACHE.parent / "toolchains" / "go-1.27.3" / "bin" / "go",
}
OBJDUMP = {"amd64": "objdump", "arm64": "llvm-objdump"}
BRANCH = {"amd64": "jbe", "arm64": "b.ls"}


def _go_env(arch: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "CGO_"))}
    env.update(GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOPROXY="off", GOOS="linux", GOARCH=arch, CGO_ENABLED="0")
    env.setdefault("HOME", "/root")
    return env


@lru_cache(maxsize=None)
def built(version: str, arch: str) -> Path:
    """The fixture program built with Go `version` for `arch`, cached by source digest."""
    go = TOOLCHAINS[version]
    if not go.exists():
        pytest.skip(f"Go {version} toolchain not installed at {go} (scripts/toolchains {version} installs it)")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(PROGRAM.iterdir()))).hexdigest()[:12]
    out = CACHE / f"prog-{version}-{arch}-{digest}"
    if out.is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            tmp = out.with_suffix(f".tmp{os.getpid()}")
            proc = subprocess.run(
                [str(go), "build", "-buildvcs=false", "-o", str(tmp), "."],
                cwd=PROGRAM, env=_go_env(arch), capture_output=True, text=True, timeout=600,
            )
            assert proc.returncode == 0, f"go {version} build for {arch} failed:\n{proc.stderr}"
            os.replace(tmp, out)
    return out


@lru_cache(maxsize=None)
def functions(path: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (entry vaddr, bytes up to the next function symbol), from .symtab (as the pclntab extent would be)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        text = elf.get_section_by_name(".text")
        lo, data = text["sh_addr"], text.data()
        syms = {
            (sym["st_value"], sym.name)
            for sym in elf.get_section_by_name(".symtab").iter_symbols()
            if sym["st_info"]["type"] == "STT_FUNC" and lo <= sym["st_value"] < lo + len(data)
        }
    starts = sorted({vaddr for vaddr, _ in syms} | {lo + len(data)})
    result = {}
    for vaddr, name in syms:
        end = starts[bisect_right(starts, vaddr)]
        result[name] = (vaddr, data[vaddr - lo : end - lo])
    return result


@lru_cache(maxsize=None)
def objdump(path: Path, arch: str) -> dict[int, tuple[str, list[tuple[int, str, str]]]]:
    """entry vaddr -> (name, [(vaddr, mnemonic, operands)]) from binutils objdump (amd64) or llvm-objdump (arm64)."""
    tool = OBJDUMP[arch]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed: needed to check {arch} probe sites independently of capstone")
    out = subprocess.run([tool, "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True, check=True)
    listing: dict[int, tuple[str, list[tuple[int, str, str]]]] = {}
    current: list[tuple[int, str, str]] = []
    for line in out.stdout.splitlines():
        if m := re.match(r"^([0-9a-f]+) <(.+)>:$", line):
            current = listing.setdefault(int(m.group(1), 16), (m.group(2), []))[1]
        elif m := re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)", line):
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return listing


def disassembly(path: Path, arch: str, name: str) -> list[tuple[int, str, str]]:
    """objdump's instructions of function `name`."""
    return objdump(path, arch)[functions(path)[name][0]][1]


TARGETS = [pytest.param(v, a, id=f"go{v}-{a}") for v in TOOLCHAINS for a in ("amd64", "arm64")]


GUARD = {"amd64": "0x10(%r14)", "arm64": "x16, [x28, #16]"}  # g.stackguard0 as objdump prints it


def objdump_entry_site(listing: list[tuple[int, str, str]], arch: str) -> int | None:
    """The instruction after the stack check's final conditional branch, as objdump decodes it; None if no check."""
    head = listing[:10]
    if not any(GUARD[arch] in operands for _, _, operands in head[:5]):
        return None
    mnemonics = [mnemonic for _, mnemonic, _ in head]
    if BRANCH[arch] not in mnemonics:
        return None
    return head[mnemonics.index(BRANCH[arch]) + 1][0]


def objdump_rets(listing: list[tuple[int, str, str]]) -> tuple[int, ...]:
    return tuple(vaddr for vaddr, mnemonic, _ in listing if mnemonic in ("ret", "retq"))


@pytest.mark.parametrize("version, arch", TARGETS)
def test_prologue_functions_match_objdump(version, arch):
    path = built(version, arch)
    funcs = functions(path)
    for name in ("main.multiRet", "main.mediumFrame", "main.hugeFrame", "main.bigFrame", "main.Outer.Get"):
        vaddr, code = funcs[name]
        listing = disassembly(path, arch, name)
        sites = find_probe_sites(code, vaddr, arch, name=name)
        assert sites.entry_vaddr == objdump_entry_site(listing, arch), name
        assert sites.entry_vaddr > vaddr, name
        assert sites.return_vaddrs == objdump_rets(listing), name
        assert sites.reason is None, name
    assert len(find_probe_sites(*reversed(funcs["main.multiRet"]), arch).return_vaddrs) == 3


@pytest.mark.parametrize("version, arch", TARGETS)
def test_leaf_and_panic_only_functions(version, arch):
    path = built(version, arch)
    funcs = functions(path)

    vaddr, code = funcs["main.leaf"]
    rets = objdump_rets(disassembly(path, arch, "main.leaf"))
    assert len(rets) == 1
    assert find_probe_sites(code, vaddr, arch) == ProbeSites(vaddr, rets, None)

    vaddr, code = funcs["main.onlyPanic"]
    sites = find_probe_sites(code, vaddr, arch)
    assert sites.reason == REASON_NEVER_RETURNS
    assert sites.entry_vaddr == objdump_entry_site(disassembly(path, arch, "main.onlyPanic"), arch)


@pytest.mark.parametrize("version, arch", TARGETS)
def test_promoted_method_wrapper(version, arch):
    """(*Outer).Get forwards to the embedded *Inner: a tail jump, except in Go 1.20-1.23 whose wrappers call."""
    path = built(version, arch)
    vaddr, code = functions(path)["main.(*Outer).Get"]
    listing = disassembly(path, arch, "main.(*Outer).Get")
    sites = find_probe_sites(code, vaddr, arch)
    if version in ("1.19", "1.27.3"):
        assert objdump_rets(listing) == ()  # the fixture does hold a tail-jump wrapper
    if objdump_rets(listing) == ():
        assert sites == ProbeSites(vaddr, (), REASON_TAIL_JUMP)
    else:
        assert sites.return_vaddrs == objdump_rets(listing)
        assert sites.reason is None


@pytest.mark.parametrize("version, arch", TARGETS)
def test_every_function_matches_objdump(version, arch):
    """All ~1500-1900 functions of the binary, runtime assembly included: the same rets, padding gives none,
    and the entry site is after the stack check wherever objdump shows one."""
    path = built(version, arch)
    listing = objdump(path, arch)
    wrong_rets, wrong_entry, checked = [], [], 0
    for vaddr, code in set(functions(path).values()):
        sites = find_probe_sites(code, vaddr, arch)
        name, insns = listing[vaddr]
        if sites.return_vaddrs != objdump_rets(insns):
            wrong_rets.append(name)
        expected_entry = objdump_entry_site(insns, arch)
        if sites.reason != REASON_ABI0 and expected_entry is not None:
            checked += 1
            if sites.entry_vaddr != expected_entry:
                wrong_entry.append(name)
    assert wrong_rets == []
    assert wrong_entry == []
    assert len(listing) > 1000
    assert checked > 700


@pytest.mark.parametrize("version, arch", TARGETS)
def test_assembly_functions_are_flagged(version, arch):
    """What .symtab calls `NAME.abi0` is assembly to gotrace from pclntab and the code alone:
    pclntab's assembly flag, or (amd64) ABI0 wrappers that load g from TLS. arm64 ABI0
    wrappers keep g in R28 like Go code and are not told apart."""
    from gotrace.binary.functab import normalize_name
    from gotrace.binary.gobinary import GoBinary

    path = built(version, arch)
    abi0 = {vaddr: name for name, (vaddr, _) in functions(path).items() if name.endswith(".abi0")}
    assert len(abi0) > 50
    with GoBinary.open(path) as gobin:
        table = gobin.functions
        by_entry = {table.entries[i]: table.function(i) for i in range(len(table))}
        flagged = 0
        for vaddr, name in abi0.items():
            fn = by_entry[vaddr]
            assert normalize_name(fn.name) == normalize_name(name), name  # listed under pclntab's name
            flagged += fn.is_asm
            if arch == "amd64" or fn.is_asm:
                assert gobin.is_assembly(fn), name
                assert gobin.probe_sites(fn).reason in (REASON_ASM, REASON_ABI0), name
        assert flagged > 50
