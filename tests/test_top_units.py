"""The screen of `gotrace top` without a terminal: render_top() lines for an 80x24 terminal, sorting, truncation."""

from __future__ import annotations

from gotrace.commands.top import top_rows
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.top import TopRow, TopSnapshot, render_top
from gotrace.trace.latency import FunctionCounts


def row(name: str, rate: float, time_ns: int, p99_ns: int = 1000, share: float = 0.0) -> TopRow:
    return TopRow(name, rate, int(rate) * 3, 500, p99_ns, 2 * p99_ns, 0, time_ns, share)


def snapshot(rows) -> TopSnapshot:
    return TopSnapshot("./server", 4242, "go1.23.9", 1.0, tuple(rows), taken_at=0.0)


def test_every_line_fits_80x24_and_rows_are_sorted_by_time():
    rows = [row("main.a", 10, 300), row("main.b", 500, 900), row("main.c", 1, 5)]
    lines = render_top(snapshot(rows), 80, 24)
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("gotrace top  ./server pid 4242 (go1.23.9)")
    assert lines[2].split() == ["FUNCTION", "CALLS/S", "CALLS", "P50", "P99", "MAX", "INFL", "TIME%"]
    assert [line.split()[0] for line in lines[3:6]] == ["main.b", "main.a", "main.c"]
    assert lines[-1].startswith("sort: t time")
    by_name = render_top(snapshot(rows), 80, 24, sort="n")
    assert [line.split()[0] for line in by_name[3:6]] == ["main.a", "main.b", "main.c"]
    by_rate = render_top(snapshot(rows), 80, 24, sort="c")
    assert [line.split()[0] for line in by_rate[3:6]] == ["main.b", "main.a", "main.c"]


def test_long_names_keep_their_end_and_extra_rows_are_counted():
    long = "github.com/example/project/internal/storage/postgres.(*Store).QueryWithRetry"
    rows = [row(long, 5, 1000)] + [row(f"main.f{i:02d}", 1, i) for i in range(40)]
    lines = render_top(snapshot(rows), 80, 24)
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert lines[3].split()[0].startswith("…") and lines[3].split()[0].endswith("(*Store).QueryWithRetry")
    assert lines[-2] == "... 22 more functions (make the terminal taller)"


def test_paused_and_ended_status_lines():
    assert render_top(snapshot([]), 80, 24, paused=True)[-1].startswith("[paused]")
    ended = TopSnapshot("./server", None, "go1.23.9", 1.0, (), taken_at=0.0, ended="target-exit")
    lines = render_top(ended, 80, 24)
    assert "every process" in lines[0] and lines[-1].startswith("[the traced process exited: final counts]")


def test_rows_from_counts_add_up_and_share_the_time():
    hist_a = LatencyHistogram.from_values([1_000_000] * 3)
    hist_b = LatencyHistogram.from_values([1_000_000])
    totals = [10, 0]
    counts = {0: FunctionCounts(hist_a.counts, 0), 1: FunctionCounts(hist_b.counts, 0)}
    a, b = top_rows(["main.a", "main.b"], counts, totals, 0.5)
    assert totals == [13, 1] and (a.calls_total, b.calls_total) == (13, 1)
    assert (a.calls_per_s, b.calls_per_s) == (6.0, 2.0)
    assert abs(a.share - 0.75) < 1e-9 and abs(b.share - 0.25) < 1e-9


def test_the_probes_cost_and_the_detached_functions_are_on_the_screen():
    from dataclasses import replace

    from gotrace.output.report import CostEstimate

    rows = [replace(row("main.hot", 90_000, 900), detached=True), row("main.a", 10, 300)]
    cost = CostEstimate(12_400, 0.141, 0.098, 5.0)
    lines = render_top(replace(snapshot(rows), cost=cost, n_detached=1), 80, 24)
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    assert lines[2].startswith("probes: 12,400 hits/s, about 14.1% of one CPU and 9.8% of the target's CPU")
    assert lines[2].endswith("; 1 function detached") or len(lines[2]) == 80
    assert lines[3].split()[0] == "FUNCTION"
    assert lines[4].startswith("main.hot (detached) ") and lines[5].startswith("main.a ")
    assert lines[-2] == ""  # 19 rows of room for 2 functions


def test_a_detached_function_keeps_its_mark_when_its_name_is_cut():
    from dataclasses import replace

    long = "github.com/example/project/internal/storage/postgres.(*Store).QueryWithRetry"
    lines = render_top(snapshot([replace(row(long, 5, 1000), detached=True)]), 80, 24)
    assert lines[3].startswith("…") and "WithRetry (detached) " in lines[3]
