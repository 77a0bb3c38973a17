"""Find where to put uprobes in one Go function: the entry after its stack-check prologue and every return.

Pure analysis of machine code: the caller hands over the function's bytes (from
its entry up to the next function, padding included) and its entry vaddr; this
module disassembles them with capstone and says

* ``entry_vaddr``: the instruction right after the stack-check prologue
  (``jbe``/``b.ls`` to the morestack stub), so that a stack growth, which
  re-runs the prologue, does not fire the entry probe twice; the first
  instruction for NOSPLIT functions that have no prologue;
* ``return_vaddrs``: every return instruction (never a byte scan for 0xC3);
* ``reason``: why latency cannot be measured (assembly code that does not
  hold the goroutine register, no return instruction, a site the kernel will
  not probe: see gotrace.binary.uprobe_insn), or None;
* ``refused``: the sites the kernel will not probe, each with why. Such a
  function is not traceable rather than probed elsewhere: moving an entry
  probe past a `lock xadd` or `lock cmpxchg` would let it see registers the
  instruction has already written (the arguments `args` reads).

When several reasons apply, the first of this order is given: assembly
(pclntab's flag, or ABI0 code found by what it does), a prologue without its
stub, the runtime's g-switching assembly listed below, bytes that do not
disassemble, no return instruction, a refused site.
Only pclntab and the machine code decide: a stripped build and its twin get
the same answer.

Layout of the prologues Go emits (cmd/internal/obj stacksplit) [checked on
every function of binaries from Go 1.19, 1.21, 1.23 to 1.27, amd64 and arm64,
and on a 52 MB Go 1.26 binary]:

amd64, g in R14 (ABIInternal)::

    small frame:  cmp rsp, [r14+0x10]                                   ; jbe STUB
    frame <= 4K:  lea r12, [rsp-N]; cmp r12, [r14+0x10]                 ; jbe STUB
    huge frame:   mov r12, rsp; sub r12, N; jb STUB; cmp r12, [r14+0x10]; jbe STUB

arm64, g in R28::

    ldr x16, [x28, #0x10], then
    small frame:  cmp sp, x16                                           ; b.ls STUB
    frame <= 4K:  sub x17, sp, #N; cmp x17, x16                         ; b.ls STUB
    huge frame:   subs x17, sp, #N; b.lo STUB; cmp x17, x16             ; b.ls STUB
      or          mov x27, #N; movk x27, ...; subs x17, sp, x27; b.lo STUB;
                  cmp x17, x16                                          ; b.ls STUB

STUB spills the argument registers, calls runtime.morestack* and jumps back to
the entry; a match is only accepted when the stub does that. ABI0 code on
amd64 (assembly, and the ABI0-to-Go wrappers) finds g through thread-local
storage (``fs:[-8]``, or ``fs:[reg]`` with reg = -8 in PIE and external
links) instead: R14 means nothing there.

Known limit: a linear sweep cannot tell data embedded in code from
instructions. Bytes that do not decode on amd64 make the function untraceable
(REASON_UNDECODABLE); on arm64 they are stepped over (Go up to 1.21 puts
literal pools after the code).
"""

from __future__ import annotations

import bisect
import ctypes
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import capstone
from capstone import arm64 as _arm64
from capstone import x86 as _x86

from gotrace.binary.uprobe_insn import refusal
from gotrace.errors import BinaryError

__all__ = ["ProbeSites", "find_probe_sites"]


@dataclass(frozen=True)
class ProbeSites:
    """Probe sites of one function; `reason` is None when its latency can be traced."""

    entry_vaddr: int | None
    return_vaddrs: tuple[int, ...]
    reason: str | None
    refused: tuple[tuple[int, str], ...] = ()   # (site vaddr, why) of sites the kernel will not probe

    @property
    def entry_refused(self) -> bool:
        return self.entry_refusal is not None

    @property
    def entry_refusal(self) -> str | None:
        """Why the kernel will not probe the entry site, as funcs says it; None when it will."""
        for vaddr, why in self.refused:
            if vaddr == self.entry_vaddr:
                return f"the kernel refuses a uprobe on its entry instruction ({why})"
        return None


