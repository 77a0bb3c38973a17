"""Loads probes/args.bpf.c, gives it each function's capture plan, attaches it at entry and return sites, and delivers completed calls from the ring buffer.

The BPF side (probes/args.bpf.c, layouts in probes/gotrace.h "args") reads
what the plans say at entry and at `ret`, pairs the two by goroutine as
latency does, and sends one record per completed call. This module knows
nothing of Go values: records come out as `CallRecord`s of raw bytes, which
gotrace.capture.values decodes. Attaching (uprobe_multi links, or perf-event links on
older kernels) is gotrace.bpf.uprobes' job.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gotrace.bpf import compiler as bpfprog
from gotrace import header as probes_header
from gotrace.bpf import uprobes
from gotrace.errors import UsageError

SOURCE_PATH = probes_header.PROBES_DIR / "args.bpf.c"


STAT_NAMES = {
    "GT_ASTAT_NO_GOROUTINE": "no_goroutine",
    "GT_ASTAT_READ_FAULT": "read_faults",
    "GT_ASTAT_RETURNS_WITHOUT_ENTRY": "returns_without_entry",
    "GT_ASTAT_STALE_ENTRIES": "stale_entries",
    "GT_ASTAT_PENDING_FAILED": "pending_update_failed",
    "GT_ASTAT_RINGBUF_FULL": "dropped_ringbuf_full",
    "GT_ASTAT_RATE_LIMITED": "dropped_rate_limit",
    "GT_ASTAT_EVENTS": "events",
}


def _const(name: str) -> int:
    return probes_header.constant(name)


# struct gt_arg_op / gt_arg_plan / gt_args_event of probes/gotrace.h.
OP_STRUCT = struct.Struct("<BBBBHHHHi")
_PLAN_HEADER = struct.Struct("<II")
_EVENT_HEADER = struct.Struct("<QQQQIIIIII")


@dataclass(frozen=True)
class ArgsFunction:
    """One function to trace: id, probe sites (ELF vaddrs) and its two plans as packed operations."""

    func_id: int
    name: str
    entry_vaddr: int
    return_vaddrs: tuple[int, ...]
    entry_ops: tuple[tuple[int, ...], ...]   # each: (kind, reg, shift, dep, dst, size, src, len_src, offset)
    return_ops: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class CallRecord:
    """One completed call as the BPF side sent it: raw buffers and per-operation masks."""

    func_id: int
    tgid: int
    goid: int
    start_ns: int  # CLOCK_MONOTONIC at entry
    end_ns: int    # CLOCK_MONOTONIC at return
    entry_ip: int  # runtime address of the entry site (minus the ELF entry vaddr: the load bias)
    args: bytes
    args_ok: int
    args_fail: int
    results: bytes
    results_ok: int
    results_fail: int

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns


def parse_record(raw: bytes) -> CallRecord:
    """A CallRecord from the bytes of one struct gt_args_event."""
    start, end, goid, entry_ip, tgid, func_id, a_ok, a_fail, r_ok, r_fail = _EVENT_HEADER.unpack_from(raw, 0)
    args_at = _EVENT_HEADER.size
    res_at = args_at + _const("GT_ARGS_BUF")
    return CallRecord(func_id, tgid, goid, start, end, entry_ip, raw[args_at:res_at], a_ok, a_fail,
                      raw[res_at:res_at + _const("GT_RES_BUF")], r_ok, r_fail)


def pack_plan(ops: Sequence[Sequence[int]]) -> bytes:
    """The bytes of one struct gt_arg_plan."""
    max_ops = _const("GT_ARGS_MAX_OPS")
    if len(ops) > max_ops:
        raise UsageError(f"a capture plan has {len(ops)} operations; at most {max_ops} fit")
    body = b"".join(OP_STRUCT.pack(*op) for op in ops)
    body += bytes(OP_STRUCT.size * (max_ops - len(ops)))
    return _PLAN_HEADER.pack(len(ops), 0) + body



class ArgsTracer:
    """Arguments and results of each completed call of the given functions of one Go binary.

    Use as a context manager, or attach() and close(); then poll() calls
    `on_call(CallRecord)` (settable until then) for each record waiting. pid None traces every
    process running the binary. max_rate (events per second, 0: unlimited)
    bounds what the BPF side sends; what it drops is counted in stats().
    """

    def __init__(
        self,
        binary_path: str,
        functions: Sequence[ArgsFunction],
        *,
        pid: int | None,
        goid_offset: int,
        stack_hi_offset: int = 8,
        arch: str = "amd64",
        max_rate: int = 0,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        arch_id = bpfprog.arch_constant(arch)
        if not functions:
            raise UsageError("no functions to trace")
        if len(functions) > _const("GT_MAX_FUNCS"):
            raise UsageError(f"{len(functions)} functions match; gotrace traces at most "
                             f"{_const('GT_MAX_FUNCS')} at once: narrow the pattern")
        for index, fn in enumerate(functions):
            if fn.func_id != index:
                raise UsageError(f"function ids must be 0..n-1 in order; {fn.name} has id {fn.func_id}")
            if not fn.return_vaddrs:
                raise UsageError(f"{fn.name} has no return instruction to probe: its calls never complete")
        self.binary_path = str(binary_path)
        self.functions = tuple(functions)
        self.pid = None if pid is None else bpfprog.validated_int("pid", pid, 1, 2**22)
        self.max_rate = bpfprog.validated_int("max_rate", max_rate, 0, 10**9)
        self._plans = [pack_plan(ops) for fn in self.functions for ops in (fn.entry_ops, fn.return_ops)]
        self._cflags = {
            "GT_CFG_ARCH": arch_id,
            "GT_CFG_GOID_OFFSET": bpfprog.validated_int("goid_offset", goid_offset, 0, 4096),
            "GT_CFG_STACK_HI_OFFSET": bpfprog.validated_int("stack_hi_offset", stack_hi_offset, 0, 4096),
            "GT_CFG_NFUNCS": len(self.functions),
            "GT_CFG_TARGET_TGID": self.pid or 0,
        }
        self._bpf = None
        self._uprobes: uprobes.UprobeSet | None = None  # closing it detaches
        self.on_call = on_call
        self.attach_mode = "auto"

    def __enter__(self) -> ArgsTracer:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def bpf_source(self) -> str:
        """The C text as compiled: the -D configuration as #defines, then probes/args.bpf.c."""
        return bpfprog.source_text(SOURCE_PATH, self._cflags)

    # -- life cycle -----------------------------------------------------

    def attach(self) -> None:
        """Compile, load the plans, attach at every entry and return site, open the ring buffer."""
        if self._bpf is not None:
            return
        from gotrace.bpf import kernel as kernelenv

        kernelenv.check_can_trace()
        # A function whose entry instruction is a `ret` gets one probe doing both captures.
        also_return = _const("GT_ARGS_COOKIE_ALSO_RETURN")
        entry_offsets = uprobes.file_offsets(self.binary_path, [fn.entry_vaddr for fn in self.functions])
        entry_sites = [(offset, fn.func_id | (also_return if fn.entry_vaddr in fn.return_vaddrs else 0))
                       for offset, fn in zip(entry_offsets, self.functions)]
        returns = [(v, fn.func_id) for fn in self.functions for v in fn.return_vaddrs if v != fn.entry_vaddr]
        return_offsets = uprobes.file_offsets(self.binary_path, [v for v, _ in returns])
        return_sites = [(offset, func_id) for offset, (_, func_id) in zip(return_offsets, returns)]
        self._bpf = self._compile()
        try:
            self._load_maps()
            self._bpf[b"gt_args_events"].open_ring_buffer(self._deliver)
            self._uprobes = uprobes.attach_sites(
                self.binary_path,
                ((b"gt_args_entry", entry_sites), (b"gt_args_return", return_sites)),
                pid=self.pid,
                load_program=uprobes.bcc_loader(self._bpf),
                mode=self.attach_mode,
            )
            self.attach_mode = self._uprobes.mode
        except BaseException:
            self.close()
            raise

    def _compile(self):  # -> bcc.BPF
        return bpfprog.compile_program(SOURCE_PATH, self._cflags)

    def _load_maps(self) -> None:
        plans = self._bpf[b"gt_arg_plans"]
        for index, blob in enumerate(self._plans):
            value = plans.Leaf.from_buffer_copy(blob.ljust(ctypes.sizeof(plans.Leaf), b"\0"))
            plans[ctypes.c_int(index)] = value
        cfg = self._bpf[b"gt_args_cfg"]
        cfg[ctypes.c_int(_const("GT_ACFG_MAX_RATE"))] = ctypes.c_uint64(self.max_rate)

    def close(self) -> None:
        """Detach every probe and free the BPF programs and maps. Safe to call twice."""
        attached, self._uprobes = self._uprobes, None
        if attached is not None:
            attached.close()
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()

    # -- reading --------------------------------------------------------

    def _deliver(self, _ctx, data, size) -> int:
        if self.on_call is not None:
            self.on_call(parse_record(ctypes.string_at(data, size)))
        return 0

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for records and hand every waiting one to on_call."""
        if self._bpf is None:
            raise RuntimeError("ArgsTracer.attach() was not called (or close() was)")
        self._bpf.ring_buffer_poll(timeout_ms)

    def drain(self) -> None:
        """Hand every record already in the ring buffer to on_call, without waiting."""
        if self._bpf is not None:
            self._bpf.ring_buffer_consume()

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side (STAT_NAMES values)."""
        if self._bpf is None:
            raise RuntimeError("ArgsTracer.attach() was not called (or close() was)")
        table = self._bpf[b"gt_args_stats"]
        return {name: int(sum(table[ctypes.c_int(_const(const))])) for const, name in STAT_NAMES.items()}
