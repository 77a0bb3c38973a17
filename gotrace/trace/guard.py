"""The cost guard: what the probes cost the traced processes, and detaching the hottest functions when that exceeds the budget.

Every hit of a probe is a trap the traced thread pays for in CPU time.
gotrace.trace.cost says what one hit costs here, by the kind of the probed
instruction; the programs count hits per function and add up their cost
(probes/gotrace.h, "The cost guard's counters"), so the probes' cost over a
window is one cheap read, and the traced processes' own CPU time over the
same window comes from /proc (gotrace.trace.targetcpu). A probe that is no
traced function's (latency's on runtime.goexit1, hit at every goroutine
exit) counts its hits and cost apart (Tracer.fixed_site_offsets,
GT_COST_FIXED_*): they are in every estimate, but the budget is for what
detaching can take back, the traced functions' probes. The budget
(--max-overhead PERCENT) is a share of the traced processes' CPU time: for
a service that is busy on its CPUs, the share of its CPU time that goes into
probes is about the share of throughput it loses.

check() runs in a thread of its own while tracing (watching(), so that an
output nobody reads cannot delay it), and after each chunk of probes while
attaching, so a pattern that matches hot functions is caught within a
fraction of a second, chunk by chunk, instead of after everything is
attached. Over budget, the functions whose probes cost the most in that
window are detached for real (their traps removed; Tracer.detach) until the
estimate is back under HEADROOM of the budget. Below FLOOR_SHARE_OF_CPU of
one CPU nothing is detached: an almost idle service loses nothing measurable
to a few probes, whatever share of its tiny CPU time they are.

While the guard is young (attaching, and YOUNG_S after attaching ended or
after its last detachment, whichever is later) it checks every
YOUNG_CHECK_PERIOD_S and detaches down to YOUNG_HEADROOM of the budget: in
the first seconds functions that run only in some phases (a garbage
collection's marking, sweeping) become hot one phase after another, and each
surge costs the service until the next check. A young window that costs more
than SURGE_FACTOR times the budget detaches down to SURGE_HEADROOM of it: when
load starts on a service traced with a wide pattern, the traps of the hottest
functions (the runtime's, some under its locks) stall the service, so the
functions it calls per request are hit far less often in that window than
they will be once it runs again, and going down to YOUNG_HEADROOM only would
take one check per layer of them (on caddy, about ten checks, half a second at
a few percent of its throughput). SURGE_FACTOR 2 or 4 made no difference
above this VM's noise: `'runtime.*'` kept 60-90% of caddy's throughput in the
first 5 s of load with 4 (5 runs), 62-80% with 2 (4 runs).
Once nothing has been detached
for YOUNG_S, it checks every CHECK_PERIOD_S. A check is cheap: one per-CPU
map read, the traced processes' schedstat, and a copy of the per-function
hits; the functions are ranked only when the budget is exceeded, and only
those whose hits changed (compared block by block) are looked at.

When the traced processes are busy as attaching starts, or in a service
traced with IDLE_PROBATION_MIN_FUNCS of them or more, the functions likely
to be hot (likely_hot_first) go on probation (_probation_for): their entry
probes only, whose hits are counted and cost a tenth of a timed call's on a
`push`. Once the processes have been busy for PROBATION_S, a check detaches
those whose calls, timed, would each cost more than
PROBATION_MAX_BUDGET_SHARE of the budget by itself, and times the calls of
the others that were called (Tracer.promote, PROMOTE_MAX_PER_CHECK at a
time), which the checks then watch like any: a busy service is spared the
stall of timing the calls of its hottest runtime functions until the guard
has seen them, and a service idle as tracing starts the stall when load
comes. In a service traced with DEFER_RETURNS_MIN_FUNCS functions or more,
the others go on probation too, until they are called: the return probes of
the functions never called are never registered (_probation_for).

The background thread runs at nice GUARD_NICE (when gotrace may raise its
priority, as root may): on a service that keeps every CPU busy, a check at
the default priority waits behind the service's threads, and so does the
relinking that removes a hot function's traps, while every hit of that
function costs the service. A check takes well under a millisecond of CPU;
detaching is the work that ends the cost.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace import header
from gotrace.binary.dwarfinfo import package_of
from gotrace.trace.cost import HitCosts, site_kinds
from gotrace.trace.priority import set_thread_nice
from gotrace.trace.targetcpu import TargetCpu

CHECK_PERIOD_S = 0.25
YOUNG_CHECK_PERIOD_S = 0.05
YOUNG_S = 5.0
FLOOR_SHARE_OF_CPU = 0.005
HEADROOM = 0.8
YOUNG_HEADROOM = 0.5
SURGE_FACTOR = 2.0
SURGE_HEADROOM = 0.05
GUARD_NICE = -10
ATTACH_PAUSE_MAX_S = 1.0
ATTACH_DUTY = 0.25
BUSY_SHARE_OF_CPU = 0.2
HOT_ATTACH_CHECK_PERIOD_S = 0.02
PROBATION_S = 0.25
PROBATION_MAX_BUDGET_SHARE = 0.5
PROBATION_RESTART_S = 1.0
PROMOTE_MAX_PER_CHECK = 256
PROBATION_CHECK_PERIOD_S = 0.04  # under YOUNG_CHECK_PERIOD_S: every young check, every other while attaching
IDLE_PROBATION_MIN_FUNCS = 64
DEFER_RETURNS_MIN_FUNCS = 4096
_RANK_BLOCK_FUNCS = 256  # functions per block compared at once when looking for the ones hit in a window
# The packages a Go service runs on every request and in every garbage collection: the runtime and what it rests
# on. Tracing '*' on caddy under load, 618 of the 799 functions the guard detached were in these packages (3,124 of
# the 60,588 traced), 140 more in the rest of the standard library (8,897 traced), 41 in the other 48,567.
_HOT_PRONE_PACKAGES = frozenset({"runtime", "sync", "sync/atomic", "time", "context", "syscall"})
_HOT_PRONE_PREFIXES = ("internal/", "runtime/", "vendor/")


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
    # Detached at the end of its probation: hits_per_s and share_of_target are what timing its calls would cost
    # (from its entry hits), more than PROBATION_MAX_BUDGET_SHARE of the budget.
    on_probation: bool = False

    @property
    def reason(self) -> str:
        own = "" if self.share_of_target is None else f" (about {100 * self.share_of_target:.1f}% of the target's CPU)"
        if self.on_probation:
            return (f"timing its calls would cost {self.hits_per_s:,.0f} probe hits/s{own}, more than "
                    f"{100 * PROBATION_MAX_BUDGET_SHARE:g}% of the --max-overhead budget of {self.max_overhead_pct:g}% "
                    "by itself (from its entry probe's hits, counted on probation)")
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
    fixed_hits: int = 0  # of `hits`, those of the probes that are no traced function's (goroutine exits)

    @property
    def hits_per_s(self) -> float:
        return self.hits / self.interval_s if self.interval_s > 0 else 0.0

    @property
    def fixed_hits_per_s(self) -> float:
        return self.fixed_hits / self.interval_s if self.interval_s > 0 else 0.0

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
    fixed_hits: int = 0


@dataclass(frozen=True)
class _Probation:
    """A function on probation since `since` (time.monotonic()), its entry hits then, and when the traced processes'
    CPU time was last taken before that (cpu_at), and what it was (cpu_ns)."""

    since: float
    entries: int
    cpu_at: float
    cpu_ns: int
    until_called: bool = False  # not likely hot: it ends PROBATION_S after the function is first called


class CostGuard:
    """Estimates a tracer's overhead and, with a budget, detaches its costliest functions when it is exceeded.

    max_overhead_pct None or 0: estimate only, never detach.
    """

    def __init__(self, tracer, costs: HitCosts, max_overhead_pct: float | None, target_cpu: TargetCpu, *,
                 young_s: float = YOUNG_S, service: bool = False) -> None:
        self.tracer = tracer
        self.costs = costs
        self.max_overhead_pct = max_overhead_pct or None
        self.target_cpu = target_cpu
        kinds = site_kinds(tracer.binary_path, tracer.arch, [fn.entry_file_offset for fn in tracer.functions])
        self._entry_cost_ns = [costs.entry_ns(kind) for kind in kinds]
        tracer.hit_cost_ns = (self._entry_cost_ns, costs.return_ns)  # the programs add up the cost themselves
        fixed = tracer.fixed_site_offsets()
        tracer.fixed_hit_cost_ns = (costs.entry_ns(site_kinds(tracer.binary_path, tracer.arch, fixed)[0])
                                    if fixed else None)
        hot_first = likely_hot_first(tracer.functions) if max_overhead_pct else []
        if hot_first:
            tracer.hot_first = hot_first
        self._hot_ids = frozenset(hot_first)  # attached first, at full speed (after_chunk)
        self._probation: dict[int, _Probation] = {}  # the functions on probation
        self._probation_checked_at = float("-inf")  # _due_probation(): when it last looked
        self._probation_base: bytes | None = None  # _due_probation(): gt_func_counts then
        self._look_next: set[int] = set()  # due, left for the next check (PROMOTE_MAX_PER_CHECK), or called
        if max_overhead_pct and getattr(tracer, "RETURN_PROGRAM", None) is not None:
            tracer.probation_for = self._probation_for
        # service: the traced processes ran before tracing (-p, or every process running the binary), load may
        # come at any time; with that many likely hot functions, they go on probation even while it is idle
        self._probation_while_idle = service and len(hot_first) >= IDLE_PROBATION_MIN_FUNCS
        # and with that many functions, every function's return probes wait until it is called (_probation_for)
        self._defer_returns = service and len(tracer.functions) >= DEFER_RETURNS_MIN_FUNCS
        self._last_totals = (0, 0, 0, 0)  # cost_totals()
        self._hits_base: bytes | None = None  # gt_func_counts at the last check
        self._totals = self._start = _Totals(time.monotonic(), 0, 0.0, 0)
        self._last_target_cpu_ns = 0
        self._checked_at = float("-inf")
        self.young_s = young_s
        self._attached_at: float | None = None  # None while attaching
        self._last_detached_at = float("-inf")
        self.detachments: list[Detachment] = []
        self.last_window: Overhead | None = None
        self._lock = threading.Lock()  # _unreported
        self._checking = threading.Lock()  # one check at a time (the background thread's and a report's)
        self._unreported: list[list[Detachment]] = []
        self._chunk_done_at = time.monotonic()  # after_chunk(): when the last chunk's check and pause ended
        self._attach_debt_s = 0.0  # after_chunk(): pause owed to keep attaching to ATTACH_DUTY of the time

    def start(self) -> None:
        """Take the baseline (before attaching)."""
        self._last_target_cpu_ns = self.target_cpu.sample()
        self._totals = self._start = _Totals(time.monotonic(), 0, 0.0, 0)
        self._checked_at = self._chunk_done_at = time.monotonic()

    def attached(self) -> _Totals:
        """Attaching is over: mark() now, and stay young for YOUNG_S from here."""
        totals = self.mark()
        self._attached_at = time.monotonic()
        return totals

    def young(self, now: float | None = None) -> bool:
        """Attaching, or less than young_s (YOUNG_S) since attaching ended or since the last detachment."""
        if self._attached_at is None:
            return True
        now = time.monotonic() if now is None else now
        return now - max(self._attached_at, self._last_detached_at) < self.young_s

    def period_s(self) -> float:
        """Seconds until the next check is due: YOUNG_CHECK_PERIOD_S while young, else CHECK_PERIOD_S."""
        return YOUNG_CHECK_PERIOD_S if self.young() else CHECK_PERIOD_S

    def mark(self) -> _Totals:
        """The running totals now (the hits read first; nothing detached), to measure an interval from."""
        self.check(force=True, act=False)
        return self._totals

    def since_start(self) -> Overhead:
        """The probes' cost from start() to the last check."""
        return self.overhead_since(self._start)

    def _rank(self, base: bytes | None, now: bytes, window_s: float) -> list[tuple[int, float, float]]:
        """(func_id, cost in ns/s, hits/s) of the functions hit between two copies of gt_func_counts, costliest
        first."""
        n = header.constant("GT_FC_N")
        entries, returns = header.constant("GT_FC_ENTRIES"), header.constant("GT_FC_RETURNS")
        counts, before = memoryview(now).cast("Q"), memoryview(base or bytes(len(now))).cast("Q")
        return_ns = self.costs.return_ns
        since_s = max(window_s, 1e-3)
        ranked = []
        for func_id in self._maybe_hit(base, now):
            e = counts[func_id * n + entries] - before[func_id * n + entries]
            r = counts[func_id * n + returns] - before[func_id * n + returns]
            if e or r:
                ranked.append((func_id, (e * self._entry_cost_ns[func_id] + r * return_ns) / since_s,
                               (e + r) / since_s))
        ranked.sort(key=lambda item: -item[1])
        return ranked

    def _maybe_hit(self, base: bytes | None, now: bytes) -> Iterator[int]:
        """Ids of the functions that may have been hit between two copies of gt_func_counts: those of the blocks
        of _RANK_BLOCK_FUNCS functions whose bytes changed (in a window, few of 60,000 functions are hit)."""
        n = header.constant("GT_FC_N")
        block_bytes = _RANK_BLOCK_FUNCS * n * 8
        n_funcs = min(len(self._entry_cost_ns), len(now) // (n * 8))
        for start in range(0, len(now), block_bytes):
            if base is not None and now[start:start + block_bytes] == base[start:start + block_bytes]:
                continue
            first = start // (n * 8)
            yield from range(first, min(first + _RANK_BLOCK_FUNCS, n_funcs))

    def overhead_since(self, mark: _Totals) -> Overhead:
        now = self._totals
        return Overhead(now.at - mark.at, now.hits - mark.hits, now.cost_ns - mark.cost_ns,
                        now.target_cpu_ns - mark.target_cpu_ns, now.fixed_hits - mark.fixed_hits)

    @contextlib.contextmanager
    def watching(self, period_s: float | None = None):
        """check() in a background thread for the duration of a `with`, every period_s (None: every
        period_s(), faster while young); take_detached() hands over what it detached."""
        stop = threading.Event()

        def run() -> None:
            set_thread_nice(GUARD_NICE)  # when gotrace may raise it (root may)
            while not stop.wait(self.period_s() if period_s is None else period_s):
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

    def after_chunk(self, func_ids=()) -> list[list[Detachment]]:
        """While attaching, after each chunk of probes (its functions given): check, if one is due. The
        detachments, one list per check.

        On a service under load, each probe registered takes the process's mmap lock for writing, a thread that
        hits a probe meanwhile may wait for it, and the registering itself takes a CPU. So while the traced
        processes are busy (BUSY_SHARE_OF_CPU of one CPU in the last window), the functions unlikely to be
        hot (not in tracer.hot_first) are attached during ATTACH_DUTY of the time only, and after a check that
        detached some of them nothing more is attached until a window is back within the budget
        (ATTACH_PAUSE_MAX_S at most): registering more while hot probes fire stalls the service far beyond the
        traps' own cost. The likely hot ones (attached first: gotrace.bpf.uprobes.plan_chunks) go at full
        speed, checked every HOT_ATTACH_CHECK_PERIOD_S: the sooner they are all on and checked, the sooner the
        guard has detached those that are hot, and the shorter the stall their surge causes. (On caddy under
        load, tracing '*': pacing the standard library's functions too, after the runtime's, left a 2 s stall
        and then 8 s at 62-73% of the throughput; at full speed, a 4 s stall and the rest at 82% or more, the
        attach 10 s shorter.)"""
        worked_s = time.monotonic() - self._chunk_done_at  # attaching the chunk took this long
        likely_hot = not self._hot_ids.isdisjoint(func_ids)
        found = self.check(period_s=HOT_ATTACH_CHECK_PERIOD_S if likely_hot and self._busy() else
                           YOUNG_CHECK_PERIOD_S)
        rounds = [found] if found else []
        busy = self._busy()
        if busy and not likely_hot:
            paused_until = time.monotonic() + ATTACH_PAUSE_MAX_S
            while found and time.monotonic() < paused_until:
                time.sleep(YOUNG_CHECK_PERIOD_S)
                found = self.check(force=True)
                if found:
                    rounds.append(found)
            self._attach_debt_s += worked_s * (1 / ATTACH_DUTY - 1)
            if self._attach_debt_s >= 0.01:
                time.sleep(self._attach_debt_s)
                self._attach_debt_s = 0.0
        self._chunk_done_at = time.monotonic()
        return rounds

    def _probation_for(self, func_ids) -> bool:
        """Asked by the tracer before it attaches a chunk: whether these functions go on probation. Those likely
        to be hot do when the traced processes are busy, or, in a service (-p, or every process running the
        binary) traced with IDLE_PROBATION_MIN_FUNCS of them or more, even while it is idle: only their entry
        probes are attached, and their calls counted; once the processes have been busy for PROBATION_S, a
        check detaches those whose calls, timed, would cost more than half the budget each (_settle_probation),
        and times the others' calls (promotes them). An entry hit costs 0.6-0.8 us on a `push`, a timed call
        11-12 us (its return instruction is stepped): learning which functions are hot costs a busy service a
        tenth as much. (When load starts on an idle caddy traced with `'runtime.*'`, its worst half-second
        went from 4-6% of the untraced throughput to 56-86% with probation while idle.)

        In a service traced with DEFER_RETURNS_MIN_FUNCS functions or more, the others go on probation too,
        until they are called (until_called): PROBATION_S after its first call, busy or not, a function is
        settled as above. Most of them are never called, and their return probes are never registered:
        registering a probe takes the service's mmap lock for writing, and every probe hit and page fault of
        the service waits for it. (`'*'` on caddy: 60,588 functions, 167,620 probe sites, of which the 62,000
        entries only are registered while attaching; under load about 800 functions are called.)"""
        if not self._hot_ids.isdisjoint(func_ids):
            if self.last_window is None:  # attaching starts: how busy are they?
                time.sleep(max(0.0, YOUNG_CHECK_PERIOD_S - (time.monotonic() - self._checked_at)))
                self.check(force=True, act=False)
            if self._busy() or self._probation_while_idle:
                # never attached before: no entry hit yet; busy or not is measured from the last check on
                on = _Probation(time.monotonic(), 0, self._checked_at, self._last_target_cpu_ns)
                self._probation.update(dict.fromkeys(func_ids, on))
                return True
        if not self._defer_returns:
            return False
        on = _Probation(time.monotonic(), 0, self._checked_at, self._last_target_cpu_ns, until_called=True)
        self._probation.update(dict.fromkeys(func_ids, on))
        return True

    def _due_probation(self, now: float, hits_now: bytes, target_cpu_ns: int) -> dict[int, tuple[float, _Probation]]:
        """The functions whose probation is over (taken off it), with their calls per second on it (from their
        entry hits): those called while on it for PROBATION_S or more while the traced processes used
        BUSY_SHARE_OF_CPU of a CPU or more (until_called: PROBATION_S after they were first called, busy or
        not). The others on it that long start over (their calls and the processes' CPU counted from now): when
        not called (timing a function that is not called would only cost the registering of its return probes),
        after PROBATION_RESTART_S when the processes were less busy. Those detached meanwhile are left out. Every
        PROBATION_CHECK_PERIOD_S at most, it looks only at the functions hit since it last looked (and those left
        to promote, and those called until_called and not due yet): on `'*'`, some 12,000 likely hot functions
        are on probation, most never called, and looking at them all at every check took 30% of a CPU. (So a
        likely hot function called, and then no more, stays on probation, and one called after a quiet spell
        starts over then; an until_called one is looked at again until it is due.)"""
        if not self._probation or now - self._probation_checked_at < PROBATION_CHECK_PERIOD_S:
            return {}
        n, entries = header.constant("GT_FC_N"), header.constant("GT_FC_ENTRIES")
        counts = memoryview(hits_now).cast("Q")
        looked_at = {func_id for func_id in self._maybe_hit(self._probation_base, hits_now)
                     if func_id in self._probation} | (self._look_next & self._probation.keys())
        last_looked_at = self._probation_checked_at
        self._probation_checked_at, self._probation_base, self._look_next = now, hits_now, set()
        if not looked_at:
            return {}
        detached_ids = self.tracer.detached_ids()
        due: dict[int, tuple[float, _Probation]] = {}
        for func_id in looked_at:
            on = self._probation[func_id]
            calls = counts[func_id * n + entries] - on.entries
            if func_id in detached_ids:
                del self._probation[func_id]
            elif on.until_called:
                if not calls:
                    continue
                if now - on.since >= PROBATION_RESTART_S and last_looked_at > on.since:
                    # first called since it was last looked at: its calls per second are counted from then
                    on = self._probation[func_id] = _Probation(last_looked_at, on.entries, on.cpu_at, on.cpu_ns,
                                                               until_called=True)
                if now - on.since >= PROBATION_S:
                    del self._probation[func_id]
                    due[func_id] = (calls / (now - on.since), on)
                else:
                    self._look_next.add(func_id)
            elif now - on.since >= PROBATION_S:
                busy = (target_cpu_ns - on.cpu_ns) / (max(now - on.cpu_at, 1e-3) * 1e9) >= BUSY_SHARE_OF_CPU
                if busy and calls:
                    del self._probation[func_id]
                    due[func_id] = (calls / (now - on.since), on)
                elif busy or now - on.since >= PROBATION_RESTART_S:
                    self._probation[func_id] = _Probation(now, counts[func_id * n + entries], now, target_cpu_ns)
        return due

    def _busy(self) -> bool:
        """Whether the traced processes used BUSY_SHARE_OF_CPU of one CPU or more in the last window."""
        window = self.last_window
        return (window is not None and window.interval_s > 0
                and window.target_cpu_ns / (window.interval_s * 1e9) >= BUSY_SHARE_OF_CPU)

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
        hits_now = self.tracer.hit_counts_bytes()
        hits_total, cost_total, fixed_hits_total, fixed_total = self.tracer.cost_totals()
        target_cpu_ns = self.target_cpu.sample()
        now = time.monotonic()
        window_s = now - self._checked_at
        self._checked_at = now
        hits, cost_ns = hits_total - self._last_totals[0], cost_total - self._last_totals[1]
        fixed_hits, fixed_ns = fixed_hits_total - self._last_totals[2], fixed_total - self._last_totals[3]
        self._last_totals = (hits_total, cost_total, fixed_hits_total, fixed_total)
        cpu_ns = target_cpu_ns - self._last_target_cpu_ns
        self._last_target_cpu_ns = target_cpu_ns
        t = self._totals
        self._totals = _Totals(now, t.hits + hits, t.cost_ns + cost_ns, t.target_cpu_ns + cpu_ns,
                               t.fixed_hits + fixed_hits)
        window = Overhead(window_s, hits, cost_ns, cpu_ns, fixed_hits)
        self.last_window = window
        hits_base, self._hits_base = self._hits_base, hits_now  # a ranking covers the same window as the totals
        due = self._due_probation(now, hits_now, target_cpu_ns) if act else {}
        settled = self._settle_probation(due, now, window)
        if (not act or self.max_overhead_pct is None or window_s <= 0 or window.share_of_cpu < FLOOR_SHARE_OF_CPU
                or cpu_ns <= 0):
            return settled
        # The budget is for the traced functions' probes, what detaching can take back: the fixed probes'
        # share is in every estimate shown, never a reason to detach a function.
        budget_ns = self.max_overhead_pct / 100 * cpu_ns
        cost_ns -= fixed_ns
        if cost_ns <= budget_ns:
            return settled
        # Over budget: the functions whose probes cost the most in this window go first.
        detached_ids = self.tracer.detached_ids()
        victims = []
        headroom = HEADROOM
        if self.young(now):
            headroom = SURGE_HEADROOM if cost_ns > SURGE_FACTOR * budget_ns else YOUNG_HEADROOM
        excess_ns_per_s = (cost_ns - headroom * budget_ns) / window_s
        for func_id, cost_per_s, hits_per_s in self._rank(hits_base, hits_now, window_s):
            if excess_ns_per_s <= 0:
                break
            if func_id in detached_ids:
                continue
            victims.append((func_id, cost_per_s, hits_per_s))
            excess_ns_per_s -= cost_per_s
        if not victims:
            return settled
        self.tracer.detach([func_id for func_id, _, _ in victims])
        done = time.monotonic()
        cpu_per_s = cpu_ns / window_s
        found = [Detachment(func_id, self.tracer.functions[func_id].name, hits_per_s, cost_per_s / cpu_per_s,
                            window.share_of_target, self.max_overhead_pct, now, done)
                 for func_id, cost_per_s, hits_per_s in victims]
        self.detachments += found
        self._last_detached_at = done
        return settled + found

    def _settle_probation(self, settling: dict[int, tuple[float, _Probation]], now: float, window: Overhead
                          ) -> list[Detachment]:
        """End the probation of the functions settling (func_id -> (calls per second on it, its probation)):
        detach those whose calls, timed, would cost more than PROBATION_MAX_BUDGET_SHARE of the budget each by
        itself (the costliest first), and time the others' calls (the regular checks then watch what they all
        cost), PROMOTE_MAX_PER_CHECK of them at most, the cheapest first: the others stay on probation until a
        later check. (Promoting registers return probes, and on a busy service registering takes its mmap lock:
        when load met caddy traced with `'*'`, promoting 11,604 functions at once took 1.1 s, with caddy at 0-6%
        of its throughput.)"""
        if not settling:
            return []
        cpu_per_s = window.target_cpu_ns / window.interval_s if window.interval_s > 0 else 0.0
        limit_ns_per_s = (self.max_overhead_pct or 0) / 100 * cpu_per_s * PROBATION_MAX_BUDGET_SHARE
        timed = {func_id: calls * (self._entry_cost_ns[func_id] + self.costs.return_ns)
                 for func_id, (calls, _) in settling.items()}
        # (never one that would cost less than FLOOR_SHARE_OF_CPU of one CPU)
        limit_ns_per_s = max(limit_ns_per_s, FLOOR_SHARE_OF_CPU * 1e9)
        victims = sorted((func_id for func_id, ns in timed.items() if self.max_overhead_pct and ns > limit_ns_per_s),
                         key=lambda func_id: -timed[func_id])
        if victims:
            self.tracer.detach(victims)
        leaving = set(victims)
        promoted = sorted((func_id for func_id in settling if func_id not in leaving),
                          key=lambda func_id: timed[func_id])
        for func_id in promoted[PROMOTE_MAX_PER_CHECK:]:
            self._probation[func_id] = settling[func_id][1]
            self._look_next.add(func_id)
        if promoted:
            self.tracer.promote(promoted[:PROMOTE_MAX_PER_CHECK])
        if not victims:
            return []
        done = time.monotonic()
        found = [Detachment(func_id, self.tracer.functions[func_id].name, 2 * settling[func_id][0],
                            timed[func_id] / cpu_per_s if cpu_per_s > 0 else None, window.share_of_target,
                            self.max_overhead_pct, now, done, on_probation=True)
                 for func_id in victims]
        self.detachments += found
        self._last_detached_at = done
        return found


def _in_runtime_packages(name: str) -> bool:
    package = package_of(name)
    return package in _HOT_PRONE_PACKAGES or package.startswith(_HOT_PRONE_PREFIXES)


def likely_hot_first(functions) -> list[int]:
    """Ids of the functions the guard is likely to detach, the likeliest first: those of the runtime's packages
    (_HOT_PRONE_PACKAGES), then the rest of the standard library; the shortest first within each (from the entry
    site to the last return). The tracer attaches them first, in chunks of their own as far as its file
    descriptors allow, so that detaching one is quick (gotrace.bpf.uprobes.plan_chunks)."""
    tiers: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
    for fn in functions:
        package = package_of(fn.name)
        length = max(fn.return_vaddrs, default=fn.entry_vaddr) - fn.entry_vaddr  # bytes, ELF vaddrs
        if _in_runtime_packages(fn.name):
            tiers[0].append((length, fn.func_id))
        elif "." not in package.split("/", 1)[0] and package != "main":  # the standard library: no domain
            tiers[1].append((length, fn.func_id))
    return [func_id for tier in tiers for _, func_id in sorted(tier)]