REASON_NEVER_RETURNS = "no return instruction (never returns)"
REASON_TAIL_JUMP = "no return instruction (tail jump to another function)"
REASON_INDIRECT_JUMP = "no return instruction (ends in an indirect jump)"
REASON_ASM = "assembly function (no goroutine register guarantee)"
REASON_ABI0 = "assembly function without the goroutine register"
REASON_UNDECODABLE = "contains bytes that do not disassemble (data in code?)"
REASON_EMPTY = "no instructions"
REASON_BAD_STUB = "stack-check prologue without its morestack stub"

# Runtime assembly that runs on the system stack, on a signal stack, before a
# goroutine exists or while switching goroutines, listed by their pclntab
# names. Some are ABIInternal wrappers that pclntab does not flag as assembly.
# Deliberately short: a NOSPLIT Go function without prologue is traceable.
_RUNTIME_ASM_WITHOUT_G = frozenset(
    {
        "_rt0_amd64",
        "_rt0_amd64_linux",
        "_rt0_arm64",
        "_rt0_arm64_linux",
        "crosscall2",
        "gogo",
        "gosave_systemstack_switch",
        "runtime.asmcgocall",
        "runtime.asmcgocall_no_g",
        "runtime.asminit",
        "runtime.cgocallback",
        "runtime.cgoSigtramp",
        "runtime.clone",
        "runtime.gogo",
        "runtime.goexit",
        "runtime.gosave_systemstack_switch",
        "runtime.mcall",
        "runtime.morestack",
        "runtime.morestack_noctxt",
        "runtime.mstart",
        "runtime.rt0_go",
        "runtime.setg_gcc",
        "setg_gcc",
        "runtime.settls",
        "runtime.sigreturn",
        "runtime.sigreturn__sigaction",
        "runtime.sigtramp",
        "runtime.systemstack",
        "runtime.systemstack_switch",
    }
)

_PROLOGUE_MAX_INSNS = 10  # the longest prologue (arm64 huge frame) has 9 instructions, then the entry site


class _Arch:
    """Per-architecture constants and a reusable capstone handle."""

    def __init__(
        self, name: str, cs_arch: int, cs_mode: int, ret_ids, call_ids, jump_ids, padding_bytes, prologue_starts
    ):
        self.name = name
        self.md = capstone.Cs(cs_arch, cs_mode)
        self.md.detail = False
        self.ret_ids = frozenset(ret_ids)
        self.call_ids = frozenset(call_ids)
        self.jump_ids = frozenset(jump_ids)  # jumps; on arm64 also b.cond: see _is_unconditional_jump
        self.padding_bytes = padding_bytes  # what fills the gap to the next function
        self.prologue_starts = prologue_starts  # encodings a stack-check prologue can start with


_ARCHES: dict[str, _Arch] = {}


