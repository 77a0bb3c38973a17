"""Which instructions Linux refuses to put a uprobe on, per architecture.

A uprobe replaces the probed instruction with a breakpoint and, when it
fires, runs the original instruction out of line (single-stepped in a slot
of its own) or emulates it. When it registers a probe the kernel decodes the
instruction and refuses those it cannot run that way: the uprobe (or the
whole uprobe_multi link holding it) fails with ENOTSUPP (524) on x86-64 and
EINVAL on arm64. This module answers, from the instruction's bytes alone,
whether the kernel will refuse it, and why. The rules are the kernel's
(Linux 6.x):

x86-64 (arch/x86/kernel/uprobes.c, `uprobe_init_insn` and
`branch_setup_xol_ops`):

* a `lock` (F0) or `cs`/`ds`/`es`/`ss` segment-override prefix (2E, 3E, 26, 36);
* `mov ss, r/m` (8E /2), which masks the single-step trap;
* an opcode byte the kernel's 64-bit table marks unsupported: int3 (CC),
  int n (CD), into (CE), iret (CF), in/out/ins/outs (E4-E7, EC-EF, 6C-6F),
  hlt (F4), int1 (F1), cli/sti (FA, FB), and the opcodes invalid in 64-bit
  mode (06, 07, 0E, 16, 17, 1E, 1F, 27, 2F, 37, 3F, 60-62, 82, 9A, D4-D6, EA).
  For VEX- and EVEX-encoded instructions the kernel looks up the opcode byte
  that follows the VEX/EVEX prefix in the same one-byte table, so for
  example `vmovdqu` (opcode 6F) and `vpxor` (EF) are refused while
  `vzeroupper` (77) is not. Two-byte opcodes (0F xx) always pass: the
  table allows 0F itself;
* a relative jump, call or conditional jump with an operand-size (66) prefix.

arm64 (arch/arm64/kernel/probes/decode-insn.c, `arm_probe_decode_insn`):
an instruction that can neither be single-stepped out of line nor simulated:

* exclusive loads and stores (ldxr/stxr and their acquire/release forms);
* PC-relative literal loads: `ldr`/`ldrsw`/`prfm` (literal); adr/adrp are simulated;
* `msr`, `mrs` (except reading DAIF), exception-generating instructions
  (svc, hvc, smc, brk, hlt...), `eret`;
* hints other than nop, bti and the pointer-authentication ones (so yield,
  wfe, wfi, sev, sevl are refused);
* branches the kernel does not simulate (the pointer-authenticated ones:
  retaa, braa, blraa...). b, bl, b.cond, cbz, tbz, br, blr and ret are simulated.

Checked against the running kernel by tests/test_kernel_refusals.py.
"""

from __future__ import annotations

import struct

__all__ = ["refusal", "REFUSAL_ERRNO"]

REFUSAL_ERRNO = {"amd64": 524, "arm64": 22}  # ENOTSUPP (kernel-internal), EINVAL

# -- x86-64 --------------------------------------------------------------------

_LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
_REFUSED_PREFIXES = {0xF0: "lock prefix", 0x2E: "cs segment prefix", 0x3E: "ds segment prefix",
                     0x26: "es segment prefix", 0x36: "ss segment prefix"}
_NAMED_OPCODES = {0xCC: "int3", 0xCD: "int n", 0xCE: "into", 0xCF: "iret", 0xF1: "int1", 0xF4: "hlt",
                  0xFA: "cli", 0xFB: "sti", 0x6C: "ins", 0x6D: "ins", 0x6E: "outs", 0x6F: "outs",
                  0xE4: "in", 0xE5: "in", 0xE6: "out", 0xE7: "out", 0xEC: "in", 0xED: "in",
                  0xEE: "out", 0xEF: "out"}
# One-byte opcodes the kernel's 64-bit good-instruction table refuses.
_REFUSED_OPCODES = frozenset(
    {0x06, 0x07, 0x0E, 0x16, 0x17, 0x1E, 0x1F, 0x27, 0x2F, 0x37, 0x3F, 0x60, 0x61, 0x62, 0x82, 0x9A,
     0xD4, 0xD5, 0xD6, 0xEA} | set(_NAMED_OPCODES))
_VEX_LENGTHS = {0xC5: 2, 0xC4: 3, 0x62: 4}  # prefix byte -> bytes of the VEX/EVEX prefix
_RELATIVE_BRANCHES = frozenset({0xEB, 0xE9, 0xE8, *range(0x70, 0x80)})
_MOV_TO_SEGMENT = 0x8E
_SS = 2


