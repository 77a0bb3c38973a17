"""What a tracing session tells its user besides the reports, as data, and its one-line text.

The commands yield these objects; the CLI writes their text on stderr (the
reports and calls go to stdout). Nothing here knows how the facts were found.
"""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass

from gotrace.output.report import CostEstimate


@dataclass(frozen=True)
class Skipped:
    """A function the patterns matched that cannot be traced, and why."""

    name: str
    reason: str

    def text(self) -> str:
        return f"gotrace: skipping {self.name}: {self.reason}"


@dataclass(frozen=True)
class SkippedSummary:
    """The matched functions that cannot be traced: one line by reason, or (verbose, or only a few) one per function."""

    skipped: tuple[Skipped, ...]
    matched: int  # functions the patterns matched, these included
    verbose: bool = False

    LIST_AT_MOST = 3

    def text(self) -> str:
        if self.verbose or len(self.skipped) <= self.LIST_AT_MOST:
            return "\n".join(skipped.text() for skipped in self.skipped)
        reasons = Counter(skipped.reason for skipped in self.skipped)
        by_reason = ", ".join(f"{n:,} {reason}" for reason, n in reasons.most_common())
        return (f"gotrace: skipping {len(self.skipped):,} of {self.matched:,} matched functions: {by_reason} "
                "(-v lists them)")


@dataclass(frozen=True)
class GuardInfo:
    """The cost guard at the start: its budget, what a hit costs here, and what the probes cost while attaching."""

    max_overhead_pct: float | None
    hit_costs: str  # e.g. "a probe hit costs 1.0us at an entry on a push, ... (calibrated)"
    cost: CostEstimate | None = None  # while attaching

    def text(self) -> str:
        budget = (f"budget {self.max_overhead_pct:g}% of the target's CPU (--max-overhead)"
                  if self.max_overhead_pct is not None else "no budget (--max-overhead 0): estimates only")
        line = f"cost guard: {budget}; {self.hit_costs}"
        if self.cost is not None and self.cost.hits_per_s:
            line += f"\nwhile attaching, {self.cost.text()}"
        return line


@dataclass(frozen=True)
class Started:
    """Probes are attached and the trace has begun."""

    n_functions: int
    n_sites: int
    pid: int | None  # None: every process running the binary
    go_version: str
    binary: str  # as the user named it
    guard: GuardInfo | None = None

    def text(self) -> str:
        """e.g. "Tracing 2 functions (5 probe sites) in ./bin pid 4242 (go1.23.9)... Ctrl-C to stop";
        pid None: "in ./bin, every process (go1.23.9)". Then the cost guard's line(s)."""
        line = header_line(self.n_functions, self.n_sites, self.pid, self.go_version, self.binary)
        if self.guard is not None:
            line += "\n" + self.guard.text()
        return line


@dataclass(frozen=True)
class DetachedFunction:
    name: str
    hits_per_s: float
    share_of_target: float | None  # its probes' share of the target's CPU time
    reason: str


@dataclass(frozen=True)
class Detached:
    """Functions the cost guard detached at one check, costliest first."""

    functions: tuple[DetachedFunction, ...]
    total_share_of_target: float | None  # of all probes, in the window that exceeded the budget
    max_overhead_pct: float
    took_s: float  # from the end of that window to the traps removed
    verbose: bool = False

    LIST_AT_MOST = 3

    def text(self) -> str:
        def one(f: DetachedFunction) -> str:
            share = "" if f.share_of_target is None else f", {100 * f.share_of_target:.1f}% of the target's CPU"
            return f"{f.name} ({f.hits_per_s:,.0f} hits/s{share})"

        total = ("" if self.total_share_of_target is None
                 else f"probes cost {100 * self.total_share_of_target:.1f}% of the target's CPU, ")
        why = f"{total}over the --max-overhead budget of {self.max_overhead_pct:g}%"
        n = len(self.functions)
        if self.verbose or n <= self.LIST_AT_MOST:
            names = ", ".join(one(f) for f in self.functions)
        else:
            names = ", ".join(one(f) for f in self.functions[:self.LIST_AT_MOST]) + f" and {n - self.LIST_AT_MOST:,} more (-v lists them)"
        return (f"gotrace: detached {n:,} function{'s' if n != 1 else ''} in {self.took_s:.2f}s ({why}), "
                f"costliest first: {names}")

    def json_lines(self) -> list[dict]:
        return [{"event": "detached", "func": f.name, "reason": f.reason, "hits_per_s": round(f.hits_per_s, 1),
                 "cpu_share_of_target": None if f.share_of_target is None else round(f.share_of_target, 6),
                 "detach_s": round(self.took_s, 4)} for f in self.functions]


