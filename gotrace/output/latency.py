"""Latency reports as data (LatencyReport, FunctionReport) and their text (histograms) and JSON (the CLI contract).

Data in, text or JSON-ready dicts out: nothing here touches BPF, click or a
terminal. Durations are integers in nanoseconds until they are formatted.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Iterable, Sequence

from gotrace import header
from gotrace.output.histogram import LatencyHistogram, bucket_bounds, bucket_midpoint, overflow_index
from gotrace.output.report import ReportFrame, counted_only_line, detached_line, idle_line, probation_line

UNITS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
UNIT_CHOICES = ("auto", *UNITS)
QUANTILES = (50.0, 90.0, 99.0, 99.9)
DEFAULT_WIDTH = 100

_BAR_MAX = 40  # columns of the longest bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # index i: a block i/8 of a column wide
_UNMATCHED_NOTE = "unwound by a panic or runtime.Goexit"



SORT_KEYS = ("total", "count", "mean", "p99", "max", "name", "address")


@dataclasses.dataclass
class FunctionReport:
    """One traced function in one report: its latency histogram, the calls unwound without returning, and the calls
    still running at the end of the report."""

    name: str
    histogram: LatencyHistogram
    unmatched: int = 0  # unwound by a panic or runtime.Goexit
    in_flight: int = 0
    oldest_in_flight_ns: int | None = None
    detached: bool = False  # by the cost guard: nothing is counted after that
    untimed: int = 0  # entered while the start map was full: not timed
    on_probation: bool = False  # called, and the cost guard counts its calls (entry probes only), times none yet
    probation_calls: int = 0  # calls counted (entry probe only), not timed, while the function was on probation
    # --by caller / --by pid: this row holds the calls from one caller (a Go function, its call sites as
    # "file:line") or one process; a split row with neither holds the unmatched calls (no caller seen).
    split: str | None = None  # "caller" or "pid"
    caller: str | None = None
    pid: int | None = None
    call_sites: tuple[str, ...] = ()

    @property
    def idle(self) -> bool:
        return not (self.histogram.count() or self.in_flight or self.unmatched or self.untimed)

    @property
    def waiting(self) -> bool:
        """Called only on probation (counted, not timed), or on probation now, with nothing timed to show."""
        return (self.on_probation or self.probation_calls > 0) and self.idle


@dataclasses.dataclass(frozen=True)
class LatencyReport:
    """One report of `gotrace latency`: every traced function over one interval (or the whole run)."""

    frame: ReportFrame
    functions: list[FunctionReport]
    sort: str = "total"
    verbose: bool = False  # list idle and detached functions instead of one summary line each
    slow: object | None = None  # gotrace.output.slow.SlowCounts of this report, with --slow
    floor_ns: int | None = None  # what an empty function measures on this host (the probes' own cost)
    floor_reason: str | None = None  # why the floor is unknown, when it is

    def json(self) -> dict:
        out = self.frame.json([_function_json(function) for function in self.functions])
        if self.slow is not None:
            out["slow"] = self.slow.json()
        if self.floor_ns is not None or self.floor_reason is not None:
            out["floor_ns"] = None if self.floor_ns is None else int(self.floor_ns)
        return out

    def text(self, unit: str = "auto") -> str:
        body = render_latency_text(self.functions, unit=unit, sort=self.sort, verbose=self.verbose)
        if self.slow is not None:
            body += "\n" + self.slow.text(unit) + "\n"
        if self.floor_ns is not None:
            body += (f"\nfloor: an empty Go function measures {format_duration(self.floor_ns, unit)} on this host "
                     "(the probes' own cost, included in every latency above)\n")
        elif self.floor_reason is not None:
            body += f"\nfloor: unknown ({self.floor_reason})\n"
        return self.frame.framed(body)


def sorted_functions(functions: Sequence[FunctionReport], sort: str) -> list[FunctionReport]:
    """functions in the order of `sort` (SORT_KEYS): the largest total time, count, mean, p99 or max first;
    by name; or as given ("address": the order the functions were matched in, by entry address)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if sort == "address":
        return list(functions)
    if sort == "name":
        return sorted(functions, key=lambda f: f.name)
    keys = {
        "total": lambda h: h.mean_ns() * h.count(),
        "count": lambda h: h.count(),
        "mean": lambda h: h.mean_ns(),
        "p99": lambda h: h.percentiles([99.0])[99.0],
        "max": lambda h: h.max_ns(),
    }
    key = keys[sort]
    return sorted(functions, key=lambda f: (-(key(f.histogram) if f.histogram.count() else -1), -f.in_flight))


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
    """All statistics of one histogram, with a single hdrh pass (a histogram without calls: see _function_json)."""
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


