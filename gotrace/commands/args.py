"""`gotrace args`: plan what to capture, run the args tracer, yield each call decoded as data."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace.binary.rtypes import RuntimeTypes
from gotrace.capture.plan import DEFAULT_DEPTH, DEFAULT_MAX_ELEMS, DEFAULT_STR_LEN, ArgsPlan, Limits, plan_args
from gotrace.capture.values import Call, decode_call
from gotrace.commands import DEFAULT_MAX_OVERHEAD_PCT
from gotrace.commands.target import open_traced, reading_priority, tracing_target
from gotrace.commands.tracing import cost_estimate, detached_event, guarded, refused_reason
from gotrace.output.args import ArgsSummary
from gotrace.output.events import BpfSource, GuardInfo, Skipped, Started, Timings
from gotrace.trace.args import ArgsFunction, ArgsTracer
from gotrace.trace.session import Ending
from gotrace.trace.tracer import traced_functions

DEFAULT_MAX_RATE = 10000
POLL_S = 0.05  # longest wait for records before the end conditions are checked again


@dataclass(frozen=True)
class ArgsRequest:
    """The options of `gotrace args`."""

    args: tuple[str, ...]  # [./bin] PATTERN...
    pid: int | None = None
    command: str | None = None
    duration_s: float | None = None
    max_events: int | None = None
    str_len: int = DEFAULT_STR_LEN
    depth: int = DEFAULT_DEPTH
    max_elems: int = DEFAULT_MAX_ELEMS
    sigs: tuple[str, ...] = ()
    max_rate: int = DEFAULT_MAX_RATE
    min_latency_ns: int = 0
    print_bpf: bool = False
    timings: dict[str, float] | None = None  # GOTRACE_TIMINGS: phases timed so far; None: off
    max_overhead_pct: float | None = DEFAULT_MAX_OVERHEAD_PCT  # the cost guard's budget; 0 or None: estimate only


def args_functions(gobin, plan: ArgsPlan) -> list[ArgsFunction]:
    """The tracer's view of the plan: ids, sites, packed operations."""
    traced = traced_functions(gobin, [probes for probes, _ in plan.traced])
    return [ArgsFunction.planned(fn, fplan) for fn, (_, fplan) in zip(traced, plan.traced)]


def args(request: ArgsRequest) -> Iterator[object]:
    """Yields Skipped per untraceable match, Started, then each completed call (Call) as it returns,
    and an ArgsSummary at the end. With print_bpf, only BpfSource."""
    started = time.perf_counter()
    target, patterns = tracing_target(request.args, request.pid, request.command)
    with open_traced(target) as gobin:
        with reading_priority(target):
            types = RuntimeTypes.of(gobin)
            limits = Limits(request.depth, request.max_elems, request.str_len)
            plan = plan_args(gobin, patterns, sig=request.sigs, limits=limits, types=types)
            functions = args_functions(gobin, plan)
        analysed = time.perf_counter()

        def make_tracer() -> ArgsTracer:
            return ArgsTracer(gobin, functions, pid=target.pid, max_rate=request.max_rate,
                              min_latency_ns=request.min_latency_ns)

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return
        for name, reason in plan.skipped:
            yield Skipped(name, reason)
        fplans = [fplan for _, fplan in plan.traced]

        def function_name(vaddr: int) -> str | None:
            fn = gobin.functions.function_at(vaddr)
            return fn.name if fn is not None and fn.entry_vaddr == vaddr else None
        wall_offset_ns = time.time_ns() - time.monotonic_ns()
        shown = undecodable = 0
        limit = request.max_events

        with guarded(target, make_tracer, request.max_overhead_pct) as session:
            tracer, guard = session.tracer, session.guard
            for func_id, err in sorted(tracer.refused.items()):
                yield Skipped(tracer.functions[func_id].name, refused_reason(err))
            for found in session.while_attaching:
                yield detached_event(found, False)
            if request.timings is not None:
                yield Timings({**request.timings, "elf_analysis": analysed - started, **tracer.timings_s},
                              tracer.bpf_compiler_peak_rss_kb, tracer.bpf_origin)
            yield Started(len(plan.traced) - len(tracer.refused), plan.n_sites, target.pid, gobin.go_version,
                          target.display,
                          GuardInfo(guard.max_overhead_pct, guard.costs.text(),
                                    cost_estimate(session.attach_cost, guard.max_overhead_pct)))
            ending = Ending(target, session.stop, request.duration_s)

            def decoded(records) -> Iterator[Call]:
                nonlocal shown, undecodable
                for record in records:
                    if limit is not None and shown >= limit:
                        return
                    if record.func_id >= len(fplans):
                        undecodable += 1
                        continue
                    try:
                        call = decode_call(record, fplans[record.func_id], types,
                                           load_bias=record.entry_ip - functions[record.func_id].entry_vaddr,
                                           wall_offset_ns=wall_offset_ns, function_name=function_name)
                    except Exception:  # a record we cannot make sense of: counted, never a crash
                        undecodable += 1
                        continue
                    shown += 1
                    yield call

            with guard.watching():
                while not ending.check() and (limit is None or shown < limit):
                    remaining = None if limit is None else limit - shown
                    yield from decoded(tracer.poll(ending.wait_s(POLL_S), remaining))
                    for found in guard.take_detached():
                        yield detached_event(found, False)
            for found in guard.take_detached():
                yield detached_event(found, False)
            if limit is None or shown < limit:
                yield from decoded(tracer.drain())
            yield ArgsSummary(shown, undecodable, tracer.stats(), request.max_rate,
                              limit is not None and shown >= limit, request.min_latency_ns,
                              len(tracer.detached_ids()))
