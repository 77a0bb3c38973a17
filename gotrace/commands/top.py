"""`gotrace top`: the latency program read every refresh, yielded as TopSnapshots (a live table's data).

The same probes as `gotrace latency` (one program, histograms in the kernel).
Each refresh reads and resets the histograms: calls per second, p50, p99
and max are over the last refresh; calls since start add up. Between
snapshots it yields TICK about every 0.1 s, so a screen can read keys while
tracing goes on. In flight: the calls whose start the kernel holds at the
refresh (running now, in every traced process).

Under the cost guard, as `gotrace latency` is (gotrace.commands.tracing):
the same budget, the same detachments, the same memory of earlier traces;
a detached function's row says so, and a line under the totals gives the
probes' cost over the last refresh.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace.commands import DEFAULT_MAX_OVERHEAD_PCT
from gotrace.commands.floor import host_floor
from gotrace.commands.latency import plan_latency, report_names
from gotrace.commands.target import open_traced, reading_priority, tracing_target
from gotrace.commands.tracing import cost_estimate, guarded, leave_out_remembered, remembering
from gotrace.output.events import Skipped
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.top import TopRow, TopSnapshot
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.session import Ending, intervals
from gotrace.trace.tracer import traced_functions

TICK = object()  # yielded between snapshots: nothing new, the consumer may read its keys


@dataclass(frozen=True)
class TopRequest:
    """The options of `gotrace top`."""

    args: tuple[str, ...]  # [./bin] PATTERN...
    pid: int | None = None
    command: str | None = None
    duration_s: float | None = None
    refresh_s: float = 1.0
    max_overhead_pct: float | None = DEFAULT_MAX_OVERHEAD_PCT  # the cost guard's budget; 0 or None: estimate only
    retry_detached: bool = False  # probe what the guard's memory would leave out


def top_rows(names: list[str], counts: dict, totals: list[int], elapsed_s: float,
             in_flight: list[int] | None = None, detached: set[int] = frozenset()) -> tuple[TopRow, ...]:
    """One row per function from one refresh's counts (func_id -> FunctionCounts), the calls running at its
    end (per func_id) and the ids the cost guard detached; totals (calls since start, per func_id) are updated
    in place."""
    rows = []
    hists = []
    for func_id, name in enumerate(names):
        c = counts.get(func_id)
        histogram = LatencyHistogram(dict(c.buckets) if c else {})
        hists.append(histogram)
        totals[func_id] += histogram.count()
    times = [h.mean_ns() * h.count() for h in hists]
    all_time = sum(times)
    for func_id, (name, histogram) in enumerate(zip(names, hists)):
        n = histogram.count()
        p = histogram.percentiles((50.0, 99.0)) if n else {50.0: 0, 99.0: 0}
        rows.append(TopRow(name, n / elapsed_s if elapsed_s > 0 else 0.0, totals[func_id], p[50.0], p[99.0],
                           histogram.max_ns() if n else 0, in_flight[func_id] if in_flight else 0, times[func_id],
                           times[func_id] / all_time if all_time else 0.0, func_id in detached))
    return tuple(rows)


def top(request: TopRequest) -> Iterator[object]:
    """Yields Skipped per untraceable match, then a TopSnapshot every refresh_s with TICKs between, and a
    final TopSnapshot (its `ended` says why) when the trace ends."""
    target, patterns = tracing_target(request.args, request.pid, request.command)
    with open_traced(target) as gobin:
        with reading_priority(target):
            plan = plan_latency(gobin, patterns)
            traced, left_out, memory = leave_out_remembered(gobin, patterns, plan.traced, "latency",
                                                            request.max_overhead_pct, request.retry_detached,
                                                            "traced for latency")
            names = report_names(traced)
            functions = traced_functions(gobin, traced)
        for skipped in left_out + plan.skipped:
            yield Skipped(skipped.function.name, skipped.reason)
        floor_ns = host_floor().ns

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, functions, pid=target.pid)

        with guarded(target, make_tracer, request.max_overhead_pct, remembering(memory, "latency")) as session:
            tracer, guard = session.tracer, session.guard
            ending = Ending(target, session.stop, request.duration_s)
            totals = [0] * len(names)
            last = ending.started
            mark = guard.mark()

            def snapshot(ended: str | None = None) -> TopSnapshot:
                nonlocal last, mark
                now, now_mark = time.monotonic(), guard.mark()
                detached = tracer.detached_ids()
                rows = top_rows(names, tracer.read(reset=True), totals, now - last, tracer.in_flight(), detached)
                elapsed, last = now - last, now
                cost = cost_estimate(guard.overhead_since(mark), guard.max_overhead_pct)
                mark = now_mark
                return TopSnapshot(target.display, target.pid, gobin.go_version, elapsed, rows, ended=ended,
                                   floor_ns=floor_ns, cost=cost, n_detached=len(detached))

            def tick(wait_s: float) -> list[object]:
                time.sleep(wait_s)
                return [TICK]

            with guard.watching():
                # the table at once, every function listed, before a second of counts exists
                yield TopSnapshot(target.display, target.pid, gobin.go_version, 0.0,
                                  top_rows(names, {}, totals, 0.0), floor_ns=floor_ns)
                for event in intervals(ending, request.refresh_s, wait=tick):
                    yield snapshot() if event is None else event
            final = snapshot(ended=ending.reason or "signal")
        yield final  # the probes are gone: the final counts may stay on the screen as long as the user likes
