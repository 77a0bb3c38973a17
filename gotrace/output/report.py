"""What every report of a tracing command carries besides its functions: the target, the times, whether it is the
last, what the probes cost; and the one-line summaries of functions that had no calls or were detached.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """The probes' estimated cost to the traced processes over an interval (gotrace.trace.guard)."""

    hits_per_s: float
    share_of_cpu: float  # estimated CPU seconds per second
    share_of_target: float | None  # of the traced processes' CPU time; None when they used none
    max_overhead_pct: float | None  # the budget; None: the guard only estimates
    # of hits_per_s, those of latency's probe on runtime.goexit1 (no traced function's; never detached)
    goroutine_exits_per_s: float = 0.0

    def text(self) -> str:
        """e.g. "probes: 12,400 hits/s, about 14.1% of one CPU and 9.8% of the target's CPU (budget 5%)", with
        "(3,100 of them at goroutine exits)" after the hits when there are such."""
        target = ("" if self.share_of_target is None
                  else f" and {_pct(self.share_of_target)} of the target's CPU")
        budget = (f"budget {self.max_overhead_pct:g}%" if self.max_overhead_pct is not None
                  else "no budget: --max-overhead 0")
        exits = (f" ({self.goroutine_exits_per_s:,.0f} of them at goroutine exits)"
                 if round(self.goroutine_exits_per_s) else "")
        return (f"probes: {self.hits_per_s:,.0f} hits/s{exits}, about {_pct(self.share_of_cpu)} of one CPU{target} "
                f"({budget})")

    def json(self) -> dict:
        return {
            "hits_per_s": round(float(self.hits_per_s), 1),
            "goroutine_exit_hits_per_s": round(float(self.goroutine_exits_per_s), 1),
            "cpu_share_of_one_cpu": round(float(self.share_of_cpu), 6),
            "cpu_share_of_target": None if self.share_of_target is None else round(float(self.share_of_target), 6),
            "max_overhead_pct": self.max_overhead_pct,
        }


def _pct(share: float) -> str:
    pct = 100 * share
    return f"{pct:.2f}%" if pct < 1 else f"{pct:.1f}%" if pct < 100 else f"{pct:,.0f}%"


@dataclasses.dataclass(frozen=True)
class ReportFrame:
    """One report's context: what was traced, over which interval, and at what cost."""

    target: dict  # "binary", "pid" (None: every process), "go_version"
    interval_s: float
    ts_start_ns: int  # wall clock (ns since the epoch) at the start of the interval
    ts_end_ns: int
    final: bool
    cost: CostEstimate | None = None
    interval: bool = False  # one of several -i reports (the text gets a time stamp line)

    def json(self, functions: list[dict]) -> dict:
        """The JSON Lines object of a report: the contract's keys, then the additions."""
        out = {
            "event": "report",
            "target": {
                "binary": str(self.target["binary"]),
                "pid": None if self.target.get("pid") is None else int(self.target["pid"]),
                "go_version": str(self.target["go_version"]),
            },
            "interval_s": float(self.interval_s),
            "ts_start_ns": int(self.ts_start_ns),
            "ts_end_ns": int(self.ts_end_ns),
            "final": bool(self.final),
            "functions": functions,
        }
        if self.cost is not None:
            out["overhead"] = self.cost.json()
        return out

    def stamp(self) -> str:
        """The first line of an -i report."""
        return f"--- {time.strftime('%H:%M:%S', time.localtime(self.ts_end_ns / 1e9))}  last {self.interval_s:.1f}s ---\n"

    def framed(self, body: str) -> str:
        """A report's text: the -i stamp, the body, the probes' cost line."""
        if self.cost is not None:
            body += self.cost.text() + "\n"
        return self.stamp() + body if self.interval else body


def _summary_line(names: list[str], what: str, listed: bool, inline_max: int = 3) -> str | None:
    """ "<what>: a, b" when listed or when there are inline_max names or fewer, else "<what> (-v lists them)";
    None when there are no names."""
    if not names:
        return None
    if listed or len(names) <= inline_max:
        return what + ": " + ", ".join(names)
    return what + " (-v lists them)"


def _functions(n: int, singular: str, plural: str) -> str:
    """ "1 function is", "1,312 functions are" (the verb given for each)."""
    return f"{n:,} function{singular}" if n == 1 else f"{n:,} function{plural}"


def idle_line(names: list[str], listed: bool) -> str | None:
    """ "1,312 functions had no calls (-v lists them)", or None when there are none."""
    return _summary_line(names, _functions(len(names), "", "s") + " had no calls", listed, inline_max=0)


def probation_line(names: list[str], listed: bool) -> str | None:
    """ "412 functions are on probation: counted, not timed until ... (-v lists them)", or None when there are
    none."""
    return _summary_line(names, _functions(len(names), " is", "s are") + " on probation: counted, not timed "
                         "until the cost guard has seen what timing them costs", listed)


def counted_only_line(names: list[str], listed: bool) -> str | None:
    """ "12 functions were called only while on probation: counted, not timed (-v lists them)", or None when
    there are none: functions the cost guard has since given their return probes, no call of them timed yet."""
    return _summary_line(names, _functions(len(names), " was", "s were") + " called only while on probation: "
                         "counted, not timed", listed)


def detached_line(names: list[str], listed: bool) -> str | None:
    """ "3 functions were detached by the cost guard (-v lists them)", or None when there are none."""
    return _summary_line(names, _functions(len(names), " was", "s were") + " detached by the cost guard", listed)
