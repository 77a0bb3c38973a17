"""Finds out which BPF features this kernel gives this process by trying each one: a map of the type, a program calling the helper, a link of the kind.

Nothing is guessed from the kernel version (distributions backport, and
configurations, lockdown, seccomp and missing capabilities take away): each
check creates the object and closes it at once. The uprobe links are made on
a small file of our own that no process maps, so no instruction of any
running program is ever touched.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from dataclasses import dataclass

from gotrace.bpf import kernel
from gotrace.bpf.image import lockdown_mode
from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI, Syscalls, verifier_reason
from gotrace.errors import CapabilityError

_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_RINGBUF = 27


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_RETURN_0 = _insn(0xB7) + _insn(0x95)  # r0 = 0; exit
_CALL_COOKIE = _insn(0x85, imm=174) + _RETURN_0  # bpf_get_attach_cookie(ctx)
_READ_KERNEL = (_insn(0xBF, dst=1, src=10) + _insn(0x07, dst=1, imm=-8)  # r1 = fp - 8
                + _insn(0xB7, dst=2, imm=8) + _insn(0xB7, dst=3)  # r2 = 8; r3 = 0
                + _insn(0x85, imm=113) + _RETURN_0)  # bpf_probe_read_kernel(fp - 8, 8, 0)


@dataclass(frozen=True)
class Check:
    """One thing tried: whether the kernel allowed it, and why not."""

    name: str
    available: bool | None  # None: not tried, because something it needs is missing (detail says what)
    needs: str  # the Linux version that introduced it, or what it depends on
    detail: str = ""  # why it is not available ("" when it is)


@dataclass(frozen=True)
class HostFeatures:
    """What this kernel lets this process do with BPF."""

    kernel_release: str
    machine: str
    privileges: kernel.Privileges
    lockdown: str | None  # "none", "integrity", "confidentiality"; None when the kernel does not say
    bpf_syscall: Check
    ring_buffer: Check
    cookies: Check
    uprobe_multi: Check
    perf_link: Check
    probe_read_kernel: Check

    @property
    def checks(self) -> tuple[Check, ...]:
        return (self.bpf_syscall, self.cookies, self.ring_buffer, self.uprobe_multi, self.perf_link,
                self.probe_read_kernel)


def probe_host(sys: Syscalls | None = None) -> HostFeatures:
    """Try each feature on this kernel now."""
    uname = os.uname()
    privileges = kernel.privileges()
    try:
        sys = sys or Syscalls()
    except CapabilityError as exc:
        sys = None
        unsupported = str(exc)
    bpf_syscall = _check_bpf(sys) if sys else Check("bpf() system call", False, "CONFIG_BPF_SYSCALL", unsupported)
    if not bpf_syscall.available:
        skipped = f"not tried: {bpf_syscall.name} refused"
        return HostFeatures(uname.release, uname.machine, privileges, lockdown_mode(), bpf_syscall,
                            Check("ring buffer", None, "Linux 5.8", skipped),
                            Check("BPF cookies", None, "Linux 5.15", skipped),
                            Check("uprobe_multi links", None, "Linux 6.6", skipped),
                            Check("perf-event uprobe links", None, "Linux 5.15", skipped),
                            Check("bpf_probe_read_kernel", None, "Linux 5.5", skipped))
    with tempfile.TemporaryDirectory(prefix="gotrace-doctor-") as work:
        target = os.path.join(work, "probe-target")
        with open(target, "wb") as file:
            file.write(b"\x90" * 64)  # never mapped by any process: a probe here is never hit nor installed
        return HostFeatures(
            uname.release, uname.machine, privileges, lockdown_mode(), bpf_syscall,
            _check_map(sys, "ring buffer", "Linux 5.8", _BPF_MAP_TYPE_RINGBUF, os.sysconf("SC_PAGE_SIZE")),
            _check_program(sys, "BPF cookies", "Linux 5.15", _CALL_COOKIE),
            _check_uprobe_multi(sys, target),
            _check_perf_link(sys, target),
            _check_program(sys, "bpf_probe_read_kernel", "Linux 5.5; lockdown=confidentiality forbids it",
                           _READ_KERNEL),
        )


def _refusal(exc: OSError) -> str:
    log = getattr(exc, "verifier_log", "") or ""
    return verifier_reason(log) or os.strerror(exc.errno or 0)


def _check_bpf(sys: Syscalls) -> Check:
    name = "bpf() system call"
    try:
        os.close(sys.map_create(_BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, b"gt_doctor"))
    except OSError as exc:
        return Check(name, False, "CONFIG_BPF_SYSCALL, root or CAP_BPF", os.strerror(exc.errno or 0))
    return Check(name, True, "CONFIG_BPF_SYSCALL, root or CAP_BPF")


def _check_map(sys: Syscalls, name: str, needs: str, map_type: int, max_entries: int) -> Check:
    try:
        os.close(sys.map_create(map_type, 0, 0, max_entries, 0, b"gt_doctor"))
    except OSError as exc:
        return Check(name, False, needs, os.strerror(exc.errno or 0))
    return Check(name, True, needs)


def _check_program(sys: Syscalls, name: str, needs: str, insns: bytes) -> Check:
    try:
        os.close(sys.prog_load(BPF_PROG_TYPE_KPROBE, insns, b"GPL", b"gt_doctor", 0))
    except OSError as exc:
        return Check(name, False, needs, _refusal(exc))
    return Check(name, True, needs)


def _check_uprobe_multi(sys: Syscalls, target: str) -> Check:
    name, needs = "uprobe_multi links", "Linux 6.6"
    with contextlib.ExitStack() as fds:
        try:
            prog = sys.prog_load(BPF_PROG_TYPE_KPROBE, _RETURN_0, b"GPL", b"gt_doctor", BPF_TRACE_UPROBE_MULTI)
            fds.callback(os.close, prog)
            link = sys.link_create_uprobe_multi(prog, os.fsencode(target), [0], [1], 0)
            fds.callback(os.close, link)
        except OSError as exc:
            return Check(name, False, needs, _refusal(exc))
    return Check(name, True, needs)


def _check_perf_link(sys: Syscalls, target: str) -> Check:
    name, needs = "perf-event uprobe links", "Linux 5.15 (with BPF cookies), CONFIG_UPROBE_EVENTS"
    try:
        pmu_type = kernel.uprobe_pmu_type()
    except CapabilityError:
        return Check(name, False, needs, f"no uprobe PMU ({kernel.UPROBE_PMU_TYPE} is missing)")
    with contextlib.ExitStack() as fds:
        try:
            perf = sys.perf_uprobe_open(pmu_type, os.fsencode(target), 0, -1)
            fds.callback(os.close, perf)
            prog = sys.prog_load(BPF_PROG_TYPE_KPROBE, _RETURN_0, b"GPL", b"gt_doctor", 0)
            fds.callback(os.close, prog)
            fds.callback(os.close, sys.link_create_perf(prog, perf, 1))
        except OSError as exc:
            return Check(name, False, needs, _refusal(exc))
    return Check(name, True, needs)
