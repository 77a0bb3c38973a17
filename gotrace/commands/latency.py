"""`gotrace latency`: plan the probes, run the tracer under the cost guard, yield each report as data."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from gotrace import __version__
from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.binary.symbolize import SourceFrame, Symbolizer
from gotrace.commands.exporter import MetricsExporter
from gotrace.commands.floor import cache_path as floor_cache_path
from gotrace.commands.floor import host_floor
from gotrace.commands.target import open_traced, reading_priority, tracing_target
from gotrace.commands.tracing import (TraceOptions, leave_out_remembered, nothing_to_trace, remembering,
                                      trace_session)
from gotrace.output.events import BpfSource, FloorMeasured, Skipped
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport, LatencyReport
from gotrace.output.prometheus import MetricsSnapshot, SeriesCounts
from gotrace.output.report import ReportFrame
from gotrace.output.slow import SlowCall, SlowCounts
from gotrace.trace.latency import LatencyTracer, SlowRecord
from gotrace.trace.tracer import TracedFunction, traced_functions

DEFAULT_STACK_DEPTH = 16
DEFAULT_SLOW_RATE = 100  # slow calls per second printed at most; the rest are counted
UNKNOWN_FRAME = "?"


@dataclass(frozen=True)
class LatencyPlan:
    traced: list[FunctionProbes]        # in func_id order
    skipped: list[FunctionProbes]       # matched but not traceable (with reasons)

    @property
    def n_sites(self) -> int:
        return sum(1 + len(p.sites.return_vaddrs) for p in self.traced)


def plan_latency(gobin: GoBinary, patterns: list[str]) -> LatencyPlan:
    """The traceable functions among those matching `patterns`; PatternError when
    none is traceable, naming why."""
    probes = gobin.probe_sites_of(gobin.match(patterns))
    traced = [p for p in probes if p.traceable]
    skipped = [p for p in probes if not p.traceable]
    if not traced:
        raise nothing_to_trace(gobin, patterns, skipped, "traced for latency")
    return LatencyPlan(traced, skipped)


def report_names(traced: list[FunctionProbes]) -> list[str]:
    """The name of each traced function in reports: its Go name, made unique with `@0x<entry vaddr>` when
    several traced functions share it (pclntab of Go 1.18-1.19 names every instantiation of a generic
    function `pkg.F[...]`), so each report row can be told apart and matched to `gotrace funcs`."""
    names = [p.function.name for p in traced]
    shared = {name for name, n in Counter(names).items() if n > 1}
    return [f"{p.function.name}@{p.function.entry_vaddr:#x}" if p.function.name in shared else p.function.name
            for p in traced]


def function_reports(names: list[str], counts: dict, detached: set[int] = frozenset(),
                     refused: dict[int, int] | None = None, on_probation: set[int] = frozenset()
                     ) -> list[FunctionReport]:
    """Reports per traced function from the tracer's counts (func_id -> FunctionCounts); functions whose site
    the kernel refused are left out (they were reported as skipped)."""
    out = []
    for func_id, name in enumerate(names):
        if refused and func_id in refused:
            continue
        c = counts.get(func_id)
        histogram = LatencyHistogram(dict(c.buckets) if c else {})
        out.append(FunctionReport(name, histogram, c.unmatched if c else 0, c.in_flight if c else 0,
                                  c.oldest_in_flight_ns if c else None, func_id in detached, c.untimed if c else 0,
                                  on_probation=func_id in on_probation,
                                  probation_calls=c.probation_calls if c else 0))
    return out


def slow_call(record: SlowRecord, names: list[str], functions: list[TracedFunction], symbolizer: Symbolizer,
              wall_offset_ns: int, depth: int) -> SlowCall:
    """A slow call as the user reads it: its return addresses symbolized (inlined calls expanded, at most
    `depth` frames), its time on the wall clock."""
    bias = record.entry_ip - functions[record.func_id].entry_vaddr  # a PIE's load bias; 0 otherwise
    stack: list[SourceFrame] = []
    for address in record.return_addresses:
        stack += symbolizer.frames_at_return(address - bias) or [SourceFrame(UNKNOWN_FRAME, None, None, False)]
        if len(stack) >= depth:
            break
    return SlowCall(names[record.func_id], record.tgid, record.goid, record.end_ns + wall_offset_ns,
                    record.latency_ns, tuple(stack[:depth]))


def split_reports(names: list[str], functions: list[TracedFunction], counts: dict, by: str,
                  symbolizer: Symbolizer) -> list[FunctionReport]:
    """--by rows: per traced function, one row per caller (a Go function, all its call sites merged) or
    per process, the busiest first; a function's unmatched calls (never returned, so no caller was seen)
    in a row of their own; a function without calls as one empty row."""
    out: list[FunctionReport] = []
    for func_id, name in enumerate(names):
        c = counts.get(func_id)
        rows: dict[object, tuple[dict[int, int], set[str]]] = {}
        split = (c.callers if by == "caller" else c.processes) if c else {}
        for key, buckets in split.items():
            sites: set[str] = set()
            if by == "caller":
                return_vaddr = functions[func_id].entry_vaddr + key
                frames = symbolizer.frames_at_return(return_vaddr)
                group = frames[0].function if frames else UNKNOWN_FRAME
                if frames and frames[0].file is not None:
                    sites.add(f"{frames[0].file}:{frames[0].line}")
            else:
                group = key
            merged, all_sites = rows.setdefault(group, ({}, set()))
            for bucket, count in buckets.items():
                merged[bucket] = merged.get(bucket, 0) + count
            all_sites |= sites
        mine = [(LatencyHistogram(merged), group, sites) for group, (merged, sites) in rows.items()]
        mine.sort(key=lambda row: (-row[0].count(), str(row[1])))
        for histogram, group, sites in mine:
            out.append(FunctionReport(name, histogram, 0, split=by, call_sites=tuple(sorted(sites)),
                                      **({"caller": group} if by == "caller" else {"pid": group})))
        unmatched = c.unmatched if c else 0
        if unmatched or not mine:
            out.append(FunctionReport(name, LatencyHistogram(), unmatched, split=by))
    return out


@dataclass(frozen=True)
class LatencyRequest:
    """The options of `gotrace latency`."""

    args: tuple[str, ...]  # [./bin] PATTERN...
    options: TraceOptions = field(default_factory=TraceOptions)
    sort: str = "total"
    print_bpf: bool = False
    timings: dict[str, float] | None = None  # GOTRACE_TIMINGS: phases timed so far (the CLI's imports); None: off
    prometheus: str | None = None  # HOST:PORT to serve /metrics on while tracing
    slow_ns: int | None = None  # --slow: print each call at least this long, with its stack
    stack_depth: int = DEFAULT_STACK_DEPTH
    slow_rate: int = DEFAULT_SLOW_RATE  # 0: no limit
    by: str | None = None  # --by: "caller" or "pid"
    floor: bool = True  # state the measurement floor in each report (measured on first use, then cached)


def metrics_snapshot(tracer: LatencyTracer, names: list[str], binary: str, go_version: str,
                     pid: int | None) -> MetricsSnapshot:
    """The Prometheus view of the tracer's cumulative counts: one series per (function, process seen), every
    traced function in every process (with -p/-c, the target's pid from the start)."""
    counts = tracer.read_cumulative()
    pids = {tgid for _, tgid in counts.processes}
    if pid is not None:
        pids.add(pid)
    series = []
    for tgid in sorted(pids):
        for func_id, name in enumerate(names):
            c = counts.processes.get((func_id, tgid))
            series.append(SeriesCounts(name, tgid, c.buckets, c.sum_ns, c.unwound, c.in_flight) if c
                          else SeriesCounts(name, tgid))
    return MetricsSnapshot(binary, go_version, __version__, series, list(zip(names, counts.entries)))


def latency(request: LatencyRequest) -> Iterator[object]:
    """Yields, in order: FloorMeasured when this run measured the host's floor, a summary of the untraceable
    matches, the cost guard's detachments while attaching, Started, Serving with --prometheus, reports
    (LatencyReport) every interval and a final one (none when quiet), detachments as they happen and, with
    slow_ns, each slow call (SlowCall) as it returns, then TargetExited when the traced process ended. With
    print_bpf, only BpfSource.

    With --prometheus, the port is bound before the probes are attached (a taken port is a UsageError), and
    /metrics serves cumulative counts from attach until the trace ends; after a -c command's exit, until
    the next scrape (tracing.LAST_SCRAPE_GRACE_S at most).
    """
    started = time.perf_counter()
    options = request.options
    target, patterns = tracing_target(request.args, options.pid, options.command)
    with open_traced(target) as gobin, contextlib.ExitStack() as cleanup:
        with reading_priority(target):
            plan = plan_latency(gobin, patterns)
            traced, left_out, memory = leave_out_remembered(gobin, patterns, plan.traced, "latency",
                                                            options.max_overhead_pct, options.retry_detached,
                                                            "traced for latency")
            plan = LatencyPlan(traced, left_out + plan.skipped)
            names = report_names(plan.traced)
            functions = traced_functions(gobin, plan.traced)
        analysed = time.perf_counter()

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, functions, pid=target.pid, slow_ns=request.slow_ns or 0,
                                 slow_rate=request.slow_rate, stack_depth=request.stack_depth,
                                 by=request.by or "none")

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return
        floor = host_floor() if request.floor and not options.quiet else None
        if floor is not None and (floor.measured_now or floor.ns is None):
            yield FloorMeasured(floor.ns, floor.reason, str(floor_cache_path()))
        exporter = None
        if request.prometheus is not None:
            exporter = cleanup.enter_context(MetricsExporter(request.prometheus))
        wall_offset_ns = time.time_ns() - time.monotonic_ns()
        slow_base = dict.fromkeys(("events", "dropped_rate_limit", "dropped_ringbuf_full"), 0)

        def slow_calls(tracer: LatencyTracer, timeout_s: float) -> list[SlowCall]:
            return [slow_call(record, names, functions, gobin.symbolizer, wall_offset_ns, request.stack_depth)
                    for record in tracer.poll_slow(timeout_s) if record.func_id < len(functions)]

        def slow_counts(tracer: LatencyTracer) -> SlowCounts | None:
            nonlocal slow_base
            if not request.slow_ns:
                return None
            now = tracer.slow_stats()
            delta = {name: now[name] - slow_base[name] for name in slow_base}
            slow_base = {name: now[name] for name in slow_base}
            return SlowCounts(request.slow_ns, request.slow_rate, delta["events"], delta["dropped_rate_limit"],
                              delta["dropped_ringbuf_full"])

        def make_report(tracer: LatencyTracer, frame: ReportFrame) -> LatencyReport:
            counts = tracer.read(reset=True)
            if request.by:
                rows = split_reports(names, functions, counts, request.by, gobin.symbolizer)
            else:
                rows = function_reports(names, counts, tracer.detached_ids(), tracer.refused,
                                        tracer.called_on_probation())
            # --by rows stay grouped under their function, the busiest first (split_reports' order)
            return LatencyReport(frame, rows, sort="address" if request.by else request.sort, verbose=options.verbose,
                                 slow=slow_counts(tracer),
                                 floor_ns=floor.ns if floor else None, floor_reason=floor.reason if floor else None)

        def snapshot(tracer: LatencyTracer) -> MetricsSnapshot:
            return metrics_snapshot(tracer, names, exported_binary_path(target), gobin.go_version, target.pid)

        timings = None if request.timings is None else {**request.timings, "elf_analysis": analysed - started}
        yield from trace_session(target, make_tracer, options, go_version=gobin.go_version,
                                 skipped=[Skipped(p.function.name, p.reason) for p in plan.skipped],
                                 matched=len(plan.traced) + len(plan.skipped), make_report=make_report,
                                 timings=timings, exporter=exporter, snapshot=snapshot,
                                 housekeeping=lambda tracer: tracer.retire_exited(options.keep_exited_s),
                                 events=slow_calls if request.slow_ns else None,
                                 remember=remembering(memory, "latency"))


def exported_binary_path(target) -> str:
    """The `binary` label: the traced executable's absolute path (for -p, the one /proc/PID/exe names)."""
    return target.display if target.display.startswith("/") else os.path.abspath(target.binary_path)
