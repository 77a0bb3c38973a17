"""The latency program (probes/latency.bpf.c) on the tracer life-cycle: per-function histograms read from the kernel.

The BPF side pairs each call's entry and `ret` by goroutine and aggregates
latencies into log-linear buckets (probes/gotrace.h) in per-CPU maps, one
histogram per (function, process), with the exact sum of the latencies and
the count of calls found unwound beside it; no event per call reaches user
space. This module reads those maps two ways:

* read(reset=...): per function, all processes together, since the last
  reset (the reports of `gotrace latency`, `-i` resets);
* read_cumulative(): per (function, process), since the probes were attached,
  never reset (what a Prometheus exporter serves).

Both may be called from different threads. In every-process mode,
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
from gotrace.trace.tracer import Tracer, TracedFunction

__all__ = ["CumulativeCounts", "FunctionCounts", "LatencyTracer", "ProcessCounts", "TracedFunction"]

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
START_VAL = struct.Struct("<QII")  # struct gt_start_val: start_ns, func_id, gen
START_SLOT = struct.Struct("<QQIIQII")  # struct gt_start_slot: tag, key (goid, tgid, depth), val (start_ns, func_id, gen)


@dataclass
class FunctionCounts:
    """One function's calls since the last reset, all processes together."""

    buckets: dict[int, int]  # bucket index (probes/gotrace.h scheme) -> count
    unmatched: int  # entered, never seen returning (panic unwinds, evicted, still open at final report)


@dataclass
class ProcessCounts:
    """One function in one process, cumulative since the probes were attached."""

    buckets: dict[int, int] = field(default_factory=dict)  # bucket index -> calls returned
    sum_ns: int = 0  # exact sum of those calls' latencies
    unwound: int = 0  # calls found unwound without returning (panics); see GT_HIST_SLOT_UNWOUND
    in_flight: int = 0  # starts the kernel holds: calls running now (and unwound frames not yet found)


@dataclass
class CumulativeCounts:
    """Everything since the probes were attached, never reset."""

    processes: dict[tuple[int, int], ProcessCounts]  # (func_id, tgid) -> counts
    entries: list[int]  # per func_id: entry probe hits on a goroutine of a traced process
    alive: dict[int, bool]  # tgid -> whether the process still exists


def hist_entries(nfuncs: int) -> int:
    """Room in the histogram map for nfuncs functions: distinct (function, bucket, process) keys at once."""
    return min(header.constant("GT_HIST_MAX_ENTRIES"),
               max(header.constant("GT_HIST_MIN_ENTRIES"), nfuncs * header.constant("GT_HIST_ENTRIES_PER_FUNC")))


def process_exists(tgid: int) -> bool:
    """Whether a process with this pid exists (zombies included)."""
    return os.path.exists(f"/proc/{tgid}")


