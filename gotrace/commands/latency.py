"""`gotrace latency`: plan the probes, run the tracer, build each report as data."""

from __future__ import annotations

from dataclasses import dataclass

from gotrace.errors import PatternError
from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport


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


def traced_functions(plan: LatencyPlan):
    from gotrace.trace.latency import TracedFunction

    return [TracedFunction(i, p.function.name, p.sites.entry_vaddr, p.sites.return_vaddrs)
            for i, p in enumerate(plan.traced)]


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
