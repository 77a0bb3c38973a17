"""The cost guard: what the probes cost the traced processes, and detaching the hottest functions when that exceeds the budget.

Every hit of a probe is a trap the traced thread pays for in CPU time.
gotrace.trace.cost says what one hit costs here, by the kind of the probed
instruction; the programs count hits per function and add up their cost
(probes/gotrace.h, "The cost guard's counters"), so the probes' cost over a
window is one cheap read, and the traced processes' own CPU time over the
same window comes from /proc (gotrace.trace.targetcpu). The budget
(--max-overhead PERCENT) is a share of the traced processes' CPU time: for
a service that is busy on its CPUs, the share of its CPU time that goes into
probes is about the share of throughput it loses.

check() runs every CHECK_PERIOD_S while tracing (in a thread of its own,
watching(), so that an output nobody reads cannot delay it), and after each chunk of
probes while attaching (at most every ATTACH_CHECK_PERIOD_S), so a pattern
that matches hot functions is caught within a fraction of a second, chunk
by chunk, instead of after everything is attached. Over budget, the
functions whose probes cost the most in that window are detached for real (their traps removed;
Tracer.detach) until the estimate is back under HEADROOM of the budget. Below FLOOR_SHARE_OF_CPU of one CPU nothing is detached: an
almost idle service loses nothing measurable to a few probes, whatever
share of its tiny CPU time they are.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

from gotrace.trace.cost import HitCosts, site_kinds
from gotrace.trace.targetcpu import TargetCpu

CHECK_PERIOD_S = 0.25
ATTACH_CHECK_PERIOD_S = 0.1
FLOOR_SHARE_OF_CPU = 0.005
HEADROOM = 0.8


@dataclass(frozen=True)
class Detachment:
    """One function the guard detached, and why."""

    func_id: int
    name: str
    hits_per_s: float
    share_of_target: float | None  # of the traced processes' CPU time, this function's probes alone
    total_share_of_target: float | None  # all probes, in the window that exceeded the budget
    max_overhead_pct: float
    noticed_at: float  # time.monotonic() at the end of the window that exceeded the budget
    detached_at: float  # time.monotonic() once its traps were removed

    @property
    def reason(self) -> str:
        own = "" if self.share_of_target is None else f" (about {100 * self.share_of_target:.1f}% of the target's CPU)"
        total = "" if self.total_share_of_target is None else f"{100 * self.total_share_of_target:.1f}% "
        return (f"{self.hits_per_s:,.0f} probe hits/s{own}; all probes cost {total}of the target's CPU, over the "
                f"--max-overhead budget of {self.max_overhead_pct:g}%")


@dataclass(frozen=True)
class Overhead:
    """The probes' estimated cost over an interval."""

    interval_s: float
    hits: int
    cost_ns: float  # estimated CPU time the hits took from the traced processes
    target_cpu_ns: int  # CPU time the traced processes used (probes included)

    @property
    def hits_per_s(self) -> float:
        return self.hits / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def share_of_cpu(self) -> float:
        """Estimated CPU seconds per second: a share of one CPU."""
        return self.cost_ns / (self.interval_s * 1e9) if self.interval_s > 0 else 0.0

    @property
    def share_of_target(self) -> float | None:
        """Estimated share of the traced processes' CPU time spent in probes; None when they used none."""
        return self.cost_ns / self.target_cpu_ns if self.target_cpu_ns > 0 else None


@dataclass(frozen=True)
class _Totals:
    at: float
    hits: int
    cost_ns: float
    target_cpu_ns: int


