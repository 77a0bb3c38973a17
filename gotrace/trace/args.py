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
    "GT_ASTAT_FASTER": "faster_than_min_latency",
}

# The layouts of probes/gotrace.h's struct gt_arg_op, gt_arg_plan (header) and
# gt_args_event (header).
OP_STRUCT = struct.Struct("<BBBBHHHHHHi")
PLAN_HEADER = struct.Struct("<IIII")
EVENT_HEADER = struct.Struct("<QQQQII")


@dataclass(frozen=True)
class ArgsFunction(TracedFunction):
    """A traced function with its two capture plans as packed operations."""

    entry_ops: tuple[tuple[int, ...], ...] = ()   # each: (kind, arg, flags, 0, dep, dst, size, src, len_src, mul, offset)
    return_ops: tuple[tuple[int, ...], ...] = ()
    return_base: int = 0   # where the return region starts in the event's data
    send_bytes: int = 0    # bytes of the event's data sent

    @classmethod
    def planned(cls, traced: TracedFunction, plan: FunctionPlan) -> ArgsFunction:
        return cls(traced.func_id, traced.name, traced.entry_vaddr, traced.return_vaddrs, traced.entry_file_offset,
                   traced.return_file_offsets, plan.entry.packed_ops(), plan.ret.packed_ops(), plan.ret_base,
                   plan.send_bytes)


@dataclass(frozen=True)
class CallRecord:
    """One completed call as the BPF side sent it: the entry and return regions (status bytes first)."""

    func_id: int
    tgid: int
    goid: int
    start_ns: int  # CLOCK_MONOTONIC at entry
    end_ns: int    # CLOCK_MONOTONIC at return
    entry_ip: int  # runtime address of the entry site (minus the ELF entry vaddr: the load bias)
    data: bytes    # both regions, as sent

    def regions(self, return_base: int) -> tuple[bytes, bytes]:
        """(entry region, return region) for a function whose return region starts at return_base."""
        return self.data[:return_base], self.data[return_base:]

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns


def parse_record(raw: bytes) -> CallRecord:
    """A CallRecord from the bytes of one struct gt_args_event (its data as long as it was sent)."""
    start, end, goid, entry_ip, tgid, func_id = EVENT_HEADER.unpack_from(raw, 0)
    return CallRecord(func_id, tgid, goid, start, end, entry_ip, bytes(raw[EVENT_HEADER.size:]))


def pack_plan(ops: Sequence[Sequence[int]], base: int = 0, send: int = 0, flags: int = 0) -> bytes:
    """The bytes of one struct gt_arg_plan (base and send: the return plan's region start and bytes sent; flags:
    the entry plan's GT_ARG_PLAN_*)."""
    max_ops = header.constant("GT_ARGS_MAX_OPS")
    if len(ops) > max_ops:
        raise UsageError(f"a capture plan has {len(ops)} operations; at most {max_ops} fit")
    body = b"".join(OP_STRUCT.pack(*op) for op in ops)
    body += bytes(OP_STRUCT.size * (max_ops - len(ops)))
    return PLAN_HEADER.pack(len(ops), base, send, flags) + body


class ArgsTracer(Tracer):
    """Arguments and results of each completed call of the given functions of one Go binary.

    After attach(), poll() returns the CallRecords committed since the last
    call. max_rate (calls per second, 0: unlimited) bounds what the BPF side
    sends; what it drops is counted in stats(). Calls faster than
    min_latency_ns are counted and not sent (the --min-latency filter runs in
    the kernel at return). Its probes are DETACHABLE: the cost guard counts
    their hits and may detach a function, as latency's (probes/guard.h).
    """

    PROGRAM = "args16"  # per run: the smallest args<bound> object that holds the longest plan
    ENTRY_PROGRAM = b"gt_args_entry"
    RETURN_PROGRAM = b"gt_args_return"
    DETACHABLE = True

    def __init__(self, gobin, functions: Sequence[ArgsFunction], *, pid: int | None, mode: str = "auto",
                 max_rate: int = 0, min_latency_ns: int = 0) -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        self.max_rate = compiler.validated_int("max_rate", max_rate, 0, 10**9)
        self.min_latency_ns = compiler.validated_int("min_latency_ns", min_latency_ns, 0, 2**63 - 1)
        also_return = header.constant("GT_ARG_PLAN_ALSO_RETURN")
        self._plans = []
        for fn in self.functions:
            # A function whose entry instruction is a `ret` gets one probe doing both captures.
            flags = also_return if fn.entry_vaddr in fn.return_vaddrs else 0
            self._plans.append(pack_plan(fn.entry_ops, flags=flags))
            self._plans.append(pack_plan(fn.return_ops, fn.return_base, fn.send_bytes))
        # The object whose capture loop bound holds the longest plan (the verifier's work follows the bound).
        longest = max((len(ops) for fn in self.functions for ops in (fn.entry_ops, fn.return_ops)), default=0)
        self.PROGRAM = compiler.args_program(longest)
        self._ring: RingBuffer | None = None

    def map_sizes(self) -> dict[str, int]:
        return {**super().map_sizes(), "gt_arg_plans": len(self._plans)}

    def setup_maps(self, loaded: LoadedImage) -> None:
        plans_fd = loaded.map_fd("gt_arg_plans")
        for index, blob in enumerate(self._plans):
            self._sys.map_update_elem(plans_fd, struct.pack("<I", index), blob)
        cfg_fd = loaded.map_fd("gt_args_cfg")
        for index, value in ((header.constant("GT_ACFG_MAX_RATE"), self.max_rate),
                             (header.constant("GT_ACFG_MIN_LATENCY_NS"), self.min_latency_ns)):
            self._sys.map_update_elem(cfg_fd, struct.pack("<I", index), struct.pack("<Q", value))

    def site_groups(self) -> list[tuple[bytes, list[tuple[int, int]]]]:
        # A function whose entry instruction is a `ret` has no return probe: its entry probe does both (its plan's
        # GT_ARG_PLAN_ALSO_RETURN).
        entries, returns = [], []
        for fn in self.functions:
            entries.append((fn.entry_file_offset, fn.func_id))
            returns += [(offset, fn.func_id) for vaddr, offset in zip(fn.return_vaddrs, fn.return_file_offsets)
                        if vaddr != fn.entry_vaddr]
        # Return probes first: a call entered before its entry probe was in place is then a return without
        # entry, never an entry that looks as if it never returned.
        return [(self.RETURN_PROGRAM, returns), (self.ENTRY_PROGRAM, entries)]

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
