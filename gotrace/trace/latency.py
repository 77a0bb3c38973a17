"""The latency program (probes/latency.bpf.c) on the tracer life-cycle: per-function histograms read from the kernel.

The BPF side pairs each call's entry and `ret` by goroutine and aggregates
latencies into log-linear buckets (probes/gotrace.h) in per-CPU maps, one
histogram per (function, process), with the exact sum of the latencies and
the count of calls found unwound beside it; no event per call reaches user
space. Every call whose start was recorded is in exactly one of: returned
(in the histogram), unwound (panic, runtime.Goexit), in flight (its start
still in a slot of gt_start_slots or in gt_starts). A probe on runtime.goexit1 notes goroutines that end;
sweep() removes the starts they left and counts them as unwound. A call
whose start found the start map full is counted as untimed; an entry hit
of a function on probation (the cost guard's) is counted as a probation
call, never timed. This module
reads those maps two ways:

* read(reset=...): per function, all processes together, since the last
  reset (the reports of `gotrace latency`, `-i` resets);
* read_cumulative(): per (function, process), since the probes were attached,
  never reset (what a Prometheus exporter serves).

With slow_ns or by="caller", the tracer loads the `latency_stacks` build of
the program (probes/latency_stacks.h; settings in gt_config, nothing compiled
in): each call at least slow_ns long arrives with its goroutine's return
addresses through a ring buffer (poll_slow()), and read() also gives
histograms per caller (FunctionCounts.callers). Per-process histograms
(FunctionCounts.processes) come from gt_hist's keys in every build.

All readers may be called from different threads. In every-process mode,
retire_exited() deletes the kernel's keys of processes that exited a while
ago (so the map never fills over a long run); their counts stay in read()'s
totals.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from dataclasses import dataclass, field

from gotrace import header
from gotrace.bpf import compiler, uprobes
from gotrace.bpf.image import LoadedImage
from gotrace.bpf.ringbuf import RingBuffer
from gotrace.errors import GotraceError, UsageError
from gotrace.trace.tracer import Tracer, TracedFunction

__all__ = ["BY", "CumulativeCounts", "FunctionCounts", "LatencyTracer", "ProcessCounts", "SlowRecord",
           "TracedFunction"]

BY = ("none", "caller", "pid")  # what read() splits each function's histogram by, besides the function
STACKS_PROGRAM = "latency_stacks"  # the build with --slow and --by caller (compiler.BUILDS)

STAT_NAMES = {
    "GT_STAT_NO_GOROUTINE": "no_goroutine",
    "GT_STAT_READ_FAULT": "read_faults",
    "GT_STAT_STALE_STARTS": "stale_starts",
    "GT_STAT_RETURNS_WITHOUT_ENTRY": "returns_without_entry",
    "GT_STAT_START_UPDATE_FAILED": "start_update_failed",
    "GT_STAT_HIST_FULL": "histogram_full",
}

HIST_KEY = struct.Struct("<III")  # struct gt_hist_key: func_id, bucket (or a GT_HIST_SLOT_*), tgid
START_KEY = struct.Struct("<QII")  # struct gt_start_key: goid, tgid, depth
START_VAL = struct.Struct("<QII")  # struct gt_start_val: start_ns, func_id, reserved
EXIT_REC = struct.Struct("<QIIQQ")  # struct gt_exit_rec: goid, tgid, reserved, exit_ns, seq
# struct gt_start_slot: tag, key (goid, tgid, depth), val (start_ns, func_id, reserved), hash_added, hash_deleted
START_SLOT = struct.Struct("<QQIIQIIQQ")
SLOT_REAPED = struct.Struct("<QQQ")  # struct gt_slot_reaped: tag, start_ns, hash_removed
MAX_START_SLOTS = 1 << 20
GOEXIT = "runtime.goexit1"  # every goroutine ends through it (also runtime.Goexit)
SWEEP_EVERY_S = 1.0
CALLER_KEY = struct.Struct("<IIQ")  # struct gt_caller_key: func_id, bucket, caller (return address - entry site)
SLOW_EVENT_HEADER = struct.Struct("<QQQQIIII")  # struct gt_slow_event up to pcs
SLOW_STAT_NAMES = {
    "GT_SSTAT_EVENTS": "events",
    "GT_SSTAT_RATE_LIMITED": "dropped_rate_limit",
    "GT_SSTAT_RINGBUF_FULL": "dropped_ringbuf_full",
    "GT_SSTAT_STACK_FAULT": "stack_read_faults",
    "GT_SSTAT_CALLER_FULL": "caller_histogram_full",
    "GT_SSTAT_NO_ENTRY_IP": "no_entry_address",
}


@dataclass(frozen=True)
class SlowRecord:
    """One call at least slow_ns long, as the BPF side sent it (addresses are the process's, at run time)."""

    func_id: int
    tgid: int
    goid: int
    end_ns: int        # CLOCK_MONOTONIC at the return
    latency_ns: int
    entry_ip: int      # runtime address of the function's entry site: minus its vaddr, the load bias
    return_addresses: tuple[int, ...]  # the caller's first


def parse_slow_record(raw: bytes) -> SlowRecord:
    """A SlowRecord from the bytes of one struct gt_slow_event."""
    end_ns, latency_ns, goid, entry_ip, tgid, func_id, nframes, _ = SLOW_EVENT_HEADER.unpack_from(raw, 0)
    nframes = min(nframes, header.constant("GT_SLOW_MAX_DEPTH"), (len(raw) - SLOW_EVENT_HEADER.size) // 8)
    pcs = struct.unpack_from(f"<{nframes}Q", raw, SLOW_EVENT_HEADER.size)
    return SlowRecord(func_id, tgid, goid, end_ns, latency_ns, entry_ip, pcs)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value



@dataclass
class FunctionCounts:
    """One function's calls since the last reset, all processes together."""

    buckets: dict[int, int]  # bucket index (probes/gotrace.h scheme) -> calls that returned
    unmatched: int = 0  # calls unwound without returning (panic, runtime.Goexit), found since the last reset
    in_flight: int = 0  # calls entered and not yet returned at the read
    oldest_in_flight_ns: int | None = None  # how long the oldest of them has been running
    untimed: int = 0  # calls whose start could not be recorded (the start map was full), since the last reset
    probation_calls: int = 0  # calls counted (entry probe only), not timed, while on probation, since the last reset
    processes: dict[int, dict[int, int]] = field(default_factory=dict)  # tgid -> its buckets (the same calls)
    # by="caller": caller's return address minus the function's entry site (a difference of ELF vaddrs too)
    # -> its buckets (the same calls, all processes)
    callers: dict[int, dict[int, int]] = field(default_factory=dict)


@dataclass
class ProcessCounts:
    """One function in one process, cumulative since the probes were attached."""

    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> calls returned
    sum_ns: int = 0  # exact sum of those calls' latencies
    unwound: int = 0  # calls found unwound without returning (panics, goroutines that ended under them)
    in_flight: int = 0  # calls running now


@dataclass
class CumulativeCounts:
    """Everything since the probes were attached, never reset."""

    processes: dict[tuple[int, int], ProcessCounts]  # (func_id, tgid) -> counts
    entries: list[int]  # per func_id: entry probe hits in a traced process
    alive: dict[int, bool]  # tgid -> whether the process still exists


def hist_entries(nfuncs: int) -> int:
    """Room in the histogram map for nfuncs functions: distinct (function, bucket, process) keys at once."""
    return min(header.constant("GT_HIST_MAX_ENTRIES"),
               max(header.constant("GT_HIST_MIN_ENTRIES"), nfuncs * header.constant("GT_HIST_ENTRIES_PER_FUNC")))


def goexit_site(gobin) -> int | None:
    """The file offset of runtime.goexit1's entry probe site, or None when the binary has none gotrace can use
    (then a goroutine's exit after a panic is not seen, and the call it left stays in flight)."""
    try:
        candidates = [fn for fn in gobin.match([GOEXIT]) if fn.name == GOEXIT]
        for goexit in candidates:  # the Go function, not its ABI0 wrapper (listed under the same name)
            probes = gobin.probe_sites(goexit)
            # Only the entry matters: goexit1 never returns (it switches to goexit0 on the system stack).
            if probes.sites.entry_vaddr is not None and (not probes.reason or probes.reason.startswith("no return")):
                return gobin.file_offset(probes.sites.entry_vaddr)
    except (GotraceError, ValueError):
        pass
    return None


def slot_tag(goid: int, tgid: int, depth: int) -> int:
    """gt_slot_tag() of probes/latency.bpf.c (gotrace.h, "gt_start_slots"): a start key's tag, never 0."""
    mask = (1 << 64) - 1
    h = ((goid * 0x9E3779B97F4A7C15) & mask) ^ ((depth * 0xC2B2AE3D27D4EB4F) & mask) ^ tgid
    return (((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9) & mask) | 1


def process_exists(tgid: int) -> bool:
    """Whether a process with this pid exists (zombies included)."""
    return os.path.exists(f"/proc/{tgid}")


class LatencyTracer(Tracer):
    """Per-goroutine latency histograms of the given functions of one Go binary."""

    PROGRAM = "latency"
    ENTRY_PROGRAM = b"gt_entry"
    RETURN_PROGRAM = b"gt_return"
    GOEXIT_PROGRAM = b"gt_goexit"
    DETACHABLE = True

    def __init__(self, gobin, functions, *, pid, mode="auto", slow_ns: int = 0, slow_rate: int = 0,
                 stack_depth: int = 0, by: str = "none", start_slots: int | None = None) -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        # gt_start_slots' size (a power of two): fewer than GT_START_SLOTS only to test the overflow to gt_starts.
        self.start_slots = header.constant("GT_START_SLOTS") if start_slots is None else start_slots
        if not 1 <= self.start_slots <= MAX_START_SLOTS or self.start_slots & (self.start_slots - 1):
            raise UsageError(f"start_slots must be a power of two from 1 to {MAX_START_SLOTS}, not {start_slots}")
        self.config["start_slot_mask"] = self.start_slots - 1
        if by not in BY:
            raise UsageError(f"by must be one of {', '.join(BY)}, not {by!r}")
        self.by = by
        self.config.update(
            slow_ns=compiler.validated_int("slow_ns", slow_ns, 0, 2**63 - 1),
            slow_rate=compiler.validated_int("slow_rate", slow_rate, 0, 10**9),
            stack_depth=compiler.validated_int("stack_depth", stack_depth, 0, header.constant("GT_SLOW_MAX_DEPTH")),
            by=header.constant("GT_BY_CALLER") if by == "caller" else header.constant("GT_BY_NONE"),
        )
        # Plain runs load the build without the stack code: they pay nothing for --slow and --by caller.
        self.stacks = bool(slow_ns) or by == "caller"
        if self.stacks:
            self.PROGRAM = STACKS_PROGRAM
        self._slow_ring: RingBuffer | None = None
        self._caller_base: dict[tuple[int, int, int], int] = {}  # (func_id, bucket, caller) -> count at last reset
        self._nbuckets = header.constant("GT_HIST_NBUCKETS")
        self._slot_sum = header.constant("GT_HIST_SLOT_SUM")
        self._slot_unwound = header.constant("GT_HIST_SLOT_UNWOUND")
        if self._slot_sum < self._nbuckets or self._slot_unwound < self._nbuckets:
            raise ValueError("probes/gotrace.h: GT_HIST_SLOT_* must not be bucket indexes")
        self._lock = threading.Lock()  # read(), read_cumulative() and retire_exited() may run on two threads
        self._hist_base: dict[tuple[int, int, int], int] = {}  # (func_id, bucket, tgid) -> count at last reset
        self._fc_base: list[int] = [0] * (len(self.functions) * header.constant("GT_FC_N"))
        # (func_id, bucket or GT_HIST_SLOT_UNWOUND, tgid) -> counts of deleted keys since last reset
        self._retired: dict[tuple[int, int, int], int] = {}
        self._dead_since: dict[int, float] = {}  # tgid -> when it was first seen gone (monotonic s)
        self._swept: dict[tuple[int, int], int] = {}  # (func_id, tgid) -> starts of exited goroutines removed
        self._swept_total: dict[int, int] = {}  # func_id -> those removed, all processes, since attach
        self._swept_base: dict[int, int] = {}  # ... at last reset
        self._running: dict[tuple[int, int], tuple[int, int]] = {}  # (func_id, tgid) -> (calls, oldest start_ns)
        self._slot_words: memoryview | None = None  # gt_start_slots as u64 words, shared with the kernel
        self._reaped: dict[int, list[int]] = {}  # slot index -> gt_slot_reaped's value [tag, start_ns, hash_removed]
        self._swept_at = 0.0
        self._gobin = gobin
        self._goexit_offsets: list[int] | None = None  # runtime.goexit1's probe site, looked up when first asked
        self._goexit: uprobes.UprobeSet | None = None
        self._exit_words: memoryview | None = None  # gt_exited as u64 words, shared with the kernel
        self._exit_next: memoryview | None = None  # gt_exited_next: how many exits the probe has noted
        self._exits_read = 0  # exits read from gt_exited so far

    def map_sizes(self) -> dict[str, int]:
        sizes = {**super().map_sizes(), "gt_hist": hist_entries(len(self.functions)),
                 "gt_start_slots": self.start_slots, "gt_slot_reaped": self.start_slots}
        if self.stacks:
            sizes["gt_caller_hist"] = hist_entries(len(self.functions))
        return sizes

    def fixed_site_offsets(self) -> list[int]:
        """The probe on runtime.goexit1: one hit per goroutine exit, counted with its cost, never detached."""
        if self._goexit_offsets is None:
            offset = goexit_site(self._gobin)
            self._goexit_offsets = [] if offset is None else [offset]
        return self._goexit_offsets

    def opened(self, loaded: LoadedImage) -> None:
        """The probe on runtime.goexit1 goes on after the functions' (and off before theirs: detaching()). On a
        service under load it is hit at every goroutine exit, tens of thousands of times a second, and each hit
        waits while a probe is being registered or removed (the process's mmap lock): attached first, it would
        stall the service for the whole attach. A goroutine that ends, with a traced call unwound, while the
        functions' probes are being attached leaves that call in flight."""
        offsets = self.fixed_site_offsets()
        if offsets:
            self._goexit = uprobes.attach_sites(self.binary_path, [(self.GOEXIT_PROGRAM, [(offsets[0], 0)])],
                                                pid=self.pid, load_program=loaded.load_program, mode=self.mode)
        self._slot_words = loaded.map_memory("gt_start_slots")
        self._exit_words = loaded.map_memory("gt_exited")
        self._exit_next = loaded.map_memory("gt_exited_next")
        if self.stacks and self.config["slow_ns"]:
            self._slow_ring = RingBuffer(loaded.map_fd("gt_slow_events"), loaded.map_spec("gt_slow_events").max_entries)

    def detaching(self) -> None:
        goexit, self._goexit = self._goexit, None
        if goexit is not None:
            goexit.close()

    def closing(self) -> None:
        self._slot_words = self._exit_words = self._exit_next = None
        self.detaching()
        ring, self._slow_ring = self._slow_ring, None
        if ring is not None:
            ring.close()

    def poll_slow(self, timeout_s: float = 0.1) -> list[SlowRecord]:
        """The slow calls sent so far, waiting up to timeout_s when there are none (always empty without slow_ns)."""
        if self._slow_ring is None:
            if self.config["slow_ns"]:
                raise RuntimeError("LatencyTracer.attach() was not called (or close() was)")
            return []
        if not self._slow_ring.wait(timeout_s):
            return []
        return [parse_slow_record(raw) for raw in self._slow_ring.read()]

    def slow_stats(self) -> dict[str, int]:
        """Whole-run counters of slow calls sent and dropped (SLOW_STAT_NAMES values); zeros without the stack build."""
        if not self.stacks:
            return dict.fromkeys(SLOW_STAT_NAMES.values(), 0)
        return self.counters("gt_slow_stats", SLOW_STAT_NAMES)

    def _callers(self) -> dict[tuple[int, int, int], int]:
        """Every key of gt_caller_hist as (func_id, bucket, caller) -> its sum over CPUs."""
        keys, sums = self.percpu_sums("gt_caller_hist", CALLER_KEY.size, hist_entries(len(self.functions)))
        return dict(zip(CALLER_KEY.iter_unpack(keys), sums))

    def sweep(self) -> dict[tuple[int, int], tuple[int, int]]:
        """Remove the starts of goroutines that have exited (counted as unwound) and of detached functions (never
        to return under a probe); (func_id, tgid) -> (calls running now, start of the oldest in CLOCK_MONOTONIC
        ns) of the others. A goroutine id is never reused in a process, so no later call can take a removed
        start's key."""
        with self._lock:
            return self._sweep()

    def _read_exits(self) -> dict[tuple[int, int], int]:
        """(tgid, goid) -> exit_ns of the goroutines the probe saw exit since the last read, from the ring
        gt_exited (gotrace.h, gt_exit_rec); those it overwrote before they were read (more than
        GT_EXITED_ENTRIES between two reads) are lost. Nothing needs them longer: a goroutine's starts were
        written before its exit, so the sweep that reads the exit (before the starts) finds them."""
        words, exited = self._exit_words, {}
        if words is None or self._exit_next is None:
            return exited
        n_entries = header.constant("GT_EXITED_ENTRIES")
        n = EXIT_REC.size // 8
        noted = self._exit_next[0]
        number = max(self._exits_read, noted - n_entries)
        while number < noted:
            at = (number % n_entries) * n
            seq = words[at + 3]
            if seq < number + 1:
                break  # still being written: read it next time
            goid, tgid_word, exit_ns = words[at], words[at + 1], words[at + 2]
            if seq == number + 1 and words[at + 3] == seq:  # not overwritten while it was read
                exited[tgid_word & 0xFFFFFFFF, goid] = exit_ns
            number += 1
        self._exits_read = number
        return exited

    def _sweep(self) -> dict[tuple[int, int], tuple[int, int]]:
        # Goroutines that exited, read first: a slot held by one of them no longer changes.
        exited = self._read_exits() if self._goexit is not None else {}
        detached = self.detached_ids()
        running: dict[tuple[int, int], tuple[int, int]] = {}
        reaped_changed: set[int] = set()
        mask = self.start_slots - 1

        def unwound(func_id: int, tgid: int) -> None:
            self._swept[func_id, tgid] = self._swept.get((func_id, tgid), 0) + 1
            self._swept_total[func_id] = self._swept_total.get(func_id, 0) + 1

        def run(func_id: int, tgid: int, start_ns: int) -> None:
            n, oldest = running.get((func_id, tgid), (0, start_ns))
            running[func_id, tgid] = (n + 1, min(oldest, start_ns))

        starts_fd = self.loaded().map_fd("gt_starts")
        keys, values, count = self._sys.map_lookup_batch(starts_fd, START_KEY.size, START_VAL.size,
                                                         header.constant("GT_START_ENTRIES"))
        for at, ((goid, tgid, depth), (start_ns, func_id, _)) in enumerate(zip(
                START_KEY.iter_unpack(keys[:count * START_KEY.size]),
                START_VAL.iter_unpack(values[:count * START_VAL.size]))):
            if func_id >= len(self.functions):
                continue
            exit_ns = exited.get((tgid, goid))
            gone = exit_ns is not None and exit_ns >= start_ns
            if gone or func_id in detached:
                key = keys[at * START_KEY.size:(at + 1) * START_KEY.size]
                if self._sys.map_delete_elem(starts_fd, key):
                    index = (slot_tag(goid, tgid, depth) >> 32) & mask  # the probes count gt_starts' keys per slot
                    self._reaped.setdefault(index, [0, 0, 0])[2] += 1
                    reaped_changed.add(index)
                    if gone and func_id not in detached:
                        unwound(func_id, tgid)
                continue
            run(func_id, tgid, start_ns)
        # The slots: user space never writes one; it accounts for a holder that will never return (its goroutine
        # exited: unwound; its function detached) once, and names it in gt_slot_reaped so that an entry may
        # take the slot over.
        slots = self._slot_words
        words = START_SLOT.size // 8
        for index, tag in enumerate(slots[::words].tolist() if slots is not None else ()):
            if tag == 0:
                continue
            at = index * words
            tag, goid, tgid, depth, start_ns, func_id, _, _, _ = START_SLOT.unpack(slots[at:at + words].tobytes())
            if tag != slot_tag(goid, tgid, depth) or func_id >= len(self.functions):
                continue  # being claimed this instant: its key is not all written yet
            reaped = self._reaped.get(index)
            if reaped is not None and reaped[0] == tag and reaped[1] == start_ns:
                continue  # accounted for already
            exit_ns = exited.get((tgid, goid))
            gone = exit_ns is not None and exit_ns >= start_ns
            if gone or func_id in detached:
                if gone and func_id not in detached:
                    unwound(func_id, tgid)
                reaped = self._reaped.setdefault(index, [0, 0, 0])
                reaped[0], reaped[1] = tag, start_ns
                reaped_changed.add(index)
                continue
            run(func_id, tgid, start_ns)
        reaped_fd = self.loaded().map_fd("gt_slot_reaped")
        for index in reaped_changed:
            self._sys.map_update_elem(reaped_fd, struct.pack("<I", index), SLOT_REAPED.pack(*self._reaped[index]))
        self._swept_at = time.monotonic()
        self._running = running
        return running

    def upkeep(self) -> None:
        """Sweep now and then (the cost guard's thread calls this): starts of exited goroutines take room."""
        if time.monotonic() - self._swept_at >= SWEEP_EVERY_S:
            self.sweep()

    def _hist(self) -> dict[tuple[int, int, int], int]:
        """Every key of gt_hist as (func_id, bucket or slot, tgid) -> its sum over CPUs."""
        keys, sums = self.percpu_sums("gt_hist", HIST_KEY.size, hist_entries(len(self.functions)))
        return dict(zip(HIST_KEY.iter_unpack(keys), sums))

    def read(self, *, reset: bool) -> dict[int, FunctionCounts]:
        """Counts per func_id since the last reset, all processes together (zero-call functions included).

        The kernel's counters are cumulative; a reset moves this tracer's baseline
        and starts a new report generation, so no call is lost between reads.
        """
        with self._lock:
            return self._read(reset)

    def _read(self, reset: bool) -> dict[int, FunctionCounts]:
        running = self._sweep()
        now_ns = time.monotonic_ns()
        fc_n = header.constant("GT_FC_N")
        fc_sums = self.func_counts()
        hist_now = self._hist()
        result = {fn.func_id: FunctionCounts(buckets={}) for fn in self.functions}

        def add(func_id: int, bucket: int, tgid: int, delta: int) -> None:
            counts = result[func_id]
            if bucket == self._slot_unwound:
                counts.unmatched += delta
                return
            counts.buckets[bucket] = counts.buckets.get(bucket, 0) + delta
            mine = counts.processes.setdefault(tgid, {})
            mine[bucket] = mine.get(bucket, 0) + delta

        for (func_id, bucket, tgid), count in self._retired.items():
            add(func_id, bucket, tgid, count)
        for key, total in hist_now.items():
            func_id, bucket, tgid = key
            delta = total - self._hist_base.get(key, 0)
            if delta > 0 and func_id in result and (bucket < self._nbuckets or bucket == self._slot_unwound):
                add(func_id, bucket, tgid, delta)
        callers_now = self._callers() if self.by == "caller" else {}
        for key, total in callers_now.items():
            func_id, bucket, caller = key
            delta = total - self._caller_base.get(key, 0)
            if delta > 0 and func_id in result:
                mine = result[func_id].callers.setdefault(_signed64(caller), {})
                mine[bucket] = mine.get(bucket, 0) + delta
        swept = dict(self._swept_total)
        for (func_id, _), (n, oldest_ns) in running.items():
            counts = result[func_id]
            counts.in_flight += n
            age_ns = max(0, now_ns - oldest_ns)
            counts.oldest_in_flight_ns = max(counts.oldest_in_flight_ns or 0, age_ns)
        i_untimed, i_probation = header.constant("GT_FC_UNTIMED"), header.constant("GT_FC_PROBATION")
        for func_id, counts in result.items():
            counts.unmatched += swept.get(func_id, 0) - self._swept_base.get(func_id, 0)
            at = func_id * fc_n + i_untimed
            counts.untimed = fc_sums[at] - self._fc_base[at]
            at = func_id * fc_n + i_probation
            counts.probation_calls = fc_sums[at] - self._fc_base[at]
        if reset:
            self._hist_base = hist_now
            self._fc_base = fc_sums
            self._swept_base = swept
            self._retired = {}
            self._caller_base = callers_now
        return result

    def read_cumulative(self) -> CumulativeCounts:
        """Per (func_id, tgid): buckets, exact latency sum, unwound and in-flight calls, since attach; never reset.

        Processes whose keys retire_exited() deleted are no longer listed.
        """
        with self._lock:
            running = self._sweep() if time.monotonic() - self._swept_at >= SWEEP_EVERY_S else self._running
            hist_now = self._hist()
            fc_n = header.constant("GT_FC_N")
            fc_sums = self.func_counts()
            swept = dict(self._swept)
        processes: dict[tuple[int, int], ProcessCounts] = {}
        for (func_id, bucket, tgid), total in hist_now.items():
            counts = processes.setdefault((func_id, tgid), ProcessCounts())
            if bucket < self._nbuckets:
                if total:
                    counts.buckets[bucket] = total
            elif bucket == self._slot_sum:
                counts.sum_ns = total
            elif bucket == self._slot_unwound:
                counts.unwound = total
        for key, n in swept.items():
            processes.setdefault(key, ProcessCounts()).unwound += n
        alive = {tgid: process_exists(tgid) for _, tgid in processes}
        for key, (n, _) in running.items():
            if key in processes and alive[key[1]]:  # a process that is gone runs nothing
                processes[key].in_flight = n
        i_entries = header.constant("GT_FC_ENTRIES")
        entries = [fc_sums[fn.func_id * fc_n + i_entries] for fn in self.functions]
        return CumulativeCounts(processes, entries, alive)

    def in_flight(self) -> list[int]:
        """Per func_id: the calls running now in processes that still exist, all processes together."""
        running = self.sweep()
        out = [0] * len(self.functions)
        alive = {tgid: process_exists(tgid) for _, tgid in running}
        for (func_id, tgid), (n, _) in running.items():
            if func_id < len(out) and alive[tgid]:  # a process that is gone runs nothing
                out[func_id] += n
        return out

    def retire_exited(self, keep_s: float) -> list[int]:
        """Deletes the kernel's keys of processes gone for at least keep_s seconds; returns their pids.

        Their counts since the last reset stay in read()'s next result. For
        every-process mode, where new processes keep adding keys.
        """
        with self._lock:
            now = time.monotonic()
            hist_now = self._hist()
            for tgid in {tgid for _, _, tgid in hist_now}:
                if process_exists(tgid):
                    self._dead_since.pop(tgid, None)
                else:
                    self._dead_since.setdefault(tgid, now)
            expired = {tgid for tgid, since in self._dead_since.items() if now - since >= keep_s}
            if not expired:
                return []
            map_fd = self.loaded().map_fd("gt_hist")
            for key, total in hist_now.items():
                func_id, bucket, tgid = key
                if tgid not in expired:
                    continue
                delta = total - self._hist_base.pop(key, 0)
                if delta > 0 and (bucket < self._nbuckets or bucket == self._slot_unwound):
                    self._retired[key] = self._retired.get(key, 0) + delta
                self._sys.map_delete_elem(map_fd, HIST_KEY.pack(*key))
            for tgid in expired:
                del self._dead_since[tgid]
            self._swept = {key: n for key, n in self._swept.items() if key[1] not in expired}
            return sorted(expired)

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side.

        A call entered before gotrace attached shows as a return without entry.
        """
        return self.counters("gt_stats", STAT_NAMES)