def _x86_refusal(insn: bytes) -> str | None:
    pos, prefixes = 0, []
    while pos < len(insn) and insn[pos] in _LEGACY_PREFIXES:
        prefixes.append(insn[pos])
        pos += 1
    for prefix in prefixes:
        if prefix in _REFUSED_PREFIXES:
            return _REFUSED_PREFIXES[prefix]
    if pos < len(insn) and 0x40 <= insn[pos] <= 0x4F:  # REX
        pos += 1
    if pos >= len(insn):
        return None
    encoding = None
    if insn[pos] in _VEX_LENGTHS:
        encoding = "EVEX" if insn[pos] == 0x62 else "VEX"
        pos += _VEX_LENGTHS[insn[pos]]
        if pos >= len(insn):
            return None
    opcode = insn[pos]
    if opcode in _REFUSED_OPCODES:
        if encoding:
            return f"{encoding}-encoded opcode {opcode:#04x}"
        return _NAMED_OPCODES.get(opcode, f"opcode {opcode:#04x} invalid in 64-bit mode")
    if encoding:
        return None
    if opcode == _MOV_TO_SEGMENT and pos + 1 < len(insn) and (insn[pos + 1] >> 3) & 7 == _SS:
        return "mov to ss"
    is_branch = opcode in _RELATIVE_BRANCHES or (
        opcode == 0x0F and pos + 1 < len(insn) and 0x80 <= insn[pos + 1] <= 0x8F)
    if is_branch and 0x66 in prefixes:
        return "branch with an operand-size prefix"
    return None


# -- arm64 ---------------------------------------------------------------------


def _is(word: int, mask: int, value: int) -> bool:
    return word & mask == value


_SIMULATED = (  # (mask, value) of what the kernel emulates instead of stepping
    (0xFF000010, 0x54000000),  # b.cond
    (0x7E000000, 0x34000000),  # cbz, cbnz
    (0x7E000000, 0x36000000),  # tbz, tbnz
    (0x1F000000, 0x10000000),  # adr, adrp
    (0x7C000000, 0x14000000),  # b, bl
    (0xFFFFFC1F, 0xD61F0000),  # br
    (0xFFFFFC1F, 0xD63F0000),  # blr
    (0xFFFFFC1F, 0xD65F0000),  # ret
)
_BRANCHES = _SIMULATED + (
    (0xFFFFFBFF, 0xD65F0BFF),  # retaa, retab
    (0xFEFFF800, 0xD61F0800),  # braa...
    (0xFEFFF800, 0xD63F0800),  # blraa...
)
_STEPPABLE_HINTS = frozenset(op << 5 for op in (0x00, 0x07, 0x08, 0x0A, 0x18, 0x19, 0x1A, 0x1B, 0x20, 0x22, 0x24, 0x26))
_SYSREG_DAIF = 0xDA11


def _arm64_unsteppable(word: int) -> str | None:
    """Why the kernel will not single-step `word` out of line, or None."""
    if _is(word, 0x1C000000, 0x14000000):  # branch, exception generation and system instructions
        if any(_is(word, mask, value) for mask, value in _BRANCHES):
            return "branch"
        if _is(word, 0xFFF8F01F, 0xD500401F) or _is(word, 0xFFF00000, 0xD5100000):
            return "msr (system register write)"
        if _is(word, 0xFF000000, 0xD4000000):
            return "exception-generating instruction (svc, brk, ...)"
        if _is(word, 0xFFFFFFFF, 0xD69F03E0) or _is(word, 0xFFFFFBFF, 0xD69F0BFF):
            return "eret"
        if _is(word, 0xFFF00000, 0xD5300000):
            return None if (word & 0x1FFFE0) >> 5 == _SYSREG_DAIF else "mrs (system register read)"
        if _is(word, 0xFFFFF01F, 0xD503201F):
            return None if word & 0xFE0 in _STEPPABLE_HINTS else "hint (yield, wfe, wfi, sev...)"
        return None
    if _is(word, 0xBF000000, 0x18000000) or _is(word, 0xFF000000, 0x98000000) or _is(word, 0xFF000000, 0xD8000000):
        return "PC-relative literal load"
    if _is(word, 0x1F000000, 0x10000000):
        return "adr/adrp"
    if _is(word, 0x3F800000, 0x08000000):
        return "exclusive load/store"
    return None


def _arm64_refusal(insn: bytes) -> str | None:
    if len(insn) < 4:
        return None
    (word,) = struct.unpack_from("<I", insn)
    why = _arm64_unsteppable(word)
    if why is None or any(_is(word, mask, value) for mask, value in _SIMULATED):
        return None
    return why


def refusal(arch: str, insn: bytes) -> str | None:
    """Why the kernel refuses a uprobe on the instruction starting `insn`, or None
    when it accepts it. `insn` may run past the instruction (15 bytes on amd64, 4 on arm64 suffice)."""
    if arch == "amd64":
        return _x86_refusal(insn)
    if arch == "arm64":
        return _arm64_refusal(insn)
    raise ValueError(f"unsupported architecture {arch!r}")
