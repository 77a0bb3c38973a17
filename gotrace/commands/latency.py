"""`gotrace latency`: plan the probes, run the tracer, yield each report as data."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from gotrace import __version__
from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.binary.symbolize import SourceFrame, Symbolizer
from gotrace.commands.exporter import MetricsExporter
from gotrace.commands.floor import cache_path as floor_cache_path
from gotrace.commands.floor import host_floor
from gotrace.commands.target import open_traced, tracing_target
from gotrace.errors import PatternError
from gotrace.output.events import (AwaitingScrape, BpfSource, FloorMeasured, Serving, Skipped, SlowDetach, Started,
                                   TargetExited, Timings)
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport, LatencyReport
from gotrace.output.prometheus import MetricsSnapshot, SeriesCounts
from gotrace.output.slow import SlowCall, SlowCounts
from gotrace.trace.latency import LatencyTracer, SlowRecord
from gotrace.trace.session import Ending, StopFlag, attached
from gotrace.trace.tracer import TracedFunction, traced_functions

DEFAULT_STACK_DEPTH = 16
DEFAULT_SLOW_RATE = 100  # slow calls per second printed at most; the rest are counted
UNKNOWN_FRAME = "?"

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


def split_reports(plan: LatencyPlan, functions: list[TracedFunction], counts: dict, by: str,
                  symbolizer: Symbolizer) -> list[FunctionReport]:
    """--by rows: per traced function, one row per caller (a Go function, all its call sites merged) or
    per process, the busiest first; a function's unmatched calls (never returned, so no caller was seen)
    in a row of their own; a function without calls as one empty row."""
    out: list[FunctionReport] = []
    for func_id, name in enumerate(report_names(plan)):
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
    prometheus: str | None = None  # HOST:PORT to serve /metrics on while tracing
    quiet: bool = False  # no reports (with prometheus: the metrics are the output)
    keep_exited_s: float = KEEP_EXITED_S  # every-process mode: series of an exited process stay this long
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


def ticks(ending: Ending, interval_s: float | None, housekeeping_s: float | None, wait=None) -> Iterator[object]:
    """Yields "report" every interval_s and "housekeeping" every housekeeping_s (None: never) until the
    trace ends (ending.reason says why). With `wait`, the pauses are wait(seconds) instead of sleeping: it
    returns what arrived meanwhile (slow calls), and each of those is yielded as it comes."""
    next_report = ending.started + interval_s if interval_s else None
    next_housekeeping = ending.started + housekeeping_s if housekeeping_s else None
    while not ending.check():
        now = time.monotonic()
        if next_report is not None and now >= next_report:
            yield "report"
            next_report += interval_s
            continue
        if next_housekeeping is not None and now >= next_housekeeping:
            yield "housekeeping"
            next_housekeeping = now + housekeeping_s
            continue
        wake = ending.wait_s()
        for due in (next_report, next_housekeeping):
            if due is not None:
                wake = min(wake, max(0.0, due - now))
        if wait is None:
            time.sleep(wake)
        else:
            yield from wait(wake)


def wait_for_last_scrape(exporter: MetricsExporter, stop: StopFlag, exited: float,
                         grace_s: float = LAST_SCRAPE_GRACE_S) -> None:
    """After a -c command exited (noticed at `exited`, monotonic): until a scrape has read the final counts,
    grace_s at most, or a signal."""
    while not stop and not exporter.scraped_since(exited) and time.monotonic() - exited < grace_s:
        time.sleep(0.05)


def latency(request: LatencyRequest) -> Iterator[object]:
    """Yields, in order: Skipped per untraceable match, FloorMeasured when this run measured the host's
    floor, Started, Serving with --prometheus, reports (LatencyReport) every interval and a final one (none
    when quiet), with slow_ns each slow call (SlowCall) as it returns in between, then TargetExited when a
    -c command ended. With print_bpf, only BpfSource.

    With --prometheus, the port is bound before the probes are attached (a taken port is a UsageError), and
    /metrics serves cumulative counts from attach until the trace ends; after a -c command's exit, until
    the next scrape (LAST_SCRAPE_GRACE_S at most).
    """
    started = time.perf_counter()
    target, patterns = tracing_target(request.args, request.pid, request.command)
    with open_traced(target) as gobin, contextlib.ExitStack() as cleanup:
        plan = plan_latency(gobin, patterns)
        analysed = time.perf_counter()

        functions = traced_functions(gobin, plan.traced)

        def make_tracer() -> LatencyTracer:
            return LatencyTracer(gobin, functions, pid=target.pid, slow_ns=request.slow_ns or 0,
                                 slow_rate=request.slow_rate, stack_depth=request.stack_depth,
                                 by=request.by or "none")

        if request.print_bpf:
            yield BpfSource(make_tracer().bpf_source())
            return
        for skipped in plan.skipped:
            yield Skipped(skipped.function.name, skipped.reason)
        floor = host_floor() if request.floor and not request.quiet else None
        if floor is not None and (floor.measured_now or floor.ns is None):
            yield FloorMeasured(floor.ns, floor.reason, str(floor_cache_path()))
        target_info = {"binary": target.display, "pid": target.pid, "go_version": gobin.go_version}
        exporter = None
        if request.prometheus is not None:
            exporter = cleanup.enter_context(MetricsExporter(request.prometheus))
        with attached(target, make_tracer) as (tracer, stop):
            target_info["pid"] = target.pid  # a -c command's pid exists from here on
            warning = slow_detach(tracer.attached_by, plan.n_sites)
            if warning is not None:
                yield warning
            if request.timings is not None:
                yield Timings({**request.timings, "elf_analysis": analysed - started, **tracer.timings_s},
                              tracer.bpf_compiler_peak_rss_kb, tracer.bpf_origin)
            yield Started(len(plan.traced), plan.n_sites, target.pid, gobin.go_version, target.display)
            names = report_names(plan)
            if exporter is not None:
                binary_label = exported_binary_path(target)
                exporter.start(lambda: metrics_snapshot(tracer, names, binary_label, gobin.go_version, target.pid))
                yield Serving(exporter.url)
            ending = Ending(target, stop, request.duration_s)
            last = ending.started
            wall_offset_ns = time.time_ns() - time.monotonic_ns()
            slow_base = dict.fromkeys(("events", "dropped_rate_limit", "dropped_ringbuf_full"), 0)

            def slow_calls(timeout_s: float) -> list[SlowCall]:
                return [slow_call(record, names, functions, gobin.symbolizer, wall_offset_ns, request.stack_depth)
                        for record in tracer.poll_slow(timeout_s) if record.func_id < len(functions)]

            def slow_counts() -> SlowCounts | None:
                nonlocal slow_base
                if not request.slow_ns:
                    return None
                now = tracer.slow_stats()
                delta = {name: now[name] - slow_base[name] for name in slow_base}
                slow_base = {name: now[name] for name in slow_base}
                return SlowCounts(request.slow_ns, request.slow_rate, delta["events"], delta["dropped_rate_limit"],
                                  delta["dropped_ringbuf_full"])

            def report() -> LatencyReport:
                nonlocal last
                now = time.monotonic()
                counts = tracer.read(reset=True)
                if request.by:
                    rows = split_reports(plan, functions, counts, request.by, gobin.symbolizer)
                else:
                    rows = function_reports(plan, counts)
                interval_s, last = now - last, now
                return LatencyReport(target_info, interval_s, rows, interval=request.interval_s is not None,
                                     slow=slow_counts(), floor_ns=floor.ns if floor else None,
                                     floor_reason=floor.reason if floor else None)

            every_process = target.pid is None
            for tick in ticks(ending, request.interval_s, HOUSEKEEPING_S if every_process else None,
                              wait=slow_calls if request.slow_ns else None):
                if tick == "housekeeping":
                    tracer.retire_exited(request.keep_exited_s)
                elif tick != "report":
                    yield tick  # a slow call
                elif not request.quiet:
                    yield from slow_calls(0.0)
                    yield report()
            exited_seen = time.monotonic()  # the counts are final from here when the target exited
            if request.slow_ns:
                yield from slow_calls(0.0)
            if not request.quiet:
                yield report()
            if ending.reason == "target-exit" and target.exit_status is not None:
                yield TargetExited(target.command[0], target.pid, target.exit_status)
                if exporter is not None and not exporter.scraped_since(exited_seen):
                    yield AwaitingScrape(LAST_SCRAPE_GRACE_S)
                    wait_for_last_scrape(exporter, stop, exited_seen)
            if exporter is not None:
                exporter.close()  # before the probes and maps go


def exported_binary_path(target) -> str:
    """The `binary` label: the traced executable's absolute path (for -p, the one /proc/PID/exe names)."""
    return target.display if target.display.startswith("/") else os.path.abspath(target.binary_path)
