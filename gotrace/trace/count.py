"""The count program (probes/count.bpf.c) on the tracer life-cycle: calls per function, one entry probe per call.

No return probe and no goroutine key: each call costs one trap, the
cheapest trace there is, so it is the first look at a busy process (what is
hot?). The calls are the entry hits the cost guard counts anyway
(gt_func_counts, cumulative, in memory shared with the kernel); this module reports differences since the
last reset.
"""

from __future__ import annotations

from gotrace.trace.tracer import Tracer

__all__ = ["CountTracer"]


class CountTracer(Tracer):
    """Calls per function of the given functions of one Go binary (entry sites only)."""

    PROGRAM = "count"
    ENTRY_PROGRAM = b"gt_count_entry"
    RETURN_PROGRAM = None
    DETACHABLE = True

    def __init__(self, gobin, functions, *, pid, mode="auto") -> None:
        super().__init__(gobin, functions, pid=pid, mode=mode)
        self._base = [0] * len(self.functions)

    def calls(self) -> list[int]:
        """Calls per func_id so far, cumulative: the entry hits."""
        return self.hits()[0]

    def read(self, *, reset: bool) -> list[int]:
        """Calls per func_id since the last reset."""
        now = self.calls()
        counts = [total - base for total, base in zip(now, self._base)]
        if reset:
            self._base = now
        return counts