def latency_report_json(target: dict, interval_s: float, functions: Sequence[FunctionReport], *,
                        ts_start_ns: int = 0, ts_end_ns: int = 0, final: bool = True) -> dict:
    """The JSON object of one `gotrace latency --json` report: the contract's keys and its additions.

    `target` needs "binary" and "go_version"; "pid" defaults to None (every
    process running the binary). A function without calls has count 0, null
    statistics and no buckets. min_ns and max_ns are bucket bounds; buckets
    are the nonempty kernel buckets, [low_ns, high_ns).
    """
    frame = ReportFrame(target, interval_s, ts_start_ns, ts_end_ns, final)
    return frame.json([_function_json(function) for function in functions])


def _function_json(function: FunctionReport) -> dict:
    count = function.histogram.count()
    out: dict = {"name": function.name}
    if function.split == "caller":
        out.update(caller=function.caller, call_sites=list(function.call_sites))
    elif function.split == "pid":
        out["pid"] = function.pid
    out["count"] = count
    if count:
        s = _summarize(function.histogram)
        out.update(mean_ns=s.mean_ns, min_ns=s.min_ns, max_ns=s.max_ns, p50_ns=s.p50_ns, p90_ns=s.p90_ns,
                   p99_ns=s.p99_ns, p999_ns=s.p999_ns)
    else:
        out.update(dict.fromkeys(("mean_ns", "min_ns", "max_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns")))
    out["buckets"] = [{"low_ns": low, "high_ns": high, "count": n}
                      for low, high, n in function.histogram.nonempty_buckets()]
    out["unmatched"] = int(function.unmatched)
    out["in_flight"] = int(function.in_flight)
    out["oldest_in_flight_ns"] = None if function.oldest_in_flight_ns is None else int(function.oldest_in_flight_ns)
    out["detached"] = bool(function.detached)
    out["untimed"] = int(function.untimed)
    out["on_probation"] = bool(function.on_probation)
    out["probation_calls"] = int(function.probation_calls)
    return out


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
    *,
    sort: str = "address",
    verbose: bool = True,
) -> str:
    """The text report of `gotrace latency`: per function a title, a stats row and a histogram.

    Functions come in `sort` order (SORT_KEYS). Without `verbose`, functions
    without calls (and none in flight) are one summary line at the end, as
    are the ones the cost guard detached.
    `unit` "auto" picks one unit per function, the one of its p90 (a value
    below 0.1 or from 1000 of that unit gets its own unit); an explicit
    unit formats every value in it. Range labels are exact ("500us - 1ms").
    Histogram rows merge the kernel's fine buckets into 1-2-5 ranges (or, for
    a narrow distribution, equal decimal steps); each bucket goes to the row
    holding its midpoint, so a row's count is exact to half a fine bucket
    (0.39%) at its edges. Leading and trailing empty rows are left out; a
    run of more than two empty rows inside shows as one line "...", so every
    row keeps the width of its scheme.
    `ascii_bars` draws bars with '#' instead of block characters.
    """
    _check_unit(unit)
    functions = sorted_functions(list(functions), sort)
    shown = functions if verbose else [f for f in functions if not f.idle]
    idle = [] if verbose else [f.name for f in functions if f.idle and not f.detached and not f.waiting]
    detached = [] if verbose else [f.name for f in functions if f.detached and f.idle]
    waiting = [] if verbose else [f.name for f in functions if f.waiting and f.on_probation and not f.detached]
    counted = [] if verbose else [f.name for f in functions if f.waiting and not f.on_probation and not f.detached]
    blocks = [_render_function(function, unit, width, ascii_bars) for function in shown]
    if not blocks and not idle and not detached and not waiting and not counted:
        return "No functions traced.\n"
    tail = [line for line in (idle_line(idle, verbose), detached_line(detached, verbose),
                              probation_line(waiting, verbose), counted_only_line(counted, verbose)) if line]
    text = "\n\n".join(blocks) + ("\n" if blocks else "")
    if tail:
        text += ("\n" if blocks else "") + "\n".join(tail) + "\n"
    return text


