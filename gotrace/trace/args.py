"""The args program (probes/args.bpf.c) on the tracer life-cycle: each completed call's captured bytes, from a ring buffer.

The BPF side reads what each function's capture plans say at entry and at
`ret`, pairs the two by goroutine as latency does, and commits one record
per completed call to a ring buffer. This module puts the plans in their map
and reads the records as `CallRecord`s of raw bytes; gotrace.capture.values
decodes them into Go values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gotrace import header
from gotrace.bpf import compiler
from gotrace.bpf.image import LoadedImage
from gotrace.bpf.ringbuf import RingBuffer
from gotrace.capture.plan import FunctionPlan
from gotrace.errors import UsageError
from gotrace.trace.tracer import Tracer, TracedFunction

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

# The layouts of probes/gotrace.h's struct gt_arg_op, gt_arg_plan (header) and
# gt_args_event (header); tests/test_struct_layouts.py compiles the C and compares.
OP_STRUCT = struct.Struct("<BBBBHHHHi")
PLAN_HEADER = struct.Struct("<II")
EVENT_HEADER = struct.Struct("<QQQQIIIIII")


@dataclass(frozen=True)
class ArgsFunction(TracedFunction):
    """A traced function with its two capture plans as packed operations."""

    entry_ops: tuple[tuple[int, ...], ...] = ()   # each: (kind, reg, shift, dep, dst, size, src, len_src, offset)
    return_ops: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def planned(cls, traced: TracedFunction, plan: FunctionPlan) -> ArgsFunction:
        return cls(traced.func_id, traced.name, traced.entry_vaddr, traced.return_vaddrs, traced.entry_file_offset,
                   traced.return_file_offsets, plan.entry.packed_ops(), plan.ret.packed_ops())


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
    start, end, goid, entry_ip, tgid, func_id, a_ok, a_fail, r_ok, r_fail = EVENT_HEADER.unpack_from(raw, 0)
    args_at = EVENT_HEADER.size
    res_at = args_at + header.constant("GT_ARGS_BUF")
    return CallRecord(func_id, tgid, goid, start, end, entry_ip, raw[args_at:res_at], a_ok, a_fail,
                      raw[res_at:res_at + header.constant("GT_RES_BUF")], r_ok, r_fail)


def pack_plan(ops: Sequence[Sequence[int]]) -> bytes:
    """The bytes of one struct gt_arg_plan."""
    max_ops = header.constant("GT_ARGS_MAX_OPS")
    if len(ops) > max_ops:
        raise UsageError(f"a capture plan has {len(ops)} operations; at most {max_ops} fit")
    body = b"".join(OP_STRUCT.pack(*op) for op in ops)
    body += bytes(OP_STRUCT.size * (max_ops - len(ops)))
    return PLAN_HEADER.pack(len(ops), 0) + body


class ArgsTracer(Tracer):
    """Arguments and results of each completed call of the given functions of one Go binary.

    After attach(), poll() returns the CallRecords committed since the last
    call. max_rate (calls per second, 0: unlimited) bounds what the BPF side
    sends; what it drops is counted in stats().
    """

    PROGRAM = "args"
    ENTRY_PROGRAM = b"gt_args_entry"
    RETURN_PROGRAM = b"gt_args_return"

    def __init__(self, gobin, functions: Sequence[ArgsFunction], *, pid: int | None, mode: str = "auto",
                 max_rate: int = 0) -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        self.max_rate = compiler.validated_int("max_rate", max_rate, 0, 10**9)
        self._plans = [pack_plan(ops) for fn in self.functions for ops in (fn.entry_ops, fn.return_ops)]
        self._ring: RingBuffer | None = None

    def map_sizes(self) -> dict[str, int]:
        return {"gt_arg_plans": len(self._plans)}

    def setup_maps(self, loaded: LoadedImage) -> None:
        plans_fd = loaded.map_fd("gt_arg_plans")
        for index, blob in enumerate(self._plans):
            self._sys.map_update_elem(plans_fd, struct.pack("<I", index), blob)
        self._sys.map_update_elem(loaded.map_fd("gt_args_cfg"), struct.pack("<I", header.constant("GT_ACFG_MAX_RATE")),
                                  struct.pack("<Q", self.max_rate))

    def site_groups(self) -> list[tuple[bytes, list[tuple[int, int]]]]:
        # A function whose entry instruction is a `ret` gets one probe doing both captures.
        also_return = header.constant("GT_ARGS_COOKIE_ALSO_RETURN")
        entries, returns = [], []
        for fn in self.functions:
            entry_is_return = fn.entry_vaddr in fn.return_vaddrs
            entries.append((fn.entry_file_offset, fn.func_id | (also_return if entry_is_return else 0)))
            returns += [(offset, fn.func_id) for vaddr, offset in zip(fn.return_vaddrs, fn.return_file_offsets)
                        if vaddr != fn.entry_vaddr]
        return [(self.ENTRY_PROGRAM, entries), (self.RETURN_PROGRAM, returns)]

    def opened(self, loaded: LoadedImage) -> None:
        self._ring = RingBuffer(loaded.map_fd("gt_args_events"), loaded.map_spec("gt_args_events").max_entries)

    def closing(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()

    def poll(self, timeout_s: float = 0.1, limit: int | None = None) -> list[CallRecord]:
        """The records committed so far (at most `limit`), waiting up to timeout_s when there are none."""
        if self._ring is None:
            raise RuntimeError("ArgsTracer.attach() was not called (or close() was)")
        if not self._ring.wait(timeout_s):
            return []
        return [parse_record(raw) for raw in self._ring.read(limit)]

    def drain(self) -> list[CallRecord]:
        """Every record already committed, without waiting."""
        return self.poll(0.0)

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side (STAT_NAMES values)."""
        return self.counters("gt_args_stats", STAT_NAMES)
