"""The latency program (probes/latency.bpf.c) on the tracer life-cycle: per-function histograms read from the kernel.

The BPF side pairs each call's entry and `ret` by goroutine and aggregates
latencies into log-linear buckets (probes/gotrace.h) in per-CPU maps; no
event per call reaches user space. This module reads those maps: counts per
bucket and per function since the last reset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gotrace import header
from gotrace.trace.tracer import Tracer, TracedFunction

__all__ = ["FunctionCounts", "LatencyTracer", "TracedFunction"]

STAT_NAMES = {
    "GT_STAT_NO_GOROUTINE": "no_goroutine",
    "GT_STAT_READ_FAULT": "read_faults",
    "GT_STAT_STALE_STARTS": "stale_starts",
    "GT_STAT_RETURNS_WITHOUT_ENTRY": "returns_without_entry",
    "GT_STAT_START_UPDATE_FAILED": "start_update_failed",
    "GT_STAT_HIST_FULL": "histogram_full",
}


@dataclass
class FunctionCounts:
    """One function's calls since the last reset."""

    buckets: dict[int, int]  # bucket index (probes/gotrace.h scheme) -> count
    unmatched: int  # entered, never seen returning (panic unwinds, evicted, still open at final report)


def hist_entries(nfuncs: int) -> int:
    """Room in the histogram map for nfuncs functions: distinct (function, bucket) pairs over a whole run."""
    return min(header.constant("GT_HIST_MAX_ENTRIES"),
               max(header.constant("GT_HIST_MIN_ENTRIES"), nfuncs * header.constant("GT_HIST_ENTRIES_PER_FUNC")))


class LatencyTracer(Tracer):
    """Per-goroutine latency histograms of the given functions of one Go binary."""

    PROGRAM = "latency"
    ENTRY_PROGRAM = b"gt_entry"
    RETURN_PROGRAM = b"gt_return"

    def __init__(self, gobin, functions, *, pid, mode="auto") -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        self._hist_base: dict[int, int] = {}  # (bucket << 32 | func_id) -> cumulative count at last reset
        self._fc_base: list[int] = [0] * (len(self.functions) * header.constant("GT_FC_N"))
        self._gen = 0

    def map_sizes(self) -> dict[str, int]:
        return {"gt_func_counts": len(self.functions) * header.constant("GT_FC_N"),
                "gt_hist": hist_entries(len(self.functions))}

    def read(self, *, reset: bool) -> dict[int, FunctionCounts]:
        """Counts per func_id since the last reset (all functions, zero-call ones included).

        The kernel's counters are cumulative; a reset moves this tracer's baseline
        and starts a new report generation, so no call is lost between reads.
        """
        loaded = self.loaded()
        if reset:
            # New generation first: returns of calls entered from now on count toward the next report.
            self._gen += 1
            self._sys.map_update_elem(loaded.map_fd("gt_gen"), struct.pack("<I", 0),
                                      struct.pack("<I", self._gen & 0xFFFFFFFF))
        fc_n = header.constant("GT_FC_N")
        _, fc_sums = self.percpu_sums("gt_func_counts", 4, len(self.functions) * fc_n)
        hist_keys, hist_sums = self.percpu_sums("gt_hist", 8, hist_entries(len(self.functions)))
        result = {fn.func_id: FunctionCounts(buckets={}, unmatched=0) for fn in self.functions}
        hist_now: dict[int, int] = {}
        for packed, total in zip(memoryview(hist_keys).cast("Q"), hist_sums):
            hist_now[packed] = total
            delta = total - self._hist_base.get(packed, 0)
            if delta > 0:
                func_id, bucket = packed & 0xFFFFFFFF, packed >> 32
                if func_id in result:
                    result[func_id].buckets[bucket] = delta
        i_entries, i_returns = header.constant("GT_FC_ENTRIES"), header.constant("GT_FC_RETURNS_SAME_GEN")
        for func_id, counts in result.items():
            base = func_id * fc_n
            entries = fc_sums[base + i_entries] - self._fc_base[base + i_entries]
            returns = fc_sums[base + i_returns] - self._fc_base[base + i_returns]
            counts.unmatched = max(0, entries - returns)
        if reset:
            self._hist_base = hist_now
            self._fc_base = fc_sums
        return result

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side.

        LRU evictions of start times are not visible to BPF; an evicted call
        shows as a return without entry (and as unmatched for its function).
        """
        return self.counters("gt_stats", STAT_NAMES)