class CostGuard:
    """Estimates a tracer's overhead and, with a budget, detaches its costliest functions when it is exceeded.

    max_overhead_pct None or 0: estimate only, never detach.
    """

    def __init__(self, tracer, costs: HitCosts, max_overhead_pct: float | None, target_cpu: TargetCpu) -> None:
        self.tracer = tracer
        self.costs = costs
        self.max_overhead_pct = max_overhead_pct or None
        self.target_cpu = target_cpu
        kinds = site_kinds(tracer.binary_path, tracer.arch, [fn.entry_file_offset for fn in tracer.functions])
        self._entry_cost_ns = [costs.entry_ns(kind) for kind in kinds]
        tracer.hit_cost_ns = (self._entry_cost_ns, costs.return_ns)  # the programs add up the cost themselves
        self._last_totals = (0, 0)
        self._rank_base: tuple[list[int], list[int]] | None = None
        self._ranked_at = time.monotonic()
        self._totals = self._start = _Totals(time.monotonic(), 0, 0.0, 0)
        self._last_target_cpu_ns = 0
        self._checked_at = float("-inf")
        self.detachments: list[Detachment] = []
        self.last_window: Overhead | None = None
        self._lock = threading.Lock()  # _unreported
        self._checking = threading.Lock()  # one check at a time (the background thread's and a report's)
        self._unreported: list[list[Detachment]] = []

    def start(self) -> None:
        """Take the baseline (before attaching)."""
        self._last_target_cpu_ns = self.target_cpu.sample()
        self._totals = self._start = _Totals(time.monotonic(), 0, 0.0, 0)
        self._checked_at = self._ranked_at = time.monotonic()

    def mark(self) -> _Totals:
        """The running totals now (the hits read first; nothing detached), to measure an interval from."""
        self.check(force=True, act=False)
        return self._totals

    def since_start(self) -> Overhead:
        """The probes' cost from start() to the last check."""
        return self.overhead_since(self._start)

    def _rank(self, now: float) -> list[tuple[int, float, float]]:
        """(func_id, cost in ns/s, hits/s) of the functions hit since the last check, costliest first (the hits
        are in memory shared with the kernel: about 2 ms for 60,000 functions)."""
        entry, ret = self.tracer.hits()
        base_entry, base_ret = self._rank_base or ([0] * len(entry), [0] * len(ret))
        since_s = max(now - self._ranked_at, 1e-3)
        self._rank_base, self._ranked_at = (entry, ret), now
        return_ns = self.costs.return_ns
        ranked = []
        for func_id, (e, be, r, br, entry_ns) in enumerate(zip(entry, base_entry, ret, base_ret,
                                                               self._entry_cost_ns)):
            if e != be or r != br:
                ranked.append((func_id, ((e - be) * entry_ns + (r - br) * return_ns) / since_s,
                               ((e - be) + (r - br)) / since_s))
        ranked.sort(key=lambda item: -item[1])
        return ranked

    def overhead_since(self, mark: _Totals) -> Overhead:
        now = self._totals
        return Overhead(now.at - mark.at, now.hits - mark.hits, now.cost_ns - mark.cost_ns,
                        now.target_cpu_ns - mark.target_cpu_ns)

    @contextlib.contextmanager
    def watching(self, period_s: float = CHECK_PERIOD_S):
        """check() every period_s in a background thread for the duration of a `with`; take_detached() hands
        over what it detached."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(period_s):
                self.tracer.upkeep()
                found = self.check(force=True)
                if found:
                    with self._lock:
                        self._unreported.append(found)

        thread = threading.Thread(target=run, name="gotrace-cost-guard", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def take_detached(self) -> list[list[Detachment]]:
        """The detachments of the background checks not taken yet, one list per check."""
        with self._lock:
            found, self._unreported = self._unreported, []
        return found

    def check(self, *, force: bool = False, period_s: float = CHECK_PERIOD_S, act: bool = True) -> list[Detachment]:
        """Read the hits since the last check (if period_s has passed, or force) and, if act, detach what is over
        budget."""
        with self._checking:
            return self._check(force, period_s, act)

    def _check(self, force: bool, period_s: float, act: bool) -> list[Detachment]:
        now = time.monotonic()
        if not force and now - self._checked_at < period_s:
            return []
        hits_total, cost_total = self.tracer.cost_totals()
        target_cpu_ns = self.target_cpu.sample()
        now = time.monotonic()
        window_s = now - self._checked_at
        self._checked_at = now
        hits, cost_ns = hits_total - self._last_totals[0], cost_total - self._last_totals[1]
        self._last_totals = (hits_total, cost_total)
        cpu_ns = target_cpu_ns - self._last_target_cpu_ns
        self._last_target_cpu_ns = target_cpu_ns
        t = self._totals
        self._totals = _Totals(now, t.hits + hits, t.cost_ns + cost_ns, t.target_cpu_ns + cpu_ns)
        window = Overhead(window_s, hits, cost_ns, cpu_ns)
        self.last_window = window
        ranked = self._rank(now)  # every check: the ranking covers the same window as the totals
        if (not act or self.max_overhead_pct is None or window_s <= 0 or window.share_of_cpu < FLOOR_SHARE_OF_CPU
                or cpu_ns <= 0):
            return []
        budget_ns = self.max_overhead_pct / 100 * cpu_ns
        if cost_ns <= budget_ns:
            return []
        # Over budget: the functions whose probes cost the most in this window go first.
        detached_ids = self.tracer.detached_ids()
        victims = []
        excess_ns_per_s = (cost_ns - HEADROOM * budget_ns) / window_s
        for func_id, cost_per_s, hits_per_s in ranked:
            if excess_ns_per_s <= 0:
                break
            if func_id in detached_ids:
                continue
            victims.append((func_id, cost_per_s, hits_per_s))
            excess_ns_per_s -= cost_per_s
        if not victims:
            return []
        self.tracer.detach([func_id for func_id, _, _ in victims])
        done = time.monotonic()
        cpu_per_s = cpu_ns / window_s
        found = [Detachment(func_id, self.tracer.functions[func_id].name, hits_per_s, cost_per_s / cpu_per_s,
                            window.share_of_target, self.max_overhead_pct, now, done)
                 for func_id, cost_per_s, hits_per_s in victims]
        self.detachments += found
        return found
