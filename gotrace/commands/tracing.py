"""What the tracing commands share: their options, the session under the cost guard, and the guard's memory.

guarded() attaches a tracer under its cost guard (every tracing command:
latency, count, top, args). trace_session() runs one tracer of latency or
count from attach to the final report and yields, in order: the skipped
functions' summary, the cost guard's detachments while attaching, Started
(with the guard's budget and what attaching cost), Serving when a
Prometheus exporter serves the tracer's counts, then detachments as they
happen and a report every interval, the final report, and how the target
ended. leave_out_remembered() and remembering() read and update the guard's
memory (gotrace.trace.guardmemory) around a session.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

from gotrace.commands import DEFAULT_MAX_OVERHEAD_PCT
from gotrace.commands.exporter import MetricsExporter
from gotrace.errors import PatternError
from gotrace.output.events import (AwaitingScrape, Detached, DetachedFunction, GuardInfo, Serving, Skipped,
                                   SkippedSummary, SlowDetach, Started, TargetExited, Timings)
from gotrace.output.report import CostEstimate, ReportFrame
from gotrace.trace import cost
from gotrace.trace.guard import CHECK_PERIOD_S, CostGuard, Detachment, Overhead
from gotrace.trace.guardmemory import REASON as LEFT_OUT_REASON
from gotrace.trace.guardmemory import GuardMemory, Remembered
from gotrace.trace.session import Ending, StopFlag, Target, attached, ticks
from gotrace.trace.targetcpu import TargetCpu

# Measured on Linux 6.1-6.5 style per-site perf links: each removal waits for the kernel.
PERF_LINK_DETACH_S_PER_SITE = 0.087
SLOW_DETACH_WARN_SITES = 200
# --prometheus: a -c run waits this long at most, after its command exited, for a last scrape.
LAST_SCRAPE_GRACE_S = 15.0
# Every-process mode: how often exited processes are looked for, and how long their series stay by default
# (so that scrapes see their final counts).
HOUSEKEEPING_S = 1.0
KEEP_EXITED_S = 300.0


@dataclass(frozen=True)
class TraceOptions:
    """The options every tracing command shares."""

    pid: int | None = None
    command: str | None = None
    duration_s: float | None = None
    interval_s: float | None = None
    max_overhead_pct: float | None = DEFAULT_MAX_OVERHEAD_PCT  # 0 or None: estimate only
    verbose: bool = False  # list every skipped, idle and detached function
    quiet: bool = False  # no reports (with prometheus: the metrics are the output)
    keep_exited_s: float = KEEP_EXITED_S  # every-process mode: series of an exited process stay this long
    retry_detached: bool = False  # probe the functions the guard's memory would leave out (gotrace.trace.guardmemory)


def slow_detach(attached_by: str, n_sites: int) -> SlowDetach | None:
    """The warning due when this many sites will detach one by one (perf-event links), else None."""
    if attached_by == "perf_link" and n_sites >= SLOW_DETACH_WARN_SITES:
        return SlowDetach(n_sites, n_sites * PERF_LINK_DETACH_S_PER_SITE)
    return None


def nothing_to_trace(gobin, patterns: list[str], skipped, what: str) -> PatternError:
    """The error when every function the patterns match is in `skipped` (FunctionProbes): the first one's reason."""
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
    return PatternError(f"{first.function.name} cannot be {what}: {first.reason}{more}; "
                        f"see gotrace funcs {gobin.display_path} {' '.join(patterns)}")


def leave_out_remembered(gobin, patterns: list[str], probes: list, program: str, max_overhead_pct: float | None,
                         retry_detached: bool, what: str) -> tuple[list, list, GuardMemory | None]:
    """(kept, left out, the memory) of `probes` (FunctionProbes to trace with `program`): those the cost guard's
    memory leaves out (gotrace.trace.guardmemory) get its reason. The memory is None without a budget (nothing
    is detached, nothing learnt). PatternError when nothing is left, naming --retry-detached."""
    if not max_overhead_pct:
        return probes, [], None
    memory = GuardMemory(gobin.content_sha256)
    if retry_detached or not len(memory):
        return probes, [], memory
    exact = gobin.exactly_named(patterns)
    left = memory.left_out(program, (p.function.name for p in probes if p.function.entry_vaddr not in exact),
                           max_overhead_pct)
    if not left:
        return probes, [], memory
    leaving = [p.function.name in left and p.function.entry_vaddr not in exact for p in probes]
    kept = [p for p, leave in zip(probes, leaving) if not leave]
    out = [replace(p, sites=replace(p.sites, reason=LEFT_OUT_REASON)) for p, leave in zip(probes, leaving) if leave]
    if not kept:
        raise nothing_to_trace(gobin, patterns, out, what)
    return kept, out, memory


