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
from gotrace.commands.exporter import MetricsExporter
from gotrace.commands.target import open_traced, tracing_target
from gotrace.commands.tracing import TraceOptions, nothing_to_trace, trace_session
from gotrace.output.events import BpfSource, Skipped
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport, LatencyReport
from gotrace.output.prometheus import MetricsSnapshot, SeriesCounts
from gotrace.output.report import ReportFrame
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.tracer import traced_functions


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
    probes = [gobin.probe_sites(fn) for fn in gobin.match(patterns)]
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
                     refused: dict[int, int] | None = None) -> list[FunctionReport]:
    """Reports per traced function from the tracer's counts (func_id -> FunctionCounts); functions whose site
    the kernel refused are left out (they were reported as skipped)."""
    out = []
    for func_id, name in enumerate(names):
        if refused and func_id in refused:
            continue
        c = counts.get(func_id)
        histogram = LatencyHistogram(dict(c.buckets) if c else {})
        out.append(FunctionReport(name, histogram, c.unmatched if c else 0, c.in_flight if c else 0,
                                  c.oldest_in_flight_ns if c else None, func_id in detached, c.untimed if c else 0))
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
    """Yields, in order: a summary of the untraceable matches, the cost guard's detachments while attaching,
    Started, Serving with --prometheus, reports (LatencyReport) every interval and a final one (none when
    quiet), detachments as they happen, then TargetExited when the traced process ended. With print_bpf,
    only BpfSource.

    With --prometheus, the port is bound before the probes are attached (a taken port is a UsageError), and
    /metrics serves cumulative counts from attach until the trace ends; after a -c command's exit, until
    the next scrape (tracing.LAST_SCRAPE_GRACE_S at most).
    """
    started = time.perf_counter()
    options = request.options
    target, patterns = tracing_target(request.args, options.pid, options.command)
    with open_traced(target) as gobin, contextlib.ExitStack() as cleanup:
        plan = plan_latency(gobin, patterns)
        names = report_names(plan.traced)
        analysed = time.perf_counter()

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, traced_functions(gobin, plan.traced), pid=target.pid)

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return
        exporter = None
        if request.prometheus is not None:
            exporter = cleanup.enter_context(MetricsExporter(request.prometheus))

        def make_report(tracer: LatencyTracer, frame: ReportFrame) -> LatencyReport:
            counts = tracer.read(reset=True)
            return LatencyReport(frame, function_reports(names, counts, tracer.detached_ids(), tracer.refused),
                                 sort=request.sort, verbose=options.verbose)

        def snapshot(tracer: LatencyTracer) -> MetricsSnapshot:
            return metrics_snapshot(tracer, names, exported_binary_path(target), gobin.go_version, target.pid)

        timings = None if request.timings is None else {**request.timings, "elf_analysis": analysed - started}
        yield from trace_session(target, make_tracer, options, go_version=gobin.go_version,
                                 skipped=[Skipped(p.function.name, p.reason) for p in plan.skipped],
                                 matched=len(plan.traced) + len(plan.skipped), make_report=make_report,
                                 timings=timings, exporter=exporter, snapshot=snapshot,
                                 housekeeping=lambda tracer: tracer.retire_exited(options.keep_exited_s))


def exported_binary_path(target) -> str:
    """The `binary` label: the traced executable's absolute path (for -p, the one /proc/PID/exe names)."""
    return target.display if target.display.startswith("/") else os.path.abspath(target.binary_path)