def _arch(arch: str) -> _Arch:
    found = _ARCHES.get(arch)
    if found is not None:
        return found
    if arch == "amd64":
        found = _Arch(
            "amd64",
            capstone.CS_ARCH_X86,
            capstone.CS_MODE_64,
            ret_ids=(_x86.X86_INS_RET,),
            call_ids=(_x86.X86_INS_CALL,),
            jump_ids=(_x86.X86_INS_JMP,),
            padding_bytes=b"\xcc\x00",  # INT3 from Go's linker; zeros from other linkers
            # cmp rsp, [r14+0x10] / lea r12, [rsp+disp8] / lea r12, [rsp+disp32] / mov r12, rsp
            prologue_starts=(b"\x49\x3b\x66\x10", b"\x4c\x8d\x64\x24", b"\x4c\x8d\xa4\x24", b"\x49\x89\xe4"),
        )
    elif arch == "arm64":
        found = _Arch(
            "arm64",
            capstone.CS_ARCH_ARM64,
            capstone.CS_MODE_ARM,
            ret_ids=(_arm64.ARM64_INS_RET,),
            call_ids=(_arm64.ARM64_INS_BL, _arm64.ARM64_INS_BLR),
            jump_ids=(_arm64.ARM64_INS_B, _arm64.ARM64_INS_BR),  # B also covers b.cond: see _jump_target
            padding_bytes=b"\x00",
            prologue_starts=(b"\x90\x0b\x40\xf9",),  # ldr x16, [x28, #16]
        )
    else:
        raise BinaryError(f"unsupported architecture {arch!r}: gotrace reads amd64 and arm64 Go binaries only")
    _ARCHES[arch] = found
    return found


# ---------------------------------------------------------------------------
# Bulk decoding.
#
# Capstone's Python iterators build one object (or tuple of strings) per
# instruction. Only the id and address of each instruction are needed, plus
# the text of the first few (the prologue), so one cs_disasm call per
# function fills capstone's C array of cs_insn and the fields are read out of
# it with strided memoryview casts: about twice the instructions per second
# of disasm_lite. Falls back to the ordinary API when the struct layout is
# not the expected one.

_Insn = tuple[int, int, str, str]  # (vaddr, size, mnemonic, operands), as disasm_lite gives


@dataclass(frozen=True)
class _Layout:
    stride: int
    id: int
    address: int
    size: int
    mnemonic: int
    op_str: int


def _insn_layout() -> _Layout | None:
    """Where cs_insn keeps its fields, if the fast path can read them."""
    insn = getattr(capstone, "_cs_insn", None)
    if insn is None or not hasattr(getattr(capstone, "_cs", None), "cs_disasm"):
        return None
    fields = dict(getattr(insn, "_fields_", ()))
    widths = {"id": 4, "address": 8, "size": 2}
    if any(name not in fields or ctypes.sizeof(fields[name]) != width for name, width in widths.items()):
        return None
    if "mnemonic" not in fields or "op_str" not in fields:
        return None
    stride = ctypes.sizeof(insn)
    if stride % 8 or any(getattr(insn, name).offset % width for name, width in widths.items()):
        return None
    return _Layout(
        stride=stride,
        id=insn.id.offset,
        address=insn.address.offset,
        size=insn.size.offset,
        mnemonic=insn.mnemonic.offset,
        op_str=insn.op_str.offset,
    )


_LAYOUT = _insn_layout()


@dataclass
class _Decoded:
    ids: list[int]  # capstone instruction ids
    vaddrs: list[int]  # ascending
    end: int  # bytes decoded from the start, up to the first undecodable byte
    head: Sequence[_Insn]  # the first _PROLOGUE_MAX_INSNS instructions, with their text


def _decode(a: _Arch, code: bytes, vaddr: int) -> _Decoded:
    """Linear sweep over the function.

    On arm64 instructions are 4 bytes and aligned, so a word capstone cannot
    decode (literal-pool data: Go up to 1.21 puts pools after the code) is
    stepped over instead of ending the sweep.
    """
    decoded = _sweep(a, code, vaddr)
    if a.name == "arm64":
        while decoded.end + 4 <= len(code):
            skip_to = decoded.end + 4
            more = _sweep(a, code[skip_to:], vaddr + skip_to)
            decoded.ids += more.ids
            decoded.vaddrs += more.vaddrs
            decoded.end = skip_to + more.end
    return decoded


