"""Count reports as data (CountReport, FunctionCount) and their text and JSON (the CLI contract's `count`)."""

from __future__ import annotations

import dataclasses

from gotrace.output.report import ReportFrame, detached_line, idle_line

SORT_KEYS = ("count", "name", "address")


@dataclasses.dataclass(frozen=True)
class FunctionCount:
    """One function's calls over one report."""

    name: str
    count: int
    detached: bool = False  # by the cost guard: nothing is counted after that


@dataclasses.dataclass(frozen=True)
class CountReport:
    """One report of `gotrace count`: calls per traced function over one interval (or the whole run)."""

    frame: ReportFrame
    functions: list[FunctionCount]
    sort: str = "count"
    verbose: bool = False  # list idle and detached functions instead of one summary line each

    def rate(self, count: int) -> float:
        return count / self.frame.interval_s if self.frame.interval_s > 0 else 0.0

    def json(self) -> dict:
        return self.frame.json([{"name": f.name, "count": int(f.count), "rate_per_s": round(self.rate(f.count), 3),
                                 "detached": f.detached} for f in self.functions])

    def text(self, unit: str = "auto") -> str:
        return self.frame.framed(render_count_text(self, self.frame.interval_s))


def sorted_counts(functions: list[FunctionCount], sort: str) -> list[FunctionCount]:
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if sort == "count":
        return sorted(functions, key=lambda f: -f.count)
    if sort == "name":
        return sorted(functions, key=lambda f: f.name)
    return list(functions)


def render_count_text(report: CountReport, interval_s: float) -> str:
    """One row per function that was called: calls, calls per second, name; then the idle and detached summaries."""
    functions = sorted_counts(report.functions, report.sort)
    shown = functions if report.verbose else [f for f in functions if f.count]
    idle = [] if report.verbose else [f.name for f in functions if not f.count and not f.detached]
    detached = [] if report.verbose else [f.name for f in functions if not f.count and f.detached]
    lines = []
    if shown:
        count_w = max(len("CALLS"), *(len(f"{f.count:,}") for f in shown))
        rate_w = max(len("CALLS/S"), *(len(f"{report.rate(f.count):,.1f}") for f in shown))
        lines.append(f"{'CALLS':>{count_w}}  {'CALLS/S':>{rate_w}}  FUNCTION")
        for f in shown:
            note = "  (detached by the cost guard)" if f.detached else ""
            lines.append(f"{f.count:>{count_w},}  {report.rate(f.count):>{rate_w},.1f}  {f.name}{note}")
    elif not idle and not detached:
        lines.append("No functions traced.")
    lines += [line for line in (idle_line(idle, report.verbose), detached_line(detached, report.verbose)) if line]
    return "\n".join(lines) + "\n"