def remembering(memory: GuardMemory | None, program: str) -> Callable[[object, list[Detachment]], None] | None:
    """What trace_session calls at the end (with the tracer still attached, and its guard's detachments) to
    update the cost guard's memory: what was detached, and what was called and kept."""
    if memory is None:
        return None

    def remember(tracer, detachments: list[Detachment]) -> None:
        now_s = time.time()
        detached = [Remembered(d.name, program, d.max_overhead_pct, d.hits_per_s, now_s) for d in detachments]
        judged_not = {d.func_id for d in detachments} | set(tracer.refused) | set(tracer.probation_ids())
        entry_hits, _ = tracer.hits()
        affordable = [fn.name for fn in tracer.functions if fn.func_id not in judged_not and entry_hits[fn.func_id]]
        memory.update(program, detached, affordable)

    return remember


def refused_reason(err: int) -> str:
    return f"the kernel refuses a uprobe on one of its probe sites (error {err}: an instruction it cannot probe)"


def cost_estimate(overhead: Overhead | None, max_overhead_pct: float | None) -> CostEstimate | None:
    if overhead is None or overhead.interval_s <= 0:
        return None
    return CostEstimate(overhead.hits_per_s, overhead.share_of_cpu, overhead.share_of_target, max_overhead_pct,
                        overhead.fixed_hits_per_s)


def detached_event(found, verbose: bool) -> Detached:
    """One Detached event of the Detachments of one check."""
    return Detached(tuple(DetachedFunction(d.name, d.hits_per_s, d.share_of_target, d.reason) for d in found),
                    found[0].total_share_of_target, found[0].max_overhead_pct,
                    max(d.detached_at for d in found) - found[0].noticed_at, verbose)


def wait_for_last_scrape(exporter: MetricsExporter, stop: StopFlag, exited: float,
                         grace_s: float = LAST_SCRAPE_GRACE_S) -> None:
    """After a -c command exited (noticed at `exited`, monotonic): until a scrape has read the final counts,
    grace_s at most, or a signal."""
    while not stop and not exporter.scraped_since(exited) and time.monotonic() - exited < grace_s:
        time.sleep(0.05)


@dataclass(frozen=True)
class GuardedSession:
    """A tracer attached under its cost guard: the guard's detachments while attaching (one list per check) and
    what the probes cost meanwhile."""

    tracer: object
    stop: StopFlag
    guard: CostGuard
    while_attaching: list[list[Detachment]]
    attach_cost: Overhead


@contextlib.contextmanager
def guarded(target: Target, make_tracer: Callable[[], object], max_overhead_pct: float | None,
            remember: Callable[[object, list[Detachment]], None] | None = None) -> Iterator[GuardedSession]:
    """session.attached() with the cost guard: it calibrates and takes its baseline before the probes go in,
    checks after each chunk of them, and counts what attaching cost. The caller runs guard.watching(). However
    the session ends (its end, a signal, the consumer closing the generator), remember(tracer, the guard's
    detachments) runs last, the probes still in place (remembering())."""
    guards: list[CostGuard] = []
    while_attaching: list[list[Detachment]] = []

    def prepare(tracer) -> None:
        guard = CostGuard(tracer, cost.hit_costs(tracer), max_overhead_pct,
                          TargetCpu(target.pid, tracer.binary_path), service=target.command is None)
        guard.start()
        guards.append(guard)

        def after_chunk(func_ids) -> None:
            while_attaching.extend(guard.after_chunk(func_ids))

        tracer.after_chunk = after_chunk

    attach_cost: list[Overhead] = []

    def after_attach(tracer) -> None:
        guards[0].attached()  # the hits of the last chunks, too
        attach_cost.append(guards[0].since_start())

    with attached(target, make_tracer, prepare, after_attach) as (tracer, stop):
        try:
            yield GuardedSession(tracer, stop, guards[0], while_attaching, attach_cost[0])
        finally:
            if remember is not None:
                remember(tracer, list(guards[0].detachments))


# make_report(tracer, frame) -> the command's report of the interval that frame describes
ReportMaker = Callable[[object, ReportFrame], object]