def _sweep(a: _Arch, code: bytes, vaddr: int) -> _Decoded:
    """Decode from the start of `code` until its end or the first undecodable byte."""
    layout = _LAYOUT
    if layout is None:
        return _sweep_slow(a, code, vaddr)
    insns = ctypes.POINTER(capstone._cs_insn)()
    count = capstone._cs.cs_disasm(a.md.csh, code, len(code), vaddr, 0, ctypes.byref(insns))
    if count <= 0:
        return _Decoded([], [], 0, [])
    try:
        raw = memoryview(ctypes.string_at(insns, count * layout.stride))
    finally:
        capstone._cs.cs_free(insns, count)
    ids = raw.cast("I")[layout.id // 4 :: layout.stride // 4].tolist()
    vaddrs = raw.cast("Q")[layout.address // 8 :: layout.stride // 8].tolist()
    sizes = raw.cast("H")[layout.size // 2 :: layout.stride // 2]
    head = _TextOnDemand(raw, layout, vaddrs, sizes, min(count, _PROLOGUE_MAX_INSNS), {})
    return _Decoded(ids, vaddrs, vaddrs[-1] + sizes[count - 1] - vaddr, head)


class _TextOnDemand(Sequence):
    """The first instructions of a cs_insn array as disasm_lite tuples, their text read only when asked for.

    Most functions are recognised, or rejected, on their first few
    instructions: reading the text of all ten costs more than matching.
    """

    def __init__(self, raw: memoryview, layout: _Layout, vaddrs: list[int], sizes, count: int, cache: dict):
        self._raw, self._layout, self._vaddrs, self._sizes = raw, layout, vaddrs, sizes
        self._count, self._cache = count, cache

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, k):
        if isinstance(k, slice):
            start, stop, step = k.indices(self._count)
            if start != 0 or step != 1:
                raise ValueError("only head slices [:n] are supported")
            return _TextOnDemand(self._raw, self._layout, self._vaddrs, self._sizes, stop, self._cache)
        if not 0 <= k < self._count:
            raise IndexError(k)
        insn = self._cache.get(k)
        if insn is None:
            layout = self._layout
            block = self._cache.get("block")
            if block is None:  # one copy of the head's structs, then plain bytes searches
                block = self._cache["block"] = self._raw[: _PROLOGUE_MAX_INSNS * layout.stride].tobytes()
            mnemonic_at = k * layout.stride + layout.mnemonic
            operands_at = k * layout.stride + layout.op_str
            insn = (
                self._vaddrs[k],
                self._sizes[k],
                block[mnemonic_at : block.index(b"\0", mnemonic_at)].decode(),
                block[operands_at : block.index(b"\0", operands_at)].decode(),
            )
            self._cache[k] = insn
        return insn


def _sweep_slow(a: _Arch, code: bytes, vaddr: int) -> _Decoded:
    decoded = _Decoded([], [], 0, [])
    for insn in a.md.disasm(code, vaddr):
        decoded.ids.append(insn.id)
        decoded.vaddrs.append(insn.address)
        decoded.end = insn.address + insn.size - vaddr
        if len(decoded.head) < _PROLOGUE_MAX_INSNS:
            decoded.head.append((insn.address, insn.size, insn.mnemonic, insn.op_str))
    return decoded


def _indices(ids: list[int], wanted: frozenset[int], stop: int) -> list[int]:
    """Positions in ids[:stop] holding one of `wanted` (list.index runs in C)."""
    found = []
    for wanted_id in wanted:
        pos = 0
        while True:
            try:
                pos = ids.index(wanted_id, pos, stop)
            except ValueError:
                break
            found.append(pos)
            pos += 1
    found.sort()
    return found


def _jump_target(a: _Arch, code: bytes, offset: int, insn_vaddr: int) -> int | None:
    """Target vaddr of the unconditional direct jump at `offset`; None if indirect or conditional."""
    if a.name == "amd64":
        op = code[offset]
        if op == 0xEB:
            return insn_vaddr + 2 + struct.unpack_from("<b", code, offset + 1)[0]
        if op == 0xE9:
            return insn_vaddr + 5 + struct.unpack_from("<i", code, offset + 1)[0]
        return None
    (word,) = struct.unpack_from("<I", code, offset)
    if word & 0xFC000000 == 0x14000000:  # B imm26
        imm26 = word & 0x03FFFFFF
        if imm26 & 0x02000000:
            imm26 -= 1 << 26
        return insn_vaddr + imm26 * 4
    return None


def _is_unconditional_jump(a: _Arch, code: bytes, offset: int, insn_id: int) -> bool:
    if insn_id not in a.jump_ids:
        return False
    if a.name == "arm64" and insn_id == _arm64.ARM64_INS_B:
        (word,) = struct.unpack_from("<I", code, offset)
        return word & 0xFC000000 == 0x14000000  # not b.cond
    return True


def _real_code_stop(a: _Arch, code: bytes, vaddrs: list[int], vaddr: int) -> int:
    """Number of instructions before the trailing padding (INT3 or zero fill).

    An instruction that the padding bytes only partly cover is real code
    (a jump whose displacement ends in 00 bytes, say).
    """
    return bisect.bisect_left(vaddrs, vaddr + len(code.rstrip(a.padding_bytes)))


def _only_padding(a: _Arch, tail: bytes) -> bool:
    return not tail.strip(a.padding_bytes) or (a.name == "arm64" and len(tail) < 4)


# ---------------------------------------------------------------------------
# Prologue matching on capstone's Intel / ARM syntax text. Registers and the
# g.stackguard0 offset (0x10) are spelled out: nothing else matches.

_NUM = r"(?:0x[0-9a-f]+|\d+)"  # capstone writes 0..9 in decimal
_TARGET = r"(?P<target>0x[0-9a-f]+|\d+)"
_AMD64_GUARD_CMP = r"qword ptr \[r14 \+ 0x10\]"  # g.stackguard0, g in R14


def _insn(mnemonic: str, operands: str) -> tuple[str, re.Pattern]:
    return mnemonic, re.compile(operands)


# Instructions before the final jbe / b.ls, one list per frame-size variant.
_AMD64_CHECKS = (
    [_insn("cmp", r"rsp, " + _AMD64_GUARD_CMP)],
    [_insn("lea", r"r12, \[rsp - " + _NUM + r"\]"), _insn("cmp", r"r12, " + _AMD64_GUARD_CMP)],
    [
        _insn("mov", r"r12, rsp"),
        _insn("sub", r"r12, " + _NUM),
        _insn("jb", _TARGET),
        _insn("cmp", r"r12, " + _AMD64_GUARD_CMP),
    ],
)
_AMD64_BRANCH = _insn("jbe", _TARGET)
# ABI0 code finds g through thread-local storage: a prologue that loads it
# from fs:[-8], or an ABI0-to-ABIInternal wrapper that sets R14 from there.
_FS_PREFIX = b"\x64"  # every fs:[...] access has it: a cheap test before reading instruction text
# Go code touches fs only for g: at fs:[-8], or fs:[reg] holding -8 (PIE, external linking).
_AMD64_TLS_G = re.compile(
    r"r[a-z0-9]+, qword ptr fs:\[(?:0xfffffffffffffff8|r[a-z0-9]+)\]"
    r"|qword ptr fs:\[(?:0xfffffffffffffff8|r[a-z0-9]+)\], r[a-z0-9]+"
)

_ARM64_LOAD_GUARD = _insn("ldr", r"x16, \[x28, #0x10\]")  # g.stackguard0, g in R28
_ARM64_IMM = r"#" + _NUM + r"(?:, lsl #12)?"
_ARM64_MOVK_X27 = _insn("movk", r"x27, #" + _NUM + r", lsl #(?:16|32|48)")
_ARM64_CHECKS = (
    [_ARM64_LOAD_GUARD, _insn("cmp", r"sp, x16")],
    [_ARM64_LOAD_GUARD, _insn("sub", r"x17, sp, " + _ARM64_IMM), _insn("cmp", r"x17, x16")],
    [
        _ARM64_LOAD_GUARD,
        _insn("subs", r"x17, sp, " + _ARM64_IMM),
        _insn("b.lo", "#" + _TARGET),
        _insn("cmp", r"x17, x16"),
    ],
) + tuple(
    # Frame size too big for an immediate: built in x27 with movz and movk.
    [_ARM64_LOAD_GUARD, _insn("mov", r"x27, #" + _NUM)]
    + [_ARM64_MOVK_X27] * movks
    + [_insn("subs", r"x17, sp, x27"), _insn("b.lo", "#" + _TARGET), _insn("cmp", r"x17, x16")]
    for movks in range(4)
)
_ARM64_BRANCH = _insn("b.ls", "#" + _TARGET)


@dataclass(frozen=True)
class _Prologue:
    after_vaddr: int  # first instruction after the stack check
    stub_vaddrs: tuple[int, ...]  # targets of its conditional branches


def _match_prologue(insns: Sequence[_Insn], checks, branch) -> _Prologue | None:
    """The stack-check prologue at the start of `insns` (capstone disasm_lite tuples), or None."""
    for check in checks:
        patterns = [*check, branch]
        if len(insns) <= len(patterns):  # the prologue must be followed by code
            continue
        targets = []
        for k, (want_mnemonic, want_operands) in enumerate(patterns):
            _, _, mnemonic, operands = insns[k]
            found = want_operands.fullmatch(operands) if mnemonic == want_mnemonic else None
            if found is None:
                break
            if "target" in want_operands.groupindex:
                targets.append(int(found.group("target"), 0))
        else:
            return _Prologue(insns[len(patterns)][0], tuple(targets))
    return None


def _may_start_prologue(a: _Arch, code: bytes) -> bool:
    """Cheap test on the first bytes; the text match in _match_prologue decides."""
    return code.startswith(a.prologue_starts)


def _loads_g_from_tls(a: _Arch, code: bytes, ids: list[int], vaddrs: list[int], stop: int, entry_vaddr: int) -> bool:
    """True if the code reads or sets g in TLS before its first call (Go code reloads R14
    only after calls; an ABI0 wrapper first copies up to ~20 stack arguments into registers)."""
    calls = _indices(ids, a.call_ids, stop)
    end = vaddrs[calls[0]] - entry_vaddr if calls else len(code)
    if _FS_PREFIX not in code[:end]:
        return False
    for _, _, mnemonic, operands in a.md.disasm_lite(code[:end], entry_vaddr):
        if mnemonic == "mov" and _AMD64_TLS_G.fullmatch(operands):
            return True
    return False


def _stub_returns_to_entry(
    a: _Arch, code: bytes, ids: list[int], vaddrs: list[int], stop: int, entry_vaddr: int, stub_vaddr: int
) -> bool:
    """True if the code at stub_vaddr calls something (morestack) and then jumps back to the entry."""
    at = bisect.bisect_left(vaddrs, stub_vaddr, 0, stop)
    if at >= stop or vaddrs[at] != stub_vaddr:
        return False
    called = False
    for pos in range(at, min(stop, at + 128)):  # spills + reloads of up to 24 argument registers
        insn_id = ids[pos]
        if insn_id in a.call_ids:
            called = True
        elif insn_id in a.ret_ids:
            return False
        elif _is_unconditional_jump(a, code, vaddrs[pos] - entry_vaddr, insn_id):
            target = _jump_target(a, code, vaddrs[pos] - entry_vaddr, vaddrs[pos])
            return called and target == entry_vaddr
    return False


def _no_return_reason(a: _Arch, code: bytes, ids: list[int], vaddrs: list[int], stop: int, entry_vaddr: int) -> str:
    code_end_vaddr = entry_vaddr + len(code)
    indirect = False
    for pos in _indices(ids, a.jump_ids, stop):
        offset = vaddrs[pos] - entry_vaddr
        if not _is_unconditional_jump(a, code, offset, ids[pos]):
            continue
        target = _jump_target(a, code, offset, vaddrs[pos])
        if target is None:
            indirect = True
        elif not entry_vaddr <= target < code_end_vaddr:
            return REASON_TAIL_JUMP
    return REASON_INDIRECT_JUMP if indirect else REASON_NEVER_RETURNS


def _refused_sites(a: _Arch, code: bytes, entry_vaddr: int, sites) -> tuple[tuple[int, str], ...]:
    """(vaddr, why) of each of `sites` whose instruction the kernel will not probe."""
    refused = []
    for vaddr in sites:
        offset = vaddr - entry_vaddr
        why = refusal(a.name, code[offset:offset + 15])
        if why is not None:
            refused.append((vaddr, why))
    return tuple(refused)


def _refusal_reason(refused: tuple[tuple[int, str], ...], entry_vaddr: int, entry_site: int) -> str:
    vaddr, why = refused[0]
    if vaddr == entry_site:
        return f"the kernel refuses a uprobe on its entry instruction ({why})"
    return f"the kernel refuses a uprobe on its return at +{vaddr - entry_vaddr:#x} ({why})"


def find_probe_sites(code: bytes, entry_vaddr: int, arch: str, *, name: str = "", is_asm: bool = False) -> ProbeSites:
    """Entry and return probe sites of the function whose bytes start at `entry_vaddr`.

    `code` runs from the entry to the next function (trailing INT3 or zero
    padding is ignored); `arch` is "amd64" or "arm64"; `name` is the Go name
    (pclntab's: it recognises the runtime's assembly listed above); `is_asm`
    is pclntab's assembly flag.
    """
    a = _arch(arch)
    if not isinstance(code, bytes):
        code = bytes(code)
    decoded = _decode(a, code, entry_vaddr)
    ids, vaddrs = decoded.ids, decoded.vaddrs
    stop = _real_code_stop(a, code, vaddrs, entry_vaddr)
    if stop == 0:
        return ProbeSites(None, (), REASON_EMPTY)
    head = decoded.head[:stop]
    returns = tuple(vaddrs[pos] for pos in _indices(ids, a.ret_ids, stop))

    entry_site = entry_vaddr
    refused = _refused_sites(a, code, entry_vaddr, (entry_site, *returns))
    if is_asm:
        return ProbeSites(entry_site, returns, REASON_ASM, refused)
    if a.name == "amd64" and _FS_PREFIX in code and _loads_g_from_tls(a, code, ids, vaddrs, stop, entry_vaddr):
        return ProbeSites(entry_site, returns, REASON_ABI0, refused)
    checks, branch = (_AMD64_CHECKS, _AMD64_BRANCH) if a.name == "amd64" else (_ARM64_CHECKS, _ARM64_BRANCH)
    prologue = _match_prologue(head, checks, branch) if _may_start_prologue(a, code) else None
    if prologue is not None:
        if not all(
            _stub_returns_to_entry(a, code, ids, vaddrs, stop, entry_vaddr, stub) for stub in prologue.stub_vaddrs
        ):
            return ProbeSites(entry_site, returns, REASON_BAD_STUB, refused)
        entry_site = prologue.after_vaddr
        refused = _refused_sites(a, code, entry_vaddr, (entry_site, *returns))

    if name in _RUNTIME_ASM_WITHOUT_G:
        reason: str | None = REASON_ABI0
    elif decoded.end < len(code) and not _only_padding(a, code[decoded.end :]):
        reason = REASON_UNDECODABLE
    elif not returns:
        reason = _no_return_reason(a, code, ids, vaddrs, stop, entry_vaddr)
    elif refused:
        reason = _refusal_reason(refused, entry_vaddr, entry_site)
    else:
        reason = None
    return ProbeSites(entry_site, returns, reason, refused)