def header_line(n_functions: int, n_sites: int, pid: int | None, go_version: str, binary: str) -> str:
    """The line printed when tracing starts (see Started)."""
    version = go_version if go_version.startswith("go") or not go_version else f"go{go_version}"
    where = f"{binary} pid {pid}" if pid is not None else f"{binary}, every process"
    if version:
        where += f" ({version})"
    functions = f"{n_functions} function{'' if n_functions == 1 else 's'}"
    sites = f"{n_sites} probe site{'' if n_sites == 1 else 's'}"
    return f"Tracing {functions} ({sites}) in {where}... Ctrl-C to stop"


@dataclass(frozen=True)
class Serving:
    """--prometheus: the metrics endpoint is up."""

    url: str

    def text(self) -> str:
        return f"gotrace: serving Prometheus metrics at {self.url}"


@dataclass(frozen=True)
class AwaitingScrape:
    """--prometheus with -c: the command exited; /metrics stays up for one more scrape."""

    grace_s: float

    def text(self) -> str:
        return f"gotrace: serving the final counts until the next scrape ({self.grace_s:.0f} s at most; Ctrl-C ends it)"


@dataclass(frozen=True)
class Timings:
    """GOTRACE_TIMINGS=1: seconds each start-up phase took, where the BPF programs came from, and the peak RSS
    of clang when it had to compile them."""

    phases_s: dict[str, float]
    compiler_peak_rss_kb: int | None = None
    bpf_origin: str | None = None  # "shipped", "cached" or "compiled"

    def text(self) -> str:
        line = "gotrace: timings " + " ".join(f"{name}_s={value:.4f}" for name, value in self.phases_s.items())
        if self.bpf_origin:
            line += f"\ngotrace: bpf programs {self.bpf_origin}"
        if self.compiler_peak_rss_kb:
            line += f"\ngotrace: bpf compile child peak RSS {self.compiler_peak_rss_kb / 1024:.1f} MB"
        return line


@dataclass(frozen=True)
class SlowDetach:
    """On kernels without uprobe_multi (before 6.6) every site detaches on its own, slowly (gotrace.bpf.uprobes: in a helper process, after the report)."""

    n_sites: int
    estimated_s: float

    def text(self) -> str:
        return (f"gotrace: this kernel has no uprobe_multi links (Linux 6.6+): detaching {self.n_sites} probe "
                f"sites will take about {self.estimated_s:.0f} s after tracing stops (a helper process, "
                "gotrace-detach, does it after the final report; the probes cost the target until it is done); "
                "trace fewer functions to shorten it")


@dataclass(frozen=True)
class TargetExited:
    """The traced process ended: a `-c` command (with its status, which is not gotrace's) or a `-p` process."""

    command: str
    pid: int
    status: int | None  # exit status, or -N when killed by signal N; None: not our child (-p), unknown

    def text(self) -> str:
        """How it ended, as `time` or strace would say it."""
        if self.status is None:
            return f"gotrace: process {self.pid} ({self.command}) exited"
        if self.status < 0:
            try:
                how = f"was killed by {signal.Signals(-self.status).name}"
            except ValueError:
                how = f"was killed by signal {-self.status}"
        else:
            how = f"exited with status {self.status}"
        return f"gotrace: {self.command} (pid {self.pid}) {how}"


@dataclass(frozen=True)
class BpfSource:
    """--print-bpf: the C text as compiled."""

    text: str


@dataclass(frozen=True)
class FloorMeasured:
    """The measurement floor was measured by this run (once per host), or could not be."""

    floor_ns: int | None
    reason: str | None
    cache_path: str

    def text(self) -> str:
        if self.floor_ns is None:
            return f"gotrace: the measurement floor of this host is unknown: {self.reason}"
        return (f"gotrace: measured this host's floor once: an empty Go function measures "
                f"{self.floor_ns / 1000:.1f}us here (cached in {self.cache_path})")