class LatencyTracer(Tracer):
    """Per-goroutine latency histograms of the given functions of one Go binary."""

    PROGRAM = "latency"
    ENTRY_PROGRAM = b"gt_entry"
    RETURN_PROGRAM = b"gt_return"

    def __init__(self, gobin, functions, *, pid, mode="auto") -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        self._nbuckets = header.constant("GT_HIST_NBUCKETS")
        self._slot_sum = header.constant("GT_HIST_SLOT_SUM")
        self._slot_unwound = header.constant("GT_HIST_SLOT_UNWOUND")
        if self._slot_sum < self._nbuckets or self._slot_unwound < self._nbuckets:
            raise ValueError("probes/gotrace.h: GT_HIST_SLOT_* must not be bucket indexes")
        self._lock = threading.Lock()  # read(), read_cumulative() and retire_exited() may run on two threads
        self._hist_base: dict[tuple[int, int, int], int] = {}  # (func_id, bucket, tgid) -> count at last reset
        self._fc_base: list[int] = [0] * (len(self.functions) * header.constant("GT_FC_N"))
        self._retired: dict[tuple[int, int], int] = {}  # (func_id, bucket) -> counts of deleted keys since last reset
        self._dead_since: dict[int, float] = {}  # tgid -> when it was first seen gone (monotonic s)
        self._gen = 0

    def map_sizes(self) -> dict[str, int]:
        return {"gt_func_counts": len(self.functions) * header.constant("GT_FC_N"),
                "gt_hist": hist_entries(len(self.functions))}

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
        loaded = self.loaded()
        if reset:
            # New generation first: returns of calls entered from now on count toward the next report.
            self._gen += 1
            self._sys.map_update_elem(loaded.map_fd("gt_gen"), struct.pack("<I", 0),
                                      struct.pack("<I", self._gen & 0xFFFFFFFF))
        fc_n = header.constant("GT_FC_N")
        _, fc_sums = self.percpu_sums("gt_func_counts", 4, len(self.functions) * fc_n)
        hist_now = self._hist()
        result = {fn.func_id: FunctionCounts(buckets={}, unmatched=0) for fn in self.functions}
        for (func_id, bucket), count in self._retired.items():
            result[func_id].buckets[bucket] = count
        for key, total in hist_now.items():
            func_id, bucket, _ = key
            delta = total - self._hist_base.get(key, 0)
            if delta > 0 and bucket < self._nbuckets and func_id in result:
                buckets = result[func_id].buckets
                buckets[bucket] = buckets.get(bucket, 0) + delta
        i_entries, i_returns = header.constant("GT_FC_ENTRIES"), header.constant("GT_FC_RETURNS_SAME_GEN")
        for func_id, counts in result.items():
            base = func_id * fc_n
            entries = fc_sums[base + i_entries] - self._fc_base[base + i_entries]
            returns = fc_sums[base + i_returns] - self._fc_base[base + i_returns]
            counts.unmatched = max(0, entries - returns)
        if reset:
            self._hist_base = hist_now
            self._fc_base = fc_sums
            self._retired = {}
        return result

    def read_cumulative(self) -> CumulativeCounts:
        """Per (func_id, tgid): buckets, exact latency sum, unwound and in-flight calls, since attach; never reset.

        Processes whose keys retire_exited() deleted are no longer listed.
        """
        with self._lock:
            hist_now = self._hist()
            fc_n = header.constant("GT_FC_N")
            _, fc_sums = self.percpu_sums("gt_func_counts", 4, len(self.functions) * fc_n)
            open_calls = self._open_calls()
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
        alive = {tgid: process_exists(tgid) for _, tgid in processes}
        for key, n in open_calls.items():
            if key in processes and alive[key[1]]:  # a process that is gone runs nothing
                processes[key].in_flight = n
        i_entries = header.constant("GT_FC_ENTRIES")
        entries = [fc_sums[fn.func_id * fc_n + i_entries] for fn in self.functions]
        return CumulativeCounts(processes, entries, alive)

    def _open_calls(self) -> dict[tuple[int, int], int]:
        """(func_id, tgid) -> starts held now, in gt_start_slots (a tag not 0) and in gt_starts."""
        map_fd = self.loaded().map_fd("gt_starts")
        keys, values, _ = self._sys.map_lookup_batch(map_fd, START_KEY.size, START_VAL.size,
                                                     header.constant("GT_START_ENTRIES"))
        out: dict[tuple[int, int], int] = {}
        for (_, tgid, _), (_, func_id, _) in zip(START_KEY.iter_unpack(keys), START_VAL.iter_unpack(values)):
            out[(func_id, tgid)] = out.get((func_id, tgid), 0) + 1
        n_slots = header.constant("GT_START_SLOTS")
        _, slots, _ = self._sys.map_lookup_batch(self.loaded().map_fd("gt_start_slots"), 4, START_SLOT.size, n_slots)
        for tag, _, tgid, _, _, func_id, _ in START_SLOT.iter_unpack(slots):
            if tag:
                out[(func_id, tgid)] = out.get((func_id, tgid), 0) + 1
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
                if delta > 0 and bucket < self._nbuckets:
                    self._retired[(func_id, bucket)] = self._retired.get((func_id, bucket), 0) + delta
                self._sys.map_delete_elem(map_fd, HIST_KEY.pack(*key))
            for tgid in expired:
                del self._dead_since[tgid]
            return sorted(expired)

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side.

        LRU evictions of start times are not visible to BPF; an evicted call
        shows as a return without entry (and as unmatched for its function).
        """
        return self.counters("gt_stats", STAT_NAMES)
