"""gotrace.binary.uprobe_insn against the kernel's rules, instruction by instruction (no kernel needed).

Each encoding is also disassembled with capstone, so that a wrong hand
encoding cannot pass for the instruction its comment names. The running
kernel's own answers are checked in tests/test_kernel_refusals.py.
"""

from __future__ import annotations

import struct

import capstone
import pytest

from gotrace.binary.uprobe_insn import refusal

X86 = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
A64 = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)


def x86(hex_bytes: str, mnemonic: str) -> bytes:
    code = bytes.fromhex(hex_bytes.replace(" ", ""))
    insn = next(X86.disasm(code, 0))
    assert insn.size == len(code) and f"{insn.mnemonic} {insn.op_str}".startswith(mnemonic), (insn.mnemonic, insn.op_str)
    return code


def a64(word: int, mnemonic: str) -> bytes:
    code = struct.pack("<I", word)
    insn = next(A64.disasm(code, 0x1000))
    assert f"{insn.mnemonic} {insn.op_str}".startswith(mnemonic), (insn.mnemonic, insn.op_str)
    return code


X86_REFUSED = [
    (x86("f0 20 18", "lock and"), "lock prefix"),
    (x86("f0 48 0f b1 0a", "lock cmpxchg"), "lock prefix"),
    (x86("f0 0f c1 08", "lock xadd"), "lock prefix"),
    (x86("2e 48 8b 00", "mov rax, qword ptr cs:"), "cs segment prefix"),
    (x86("66 2e 0f 1f 84 00 00 00 00 00", "nop word ptr cs:"), "cs segment prefix"),
    (x86("cc", "int3"), "int3"),
    (x86("cd 03", "int 3"), "int n"),
    (x86("f4", "hlt"), "hlt"),
    (x86("8e d0", "mov ss, "), "mov to ss"),
    (x86("66 e8 00 00 00 00", "call"), "branch with an operand-size prefix"),
    (x86("66 74 00", "je"), "branch with an operand-size prefix"),
    (x86("62 e1 7f 48 6f 06", "vmovdqu8 zmm16"), "EVEX-encoded opcode 0x6f"),
    (x86("c5 fe 6f 06", "vmovdqu ymm0"), "VEX-encoded opcode 0x6f"),
    (x86("c5 fd ef c0", "vpxor ymm0"), "VEX-encoded opcode 0xef"),
]

X86_ACCEPTED = [
    x86("c3", "ret"),
    x86("55", "push rbp"),
    x86("49 3b 66 10", "cmp rsp, qword ptr [r14 + 0x10]"),
    x86("48 8b 05 00 00 00 00", "mov rax, qword ptr [rip]"),   # rip-relative: rewritten by the kernel
    x86("64 4c 8b 34 25 f8 ff ff ff", "mov r14, qword ptr fs:"),  # fs and gs overrides are allowed
    x86("0f 05", "syscall"),                                 # 0F xx passes the kernel's one-byte table
    x86("c5 f8 77", "vzeroupper"),                           # VEX opcode 77 is allowed
    x86("62 f3 7d 48 25 c0 96", "vpternlogd"),               # EVEX opcode 25 is allowed
    x86("48 87 08", "xchg qword ptr [rax], rcx"),            # implicitly locked, but no prefix
    x86("e8 00 00 00 00", "call"),
    x86("66 90", "nop"),
    x86("f3 0f 1e fa", "endbr64"),
]


@pytest.mark.parametrize("code, why", X86_REFUSED)
def test_x86_refused(code, why):
    assert refusal("amd64", code + b"\x90" * 8) == why


@pytest.mark.parametrize("code", X86_ACCEPTED)
def test_x86_accepted(code):
    assert refusal("amd64", code + b"\x90" * 8) is None


@pytest.mark.parametrize("code, why", [
    (a64(0x885FFC01, "ldaxr w1, [x0]"), "exclusive load/store"),
    (a64(0xC85F7C01, "ldxr x1, [x0]"), "exclusive load/store"),
    (a64(0xC8027C01, "stxr w2, x1, [x0]"), "exclusive load/store"),
    (a64(0x58000040, "ldr x0, #"), "PC-relative literal load"),
    (a64(0x98000040, "ldrsw x0, #"), "PC-relative literal load"),
    (a64(0xD8000040, "prfm pldl1keep, #"), "PC-relative literal load"),
    (a64(0xD53BD040, "mrs x0, tpidr_el0"), "mrs (system register read)"),
    (a64(0xD51BD040, "msr tpidr_el0, x0"), "msr (system register write)"),
    (a64(0xD4000001, "svc #0"), "exception-generating instruction (svc, brk, ...)"),
    (a64(0xD4200000, "brk #0"), "exception-generating instruction (svc, brk, ...)"),
    (a64(0xD503203F, "yield"), "hint (yield, wfe, wfi, sev...)"),
    (a64(0xD503205F, "wfe"), "hint (yield, wfe, wfi, sev...)"),
    (a64(0xD65F0BFF, "retaa"), "branch"),
])
def test_arm64_refused(code, why):
    assert refusal("arm64", code) == why


@pytest.mark.parametrize("code", [
    a64(0xD65F03C0, "ret"),
    a64(0x94000000, "bl"),
    a64(0x14000000, "b"),
    a64(0x54000040, "b.eq"),
    a64(0xB4000040, "cbz x0"),
    a64(0xD63F0020, "blr x1"),
    a64(0x90000000, "adrp x0"),          # PC-relative, but simulated
    a64(0x10000000, "adr x0"),
    a64(0xD53B4220, "mrs x0, daif"),     # the one system register the kernel lets a probe read
    a64(0xD503201F, "nop"),
    a64(0xD503245F, "bti c"),
    a64(0xD5033BBF, "dmb ish"),
    a64(0xF9400B90, "ldr x16, [x28, #0x10]"),
    a64(0x88A07C41, "cas w0, w1, [x2]"),  # LSE atomics are not exclusive pairs
    a64(0x88DFFC01, "ldar w1, [x0]"),
])
def test_arm64_accepted(code):
    assert refusal("arm64", code) is None