def trace_session(target: Target, make_tracer: Callable[[], object], options: TraceOptions, *, go_version: str,
                  skipped: Sequence[Skipped], matched: int, make_report: ReportMaker,
                  timings: dict[str, float] | None = None, exporter: MetricsExporter | None = None,
                  snapshot: Callable[[object], object] | None = None,
                  housekeeping: Callable[[object], object] | None = None,
                  events: Callable[[object, float], list] | None = None,
                  remember: Callable[[object, list[Detachment]], None] | None = None) -> Iterator[object]:
    """Attach, guard, report; see the module's docstring. With an exporter, it serves snapshot(tracer) from
    Started until the end (after a -c command's exit, until the next scrape, LAST_SCRAPE_GRACE_S at most).
    In every-process mode, housekeeping(tracer) runs every HOUSEKEEPING_S. With events, the pauses between
    checks are events(tracer, seconds), which waits that long at most and returns what the tracer sent
    meanwhile (slow calls); each is yielded as it comes, and all are yielded before each report. remember: see
    guarded()."""
    if skipped:
        yield SkippedSummary(tuple(skipped), matched, options.verbose)
    with guarded(target, make_tracer, options.max_overhead_pct, remember) as session:
        tracer, stop, guard = session.tracer, session.stop, session.guard
        while_attaching = session.while_attaching
        if tracer.refused:
            yield SkippedSummary(tuple(Skipped(tracer.functions[func_id].name, refused_reason(err))
                                       for func_id, err in sorted(tracer.refused.items())), matched, options.verbose)
        for found in while_attaching:
            yield detached_event(found, options.verbose)
        warning = slow_detach(tracer.attached_by, tracer.n_sites)
        if warning is not None:
            yield warning
        if timings is not None:
            yield Timings({**timings, **tracer.timings_s}, tracer.bpf_compiler_peak_rss_kb, tracer.bpf_origin)
        n_traced = len(tracer.functions) - len(tracer.refused)
        yield Started(n_traced, tracer.n_sites, target.pid, go_version, target.display,
                      GuardInfo(guard.max_overhead_pct, guard.costs.text(returns=tracer.RETURN_PROGRAM is not None),
                                cost_estimate(session.attach_cost, guard.max_overhead_pct)))
        if exporter is not None:
            exporter.start(lambda: snapshot(tracer))
            yield Serving(exporter.url)
        ending = Ending(target, stop, options.duration_s)
        mark = guard.mark()
        last_wall_ns, last_mono = time.time_ns(), time.monotonic()

        def report(final: bool) -> object:
            nonlocal mark, last_wall_ns, last_mono
            now_mark = guard.mark()
            wall_ns, mono = time.time_ns(), time.monotonic()
            frame = ReportFrame({"binary": target.display, "pid": target.pid, "go_version": go_version},
                                mono - last_mono, last_wall_ns, wall_ns, final,
                                cost_estimate(guard.overhead_since(mark), guard.max_overhead_pct),
                                interval=options.interval_s is not None)
            mark, last_wall_ns, last_mono = now_mark, wall_ns, mono
            return make_report(tracer, frame)

        every_process = target.pid is None
        housekept = time.monotonic()
        with guard.watching():
            wait = None if events is None else (lambda timeout_s: events(tracer, timeout_s))
            for due in ticks(ending, options.interval_s, CHECK_PERIOD_S, wait=wait):
                if due is not True and due is not False:
                    yield due  # an event the tracer sent
                    continue
                for found in guard.take_detached():
                    yield detached_event(found, options.verbose)
                if due and not options.quiet:
                    if events is not None:
                        yield from events(tracer, 0.0)
                    yield report(False)
                if housekeeping is not None and every_process and time.monotonic() - housekept >= HOUSEKEEPING_S:
                    housekeeping(tracer)
                    housekept = time.monotonic()
        exited_seen = time.monotonic()  # the counts are final from here when the target exited
        for found in guard.take_detached():
            yield detached_event(found, options.verbose)
        if events is not None:
            yield from events(tracer, 0.0)
        if not options.quiet:
            yield report(True)
        if ending.reason == "target-exit":
            if target.command and target.exit_status is not None:
                yield TargetExited(target.command[0], target.pid, target.exit_status)
                if exporter is not None and not exporter.scraped_since(exited_seen):
                    yield AwaitingScrape(LAST_SCRAPE_GRACE_S)
                    wait_for_last_scrape(exporter, stop, exited_seen)
            elif not target.command:
                yield TargetExited(target.display, target.pid, None)
        if exporter is not None:
            exporter.close()  # before the probes and maps go
