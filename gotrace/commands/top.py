"""`gotrace top`: the latency program read every refresh, yielded as TopSnapshots (a live table's data).

The same probes as `gotrace latency` (one program, histograms in the kernel).
Each refresh reads and resets the histograms: calls per second, p50, p99
and max are over the last refresh; calls since start add up. Between
snapshots it yields TICK about every 0.1 s, so a screen can read keys while
tracing goes on. In flight: the calls whose start the kernel holds at the
refresh (running now, in every traced process).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace.commands.floor import host_floor
from gotrace.commands.latency import plan_latency, report_names
from gotrace.commands.target import open_traced, reading_priority, tracing_target
from gotrace.output.events import Skipped
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.top import TopRow, TopSnapshot
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.session import Ending, attached, intervals
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


def top_rows(names: list[str], counts: dict, totals: list[int], elapsed_s: float,
             in_flight: list[int] | None = None) -> tuple[TopRow, ...]:
    """One row per function from one refresh's counts (func_id -> FunctionCounts) and the calls running at
    its end (per func_id); totals (calls since start, per func_id) are updated in place."""
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
                           times[func_id] / all_time if all_time else 0.0))
    return tuple(rows)


def top(request: TopRequest) -> Iterator[object]:
    """Yields Skipped per untraceable match, then a TopSnapshot every refresh_s with TICKs between, and a
    final TopSnapshot (its `ended` says why) when the trace ends."""
    target, patterns = tracing_target(request.args, request.pid, request.command)
    with open_traced(target) as gobin:
        with reading_priority(target):
            plan = plan_latency(gobin, patterns)
            names = report_names(plan.traced)
            functions = traced_functions(gobin, plan.traced)
        for skipped in plan.skipped:
            yield Skipped(skipped.function.name, skipped.reason)
        floor_ns = host_floor().ns

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, functions, pid=target.pid)

        with attached(target, make_tracer) as (tracer, stop):
            ending = Ending(target, stop, request.duration_s)
            totals = [0] * len(names)
            last = ending.started

            def snapshot(ended: str | None = None) -> TopSnapshot:
                nonlocal last
                now = time.monotonic()
                rows = top_rows(names, tracer.read(reset=True), totals, now - last, tracer.in_flight())
                elapsed, last = now - last, now
                return TopSnapshot(target.display, target.pid, gobin.go_version, elapsed, rows, ended=ended,
                                   floor_ns=floor_ns)

            def tick(wait_s: float) -> list[object]:
                time.sleep(wait_s)
                return [TICK]

            # the table at once, every function listed, before a second of counts exists
            yield TopSnapshot(target.display, target.pid, gobin.go_version, 0.0,
                              top_rows(names, {}, totals, 0.0), floor_ns=floor_ns)
            for event in intervals(ending, request.refresh_s, wait=tick):
                yield snapshot() if event is None else event
            yield snapshot(ended=ending.reason or "signal")