def _title(function: FunctionReport, count: int) -> str:
    if count:
        calls = f"{count} call{'' if count == 1 else 's'}"
    else:
        calls = "no timed calls" if function.probation_calls else "no calls"
    if function.in_flight:
        calls += f", {function.in_flight} in flight"
        if function.oldest_in_flight_ns is not None:
            calls += f" (oldest {format_duration(function.oldest_in_flight_ns)})"
    if function.unmatched:
        calls += f", {function.unmatched} unmatched ({_UNMATCHED_NOTE})"
    if function.untimed:
        calls += f", {function.untimed} not timed (over {header.constant('GT_START_ENTRIES'):,} calls open at once)"
    counted = function.probation_calls
    if function.on_probation and not function.detached:
        calls += f", on probation: {counted} counted, not timed yet" if counted else ", on probation (not timed yet)"
    elif counted:
        calls += f", {counted} counted on probation (not timed)"
    if function.detached:
        calls += ", detached by the cost guard"
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
    if not function.histogram.count():
        return _title(function, 0)
    s = _summarize(function.histogram)
    lines = [_title(function, s.count)]
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
    elided: bool = False  # stands for a run of empty rows: printed as "..."


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
    """Rows with every run of more than `longest` empty rows replaced by one elided row (no label of its own)."""
    out: list[_Row] = []
    run: list[_Row] = []
    for row in [*rows, None]:
        if row is not None and not row.count:
            run.append(row)
            continue
        if len(run) > longest:
            out.append(_Row(run[0].low_ns, run[-1].high_ns, elided=True))
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
    labelled = [row for row in rows if not row.elided]
    lows = [_format_exact(row.low_ns, unit) for row in labelled]
    highs = ["inf" if row.open_ended else _format_exact(row.high_ns, unit) for row in labelled]
    low_w = max(len(text) for text in lows)
    high_w = max(len(text) for text in highs)
    count_w = max(len("count"), len(str(peak)))
    label_w = low_w + 3 + high_w
    fixed = 2 + label_w + 2 + count_w + 2 + 6 + 2 + 6 + 2
    bar_columns = max(1, min(_BAR_MAX, width - fixed))
    lines = [f"  {'latency':>{label_w}}  {'count':>{count_w}}  {'%':>6}  {'cum%':>6}  distribution"]
    cumulative = 0
    labels = iter(zip(lows, highs))
    for row in rows:
        if row.elided:
            lines.append(f"  {'...':>{low_w + 2}}")
            continue
        low, high = next(labels)
        cumulative += row.count
        label = f"{low:>{low_w}} - {high:>{high_w}}"
        pct = f"{100 * row.count / total:5.1f}%"
        cum = f"{100 * cumulative / total:5.1f}%"
        bar = _bar(row.count, peak, bar_columns, ascii_bars)
        lines.append(f"  {label}  {row.count:>{count_w}}  {pct}  {cum}  {bar}".rstrip())
    return lines
