"""`gotrace count`: calls per function, one entry probe per call, under the cost guard; yields each report as data."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.binary.sites import REASON_ABI0, REASON_ASM, REASON_INDIRECT_JUMP, REASON_NEVER_RETURNS, REASON_TAIL_JUMP
from gotrace.commands.latency import report_names
from gotrace.commands.target import open_traced, reading_priority, tracing_target
from gotrace.commands.tracing import (TraceOptions, leave_out_remembered, nothing_to_trace, remembering,
                                      trace_session)
from gotrace.output.count import CountReport, FunctionCount
from gotrace.output.events import BpfSource, Skipped
from gotrace.output.report import ReportFrame
from gotrace.trace.count import CountTracer
from gotrace.trace.tracer import traced_functions

# Reasons that keep a function from being timed but not from being counted: counting needs only the entry
# site (no return instruction, no goroutine register).
COUNTABLE_REASONS = frozenset({None, REASON_ABI0, REASON_ASM, REASON_TAIL_JUMP, REASON_NEVER_RETURNS, REASON_INDIRECT_JUMP})


@dataclass(frozen=True)
class CountPlan:
    counted: list[FunctionProbes]  # in func_id order
    skipped: list[FunctionProbes]


def plan_count(gobin: GoBinary, patterns: list[str]) -> CountPlan:
    """The functions among those matching `patterns` whose calls can be counted; PatternError when none can."""
    counted: list[FunctionProbes] = []
    skipped: list[FunctionProbes] = []
    for p in gobin.probe_sites_of(gobin.match(patterns)):
        if p.sites.entry_vaddr is None or p.reason not in COUNTABLE_REASONS:
            skipped.append(p)
        elif p.sites.entry_refused:
            # An assembly function's first instruction (count's only site) may be one the kernel will not
            # probe (caddy: 26 AVX-512 `vmovdqu64`, and runtime.abort's `int $3`): say so before attaching.
            skipped.append(replace(p, sites=replace(p.sites, reason=p.sites.entry_refusal)))
        else:
            counted.append(p)
    if not counted:
        raise nothing_to_trace(gobin, patterns, skipped, "counted")
    return CountPlan(counted, skipped)


@dataclass(frozen=True)
class CountRequest:
    """The options of `gotrace count`."""

    args: tuple[str, ...]  # [./bin] PATTERN...
    options: TraceOptions = field(default_factory=TraceOptions)
    sort: str = "count"
    print_bpf: bool = False


def count(request: CountRequest) -> Iterator[object]:
    """Yields, in order: a summary of the matches that cannot be counted, the cost guard's detachments while
    attaching, Started, reports (CountReport) every interval and a final one, detachments as they happen, then
    TargetExited when the traced process ended. With print_bpf, only BpfSource."""
    options = request.options
    target, patterns = tracing_target(request.args, options.pid, options.command)
    with open_traced(target) as gobin:
        with reading_priority(target):
            plan = plan_count(gobin, patterns)
            counted, left_out, memory = leave_out_remembered(gobin, patterns, plan.counted, "count",
                                                             options.max_overhead_pct, options.retry_detached,
                                                             "counted")
            plan = CountPlan(counted, left_out + plan.skipped)
            names = report_names(plan.counted)
            functions = traced_functions(gobin, plan.counted)

        def make_tracer() -> CountTracer:
            return CountTracer(gobin, functions, pid=target.pid)

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return

        def make_report(tracer: CountTracer, frame: ReportFrame) -> CountReport:
            counts, detached = tracer.read(reset=True), tracer.detached_ids()
            functions = [FunctionCount(name, counts[func_id], func_id in detached)
                         for func_id, name in enumerate(names) if func_id not in tracer.refused]
            return CountReport(frame, functions, sort=request.sort, verbose=options.verbose)

        yield from trace_session(target, make_tracer, options, go_version=gobin.go_version,
                                 skipped=[Skipped(p.function.name, p.reason) for p in plan.skipped],
                                 matched=len(plan.counted) + len(plan.skipped), make_report=make_report,
                                 remember=remembering(memory, "count"))
