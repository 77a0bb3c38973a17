"""What a tracing session tells its user besides the reports, as data, and its one-line text.

The commands yield these objects; the CLI writes their text on stderr (the
reports and calls go to stdout). Nothing here knows how the facts were found.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Skipped:
    """A function the patterns matched that cannot be traced, and why."""

    name: str
    reason: str

    def text(self) -> str:
        return f"gotrace: skipping {self.name}: {self.reason}"


@dataclass(frozen=True)
class Started:
    """Probes are attached and the trace has begun."""

    n_functions: int
    n_sites: int
    pid: int | None  # None: every process running the binary
    go_version: str
    binary: str  # as the user named it

    def text(self) -> str:
        """e.g. "Tracing 2 functions (5 probe sites) in ./bin pid 4242 (go1.23.9)... Ctrl-C to stop";
        pid None: "in ./bin, every process (go1.23.9)"."""
        return header_line(self.n_functions, self.n_sites, self.pid, self.go_version, self.binary)


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
    """On kernels without uprobe_multi (before 6.6) every site detaches on its own, slowly."""

    n_sites: int
    estimated_s: float

    def text(self) -> str:
        return (f"gotrace: this kernel has no uprobe_multi links (Linux 6.6+): detaching {self.n_sites} probe "
                f"sites will take about {self.estimated_s:.0f} s after tracing stops; trace fewer functions to "
                "shorten it")


@dataclass(frozen=True)
class TargetExited:
    """A `-c` command ended; its status is not gotrace's."""

    command: str
    pid: int
    status: int  # exit status, or -N when killed by signal N

    def text(self) -> str:
        """How it ended, as `time` or strace would say it."""
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
