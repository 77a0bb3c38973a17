"""`gotrace top` as data (TopRow, TopSnapshot) and as the lines of its screen, for any terminal size.

One snapshot per refresh: per traced function its calls per second, its
calls since tracing began, p50, p99 and max over the last refresh, the calls
in flight, and its share of the time spent in all traced functions during
the last refresh; the probes' cost over the refresh and what the cost guard
detached. render_top() turns a snapshot into exactly `height` lines of at
most `width` columns; nothing here touches the terminal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gotrace.output.latency import format_duration
from gotrace.output.report import CostEstimate

SORTS = {  # key -> (title, sort key: larger first, except name)
    "t": ("time", lambda row: (-row.time_ns, row.name)),
    "c": ("calls/s", lambda row: (-row.calls_per_s, row.name)),
    "p": ("p99", lambda row: (-row.p99_ns, row.name)),
    "m": ("max", lambda row: (-row.max_ns, row.name)),
    "n": ("name", lambda row: (row.name,)),
}
KEYS_HELP = "sort: t time  c calls/s  p p99  m max  n name   space pause   q quit"
# (title, width) of the columns after FUNCTION, right-aligned
COLUMNS = (("CALLS/S", 8), ("CALLS", 8), ("P50", 7), ("P99", 7), ("MAX", 7), ("INFL", 5), ("TIME%", 6))
MIN_NAME_WIDTH = 12


@dataclass(frozen=True)
class TopRow:
    name: str
    calls_per_s: float
    calls_total: int      # since tracing began
    p50_ns: int           # over the last refresh (0 without calls)
    p99_ns: int
    max_ns: int
    in_flight: int        # calls running at the end of the refresh
    time_ns: int          # time spent in the function's calls that returned in the last refresh
    share: float          # time_ns over all rows' time_ns (0..1)
    detached: bool = False  # the cost guard removed its probes: its counts stop there


@dataclass(frozen=True)
class TopSnapshot:
    binary: str
    pid: int | None
    go_version: str
    refresh_s: float       # the time this snapshot covers
    rows: tuple[TopRow, ...]
    taken_at: float = field(default_factory=time.time)  # wall clock, for the header
    ended: str | None = None  # why tracing stopped ("target-exit", "duration", "signal"); None while live
    note: str | None = None   # a line to show (a skipped function, a warning)
    floor_ns: int | None = None  # what an empty function measures here (in every latency shown)
    cost: CostEstimate | None = None  # what the probes cost over this snapshot's refresh (the cost guard's)
    n_detached: int = 0  # functions the cost guard has detached so far


def _fit_name(name: str, width: int) -> str:
    """name in `width` columns: long names keep their end (the function) behind an ellipsis."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _duration(ns: int) -> str:
    return format_duration(ns) if ns else "-"


def _cells(row: TopRow) -> tuple[str, ...]:
    rate = f"{row.calls_per_s:.0f}" if row.calls_per_s >= 10 or row.calls_per_s == 0 else f"{row.calls_per_s:.1f}"
    return (rate, str(row.calls_total), _duration(row.p50_ns), _duration(row.p99_ns), _duration(row.max_ns),
            str(row.in_flight), f"{100 * row.share:.1f}")


def sorted_rows(rows, sort: str) -> list[TopRow]:
    return sorted(rows, key=SORTS[sort][1])


def render_top(snapshot: TopSnapshot | None, width: int, height: int, sort: str = "t",
               paused: bool = False) -> list[str]:
    """The screen: a title line, a totals line, the probes' cost (when the snapshot has it), the column header,
    one line per function (as many as fit, sorted by `sort`), and a status line; `height` lines, none wider
    than `width`."""
    width = max(width, 20)
    if snapshot is None:
        lines = ["gotrace top: attaching probes..."]
        return [line[:width] for line in lines + [""] * (height - len(lines))][:height]
    where = f"{snapshot.binary} pid {snapshot.pid}" if snapshot.pid is not None else f"{snapshot.binary}, every process"
    title = f"gotrace top  {where} ({snapshot.go_version})  {time.strftime('%H:%M:%S', time.localtime(snapshot.taken_at))}"
    total_rate = sum(row.calls_per_s for row in snapshot.rows)
    totals = (f"{len(snapshot.rows)} functions  {total_rate:.0f} calls/s  "
              f"{sum(row.calls_total for row in snapshot.rows)} calls since start  "
              f"sorted by {SORTS[sort][0]}")
    if snapshot.floor_ns:
        totals += f"  floor {format_duration(snapshot.floor_ns)}"
    guard = []
    if snapshot.cost is not None:
        detached = (f"; {snapshot.n_detached} function{'s' if snapshot.n_detached != 1 else ''} detached"
                    if snapshot.n_detached else "")
        guard.append(snapshot.cost.text() + detached)
    fixed = sum(w + 1 for _, w in COLUMNS)
    name_w = max(MIN_NAME_WIDTH, width - fixed)
    header = f"{'FUNCTION':<{name_w}}" + "".join(f" {title_:>{w}}" for title_, w in COLUMNS)
    rows = sorted_rows(snapshot.rows, sort)
    room = max(0, height - 4 - len(guard))
    body = []
    for row in rows[:room]:
        cells = "".join(f" {cell:>{w}}" for cell, (_, w) in zip(_cells(row), COLUMNS))
        name = f"{row.name} (detached)" if row.detached else row.name
        body.append(f"{_fit_name(name, name_w):<{name_w}}{cells}")
    if len(rows) > room and room:
        body[-1] = f"... {len(rows) - room + 1} more functions (make the terminal taller)"
    if snapshot.ended:
        status = {"target-exit": "the traced process exited", "duration": "-d elapsed",
                  "signal": "stopped"}.get(snapshot.ended, snapshot.ended)
        status = f"[{status}: final counts]  q quit"
    elif paused:
        status = "[paused]  space resume  q quit"
    else:
        status = snapshot.note or KEYS_HELP
    lines = [title, totals, *guard, header, *body]
    lines += [""] * (height - 1 - len(lines))
    lines.append(status)
    return [line[:width] for line in lines[:height]]
