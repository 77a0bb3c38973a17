"""`gotrace latency`: plan the probes, run the tracer, yield each report as data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.commands.target import open_traced, tracing_target
from gotrace.errors import PatternError
from gotrace.output.events import BpfSource, Skipped, SlowDetach, Started, TargetExited, Timings
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport, LatencyReport
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.session import Ending, attached, intervals
from gotrace.trace.tracer import traced_functions

# Measured on Linux 6.1-6.5 style per-site perf links: each removal waits for the kernel.
PERF_LINK_DETACH_S_PER_SITE = 0.087
SLOW_DETACH_WARN_SITES = 200


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
        first = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise PatternError(f"{first.function.name} cannot be traced for latency: {first.reason}{more}; "
                           f"see gotrace funcs {gobin.display_path} {' '.join(patterns)}")
    return LatencyPlan(traced, skipped)


def report_names(plan: LatencyPlan) -> list[str]:
    """The name of each traced function in reports: its Go name, made unique with `@0x<entry vaddr>` when
    several traced functions share it (pclntab of Go 1.18-1.19 names every instantiation of a generic
    function `pkg.F[...]`), so each report row can be told apart and matched to `gotrace funcs`."""
    names = [p.function.name for p in plan.traced]
    shared = {name for name in names if names.count(name) > 1}
    return [f"{p.function.name}@{p.function.entry_vaddr:#x}" if p.function.name in shared else p.function.name
            for p in plan.traced]


def function_reports(plan: LatencyPlan, counts: dict) -> list[FunctionReport]:
    """Reports per traced function from the tracer's counts (func_id -> FunctionCounts)."""
    out = []
    for func_id, name in enumerate(report_names(plan)):
        c = counts.get(func_id)
        histogram = LatencyHistogram(dict(c.buckets) if c else {})
        out.append(FunctionReport(name, histogram, c.unmatched if c else 0))
    return out


def slow_detach(attached_by: str, n_sites: int) -> SlowDetach | None:
    """The warning due when this many sites will detach one by one (perf-event links), else None."""
    if attached_by == "perf_link" and n_sites >= SLOW_DETACH_WARN_SITES:
        return SlowDetach(n_sites, n_sites * PERF_LINK_DETACH_S_PER_SITE)
    return None


@dataclass(frozen=True)
class LatencyRequest:
    """The options of `gotrace latency`."""

    args: tuple[str, ...]  # [./bin] PATTERN...
    pid: int | None = None
    command: str | None = None
    duration_s: float | None = None
    interval_s: float | None = None
    print_bpf: bool = False
    timings: dict[str, float] | None = None  # GOTRACE_TIMINGS: phases timed so far (the CLI's imports); None: off


def latency(request: LatencyRequest) -> Iterator[object]:
    """Yields, in order: Skipped per untraceable match, Started, reports (LatencyReport) every interval and
    a final one, then TargetExited when a -c command ended. With print_bpf, only BpfSource."""
    started = time.perf_counter()
    target, patterns = tracing_target(request.args, request.pid, request.command)
    with open_traced(target) as gobin:
        plan = plan_latency(gobin, patterns)
        analysed = time.perf_counter()

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, traced_functions(gobin, plan.traced), pid=target.pid)

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return
        for skipped in plan.skipped:
            yield Skipped(skipped.function.name, skipped.reason)
        with attached(target, make_tracer) as (tracer, stop):
            target_info = {"binary": target.display, "pid": target.pid, "go_version": gobin.go_version}
            warning = slow_detach(tracer.attached_by, plan.n_sites)
            if warning is not None:
                yield warning
            if request.timings is not None:
                yield Timings({**request.timings, "elf_analysis": analysed - started, **tracer.timings_s},
                              tracer.bpf_compiler_peak_rss_kb, tracer.bpf_origin)
            yield Started(len(plan.traced), plan.n_sites, target.pid, gobin.go_version, target.display)
            ending = Ending(target, stop, request.duration_s)
            last = ending.started

            def report() -> LatencyReport:
                nonlocal last
                now = time.monotonic()
                functions = function_reports(plan, tracer.read(reset=True))
                interval_s, last = now - last, now
                return LatencyReport(target_info, interval_s, functions, interval=request.interval_s is not None)

            for _ in intervals(ending, request.interval_s):
                yield report()
            yield report()
            if ending.reason == "target-exit" and target.exit_status is not None:
                yield TargetExited(target.command[0], target.pid, target.exit_status)
