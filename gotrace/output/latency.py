"""Latency reports as data (LatencyReport, FunctionReport) and their text (histograms) and JSON (the CLI contract).

Data in, text or JSON-ready dicts out: nothing here touches BPF, click or a
terminal. Durations are integers in nanoseconds until they are formatted.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import time
from collections.abc import Iterable, Sequence

from gotrace.output.histogram import LatencyHistogram, bucket_bounds, bucket_midpoint, overflow_index

UNITS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
UNIT_CHOICES = ("auto", *UNITS)
QUANTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_WIDTH = 100

_BAR_MAX = 40  # columns of the longest bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # index i: a block i/8 of a column wide
_UNMATCHED_NOTE = "entered but not seen returning"


@dataclasses.dataclass
class FunctionReport:
    """One traced function in one report: its latency histogram and its unmatched entries."""

    name: str
    histogram: LatencyHistogram
    unmatched: int = 0
    # --by caller / --by pid: this row holds the calls from one caller (a Go function, its call sites as
    # "file:line") or one process; a split row with neither holds the unmatched calls (no caller seen).
    split: str | None = None  # "caller" or "pid"
    caller: str | None = None
    pid: int | None = None
    call_sites: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """One report of `gotrace latency`: every traced function over one interval (or the whole run)."""

    target: dict  # "binary", "pid" (None: every process), "go_version"
    interval_s: float
    functions: list[FunctionReport]
    interval: bool = False  # one of several -i reports (the text gets a time stamp line)
    slow: object | None = None  # gotrace.output.slow.SlowCounts of this report, with --slow
    floor_ns: int | None = None  # what an empty function measures on this host (the probes' own cost)
    floor_reason: str | None = None  # why the floor is unknown, when it is

    def json(self) -> dict:
        out = {"event": "report", **latency_report_json(self.target, self.interval_s, self.functions)}
        if self.slow is not None:
            out["slow"] = self.slow.json()
        if self.floor_ns is not None or self.floor_reason is not None:
            out["floor_ns"] = None if self.floor_ns is None else int(self.floor_ns)
        return out

    def text(self, unit: str = "auto") -> str:
        body = render_latency_text(self.functions, unit=unit)
        if self.interval:
            body = f"--- {time.strftime('%H:%M:%S')}  last {self.interval_s:.1f}s ---\n" + body
        if self.slow is not None:
            body += "\n" + self.slow.text(unit) + "\n"
        if self.floor_ns is not None:
            body += (f"\nfloor: an empty Go function measures {format_duration(self.floor_ns, unit)} on this host "
                     "(the probes' own cost, included in every latency above)\n")
        elif self.floor_reason is not None:
            body += f"\nfloor: unknown ({self.floor_reason})\n"
        return body


@dataclasses.dataclass(frozen=True)
class _Summary:
    count: int
    mean_ns: int
    min_ns: int
    max_ns: int
    p50_ns: int
    p90_ns: int
    p99_ns: int
    p999_ns: int


def _summarize(histogram: LatencyHistogram) -> _Summary:
    """All statistics of one histogram, with a single hdrh pass; every value is 0 when there are no calls."""
    p = histogram.percentiles(QUANTILES)
    return _Summary(
        count=histogram.count(),
        mean_ns=histogram.mean_ns(),
        min_ns=histogram.min_ns(),
        max_ns=histogram.max_ns(),
        p50_ns=p[50.0],
        p90_ns=p[90.0],
        p99_ns=p[99.0],
        p999_ns=p[99.9],
    )


# ---- JSON ----


def latency_report_json(target: dict, interval_s: float, functions: Sequence[FunctionReport]) -> dict:
    """The JSON object of one `gotrace latency --json` report, with exactly the contract's keys.

    `target` needs "binary" and "go_version"; "pid" defaults to None (every
    process running the binary). A function without calls has count 0, every
    statistic 0 and no buckets. min_ns and max_ns are bucket bounds; buckets
    are the nonempty kernel buckets, [low_ns, high_ns).
    """
    return {
        "target": {
            "binary": str(target["binary"]),
            "pid": None if target.get("pid") is None else int(target["pid"]),
            "go_version": str(target["go_version"]),
        },
        "interval_s": float(interval_s),
        "functions": [_function_json(function) for function in functions],
    }


def _function_json(function: FunctionReport) -> dict:
    s = _summarize(function.histogram)
    split = {}
    if function.split == "caller":
        split = {"caller": function.caller, "call_sites": list(function.call_sites)}
    elif function.split == "pid":
        split = {"pid": function.pid}
    return {
        "name": function.name,
        **split,
        "count": s.count,
        "mean_ns": s.mean_ns,
        "min_ns": s.min_ns,
        "max_ns": s.max_ns,
        "p50_ns": s.p50_ns,
        "p90_ns": s.p90_ns,
        "p99_ns": s.p99_ns,
        "p999_ns": s.p999_ns,
        "buckets": [
            {"low_ns": low, "high_ns": high, "count": count}
            for low, high, count in function.histogram.nonempty_buckets()
        ],
        "unmatched": int(function.unmatched),
    }


# ---- durations ----


def _check_unit(unit: str) -> None:
    if unit not in UNIT_CHOICES:
        raise ValueError(f"unit must be one of {', '.join(UNIT_CHOICES)}, not {unit!r}")


def auto_unit(ns: int) -> str:
    """The largest unit in which `ns` is at least 1 (ns below 1 us)."""
    for unit in ("s", "ms", "us"):
        if ns >= UNITS[unit]:
            return unit
    return "ns"


def _three_digits(value: float) -> str:
    """`value` with 3 significant digits, never rounding away integer digits (12345.6 -> 12346)."""
    if value == 0:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(value)))
    text = f"{value:.{decimals}f}"
    if decimals and float(text) >= 10 ** (3 - decimals):  # rounding added a digit: 9.996 -> 10.00
        text = f"{value:.{decimals - 1}f}"
    return text


def format_duration(ns: int, unit: str = "auto") -> str:
    """`ns` nanoseconds as text in `unit` ("ns", "us", "ms", "s") or, with "auto", the unit that reads best.

    Three significant digits ("1.23ms", "12.3ms", "123ms", "0.500ms"); whole
    nanoseconds stay whole ("987ns"). Integer digits are never rounded away.
    """
    _check_unit(unit)
    if unit == "auto":
        unit = auto_unit(ns)
        text = format_duration(ns, unit)
        # 999.6us rounds to "1000us": say "1.00ms" instead
        if unit != "s" and float(text[: -len(unit)]) >= 1000:
            bigger = {"ns": "us", "us": "ms", "ms": "s"}[unit]
            return format_duration(ns, bigger)
        return text
    if unit == "ns":
        return f"{ns}ns"
    return _three_digits(ns / UNITS[unit]) + unit


def _format_exact(ns: int, unit: str) -> str:
    """`ns` exactly, in `unit` ("auto": per value), trailing zeros dropped: range labels ("500us", "1.05ms")."""
    if unit == "auto":
        unit = auto_unit(ns)
    whole, frac = divmod(ns, UNITS[unit])
    digits = len(str(UNITS[unit])) - 1
    frac_text = str(frac).zfill(digits).rstrip("0") if frac else ""
    return f"{whole}.{frac_text}{unit}" if frac_text else f"{whole}{unit}"


# ---- text ----


def render_latency_text(
    functions: Iterable[FunctionReport],
    unit: str = "auto",
    width: int = DEFAULT_WIDTH,
    ascii_bars: bool = False,
) -> str:
    """The text report of `gotrace latency`: per function a title, a stats row and a histogram.

    `unit` "auto" picks one unit per function, the one of its p90 (a value
    below 0.1 or from 1000 of that unit gets its own unit); an explicit
    unit formats every value in it. Range labels are exact ("500us - 1ms").
    Histogram rows merge the kernel's fine buckets into 1-2-5 ranges (or, for
    a narrow distribution, equal decimal steps); each bucket goes to the row
    holding its midpoint, so a row's count is exact to half a fine bucket
    (0.39%) at its edges. Leading and trailing empty rows are left out; a
    run of more than two empty rows inside shows as one row.
    `ascii_bars` draws bars with '#' instead of block characters.
    """
    _check_unit(unit)
    blocks = [_render_function(function, unit, width, ascii_bars) for function in functions]
    return "\n\n".join(blocks) + "\n" if blocks else "No functions traced.\n"


def _title(function: FunctionReport, count: int) -> str:
    calls = f"{count} call{'' if count == 1 else 's'}" if count else "no calls"
    if function.unmatched:
        calls += f", {function.unmatched} unmatched ({_UNMATCHED_NOTE})"
    return f"{function.name}{_split_label(function)}  {calls}"


def _split_label(function: FunctionReport) -> str:
    """`  from CALLER (file:line, ...)` or `  pid N` on a --by row; empty otherwise."""
    if function.split == "caller" and function.caller is not None:
        sites = ", ".join(site.rsplit("/", 1)[-1] for site in function.call_sites)
        return f"  from {function.caller}" + (f" ({sites})" if sites else "")
    if function.split == "pid" and function.pid is not None:
        return f"  pid {function.pid}"
    if function.split is not None and function.unmatched:
        return "  (caller unknown: never returned)" if function.split == "caller" else "  (process unknown)"
    return ""


def _render_function(function: FunctionReport, unit: str, width: int, ascii_bars: bool) -> str:
    s = _summarize(function.histogram)
    lines = [_title(function, s.count)]
    if not s.count:
        return lines[0]
    lines += _stats_lines(s, unit, width)
    lines += _histogram_lines(function.histogram, unit, width, ascii_bars)
    return "\n".join(lines)


def _stats_lines(s: _Summary, unit: str, width: int) -> list[str]:
    if unit == "auto":
        main_unit = auto_unit(s.p90_ns)

        def fmt(ns: int) -> str:
            in_unit = ns / UNITS[main_unit]
            if in_unit >= 1000 or 0 < in_unit < 0.1:
                return format_duration(ns, "auto")
            return format_duration(ns, main_unit)
    else:

        def fmt(ns: int) -> str:
            return format_duration(ns, unit)

    fields = [
        f"count {s.count}",
        f"mean {fmt(s.mean_ns)}",
        f"p50 {fmt(s.p50_ns)}",
        f"p90 {fmt(s.p90_ns)}",
        f"p99 {fmt(s.p99_ns)}",
        f"p99.9 {fmt(s.p999_ns)}",
        f"max {fmt(s.max_ns)}",
    ]
    # one line unless very long values (an explicit small unit) need more
    lines: list[str] = []
    current: list[str] = []
    for field in fields:
        if current and len("  " + "  ".join([*current, field])) > width:
            lines.append("  " + "  ".join(current))
            current = []
        current.append(field)
    lines.append("  " + "  ".join(current))
    return lines


@dataclasses.dataclass
class _Row:
    low_ns: int
    high_ns: int
    count: int = 0
    open_ended: bool = False  # holds the saturating last kernel bucket


def _nice_ceil(x: float) -> int:
    """Smallest 1, 2 or 5 times a power of ten that is >= x (at least 1)."""
    magnitude = 1
    while True:
        for digit in (1, 2, 5):
            if digit * magnitude >= x:
                return digit * magnitude
        magnitude *= 10


def _log_boundaries(lo_ns: int, hi_ns: int, digits: tuple[int, ...]) -> list[int]:
    """Boundaries 0, then digit*10^k, from the largest <= lo_ns to the smallest > hi_ns."""
    bounds, magnitude = [0], 1
    while bounds[-1] <= hi_ns:
        bounds += [d * magnitude for d in digits]
        magnitude *= 10
    start = bisect.bisect_right(bounds, lo_ns) - 1
    end = bisect.bisect_right(bounds, hi_ns)
    return bounds[start : end + 1]


def _group_rows(histogram: LatencyHistogram) -> list[_Row]:
    """Kernel buckets merged into readable rows, empty rows at both ends trimmed."""
    indices = sorted(histogram.counts)
    mids = [bucket_midpoint(i) for i in indices]
    lo_mid, hi_mid = mids[0], mids[-1]
    bounds = _log_boundaries(lo_mid, hi_mid, (1, 2, 5))
    if len(bounds) - 1 > 30:
        bounds = _log_boundaries(lo_mid, hi_mid, (1,))
    elif len(bounds) - 1 <= 3:
        # narrow: equal decimal steps, each at least 3 kernel buckets wide so
        # rows do not alternate between holding one and two of them
        lo_low = bucket_bounds(indices[0])[0]
        hi_low, hi_high = bucket_bounds(indices[-1])
        step = _nice_ceil(max((hi_high - lo_low) / 12, 3 * (hi_high - hi_low)))
        first = lo_mid // step * step
        bounds = list(range(first, (hi_mid // step + 1) * step + 1, step))
    rows = [_Row(low, high) for low, high in zip(bounds, bounds[1:])]
    for index, mid in zip(indices, mids):
        row = rows[bisect.bisect_right(bounds, mid) - 1]
        row.count += histogram.counts[index]
        if index == overflow_index():
            row.open_ended = True
    while rows and not rows[0].count:
        rows.pop(0)
    while rows and not rows[-1].count:
        rows.pop()
    return _collapse_empty_runs(rows)


def _collapse_empty_runs(rows: list[_Row], longest: int = 2) -> list[_Row]:
    """Rows with every run of more than `longest` empty rows replaced by one empty row spanning it."""
    out: list[_Row] = []
    run: list[_Row] = []
    for row in [*rows, None]:
        if row is not None and not row.count:
            run.append(row)
            continue
        if len(run) > longest:
            out.append(_Row(run[0].low_ns, run[-1].high_ns))
        else:
            out += run
        run = []
        if row is not None:
            out.append(row)
    return out


def _bar(count: int, peak: int, columns: int, ascii_bars: bool) -> str:
    if not count:
        return ""
    if ascii_bars:
        return "#" * max(1, round(count / peak * columns))
    eighths = max(1, round(count / peak * columns * 8))
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def _histogram_lines(histogram: LatencyHistogram, unit: str, width: int, ascii_bars: bool) -> list[str]:
    rows = _group_rows(histogram)
    total = sum(row.count for row in rows)
    peak = max(row.count for row in rows)
    lows = [_format_exact(row.low_ns, unit) for row in rows]
    highs = ["inf" if row.open_ended else _format_exact(row.high_ns, unit) for row in rows]
    low_w = max(len(text) for text in lows)
    high_w = max(len(text) for text in highs)
    count_w = max(len("count"), len(str(peak)))
    label_w = low_w + 3 + high_w
    fixed = 2 + label_w + 2 + count_w + 2 + 6 + 2 + 6 + 2
    bar_columns = max(1, min(_BAR_MAX, width - fixed))
    lines = [f"  {'latency':>{label_w}}  {'count':>{count_w}}  {'%':>6}  {'cum%':>6}  distribution"]
    cumulative = 0
    for row, low, high in zip(rows, lows, highs):
        cumulative += row.count
        label = f"{low:>{low_w}} - {high:>{high_w}}"
        pct = f"{100 * row.count / total:5.1f}%"
        cum = f"{100 * cumulative / total:5.1f}%"
        bar = _bar(row.count, peak, bar_columns, ascii_bars)
        lines.append(f"  {label}  {row.count:>{count_w}}  {pct}  {cum}  {bar}".rstrip())
    return lines
