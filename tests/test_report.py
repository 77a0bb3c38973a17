"""Tests for gotrace.output.latency: the latency JSON object, the text histogram and duration formatting."""

import json
import random
import re

import pytest
from hypothesis import given, settings, strategies as st

from gotrace.output.histogram import LatencyHistogram, bucket_bounds, bucket_index, bucket_midpoint, max_trackable_ns
from gotrace.output.events import header_line
from gotrace.output.latency import (
    FunctionReport,
    format_duration,
    latency_report_json,
    render_latency_text,
)

TARGET = {"binary": "./bin", "pid": 4242, "go_version": "go1.23.9"}
ROW = re.compile(r"^  +(\S+) - +(\S+) +(\d+) +([\d.]+)% +([\d.]+)%(?:  (\S*))?$")


def three_groups() -> LatencyHistogram:
    """100 calls of 1.5 us, 10 of 150 us, 1 of 15 ms."""
    return LatencyHistogram.from_values([1500] * 100 + [150_000] * 10 + [15_000_000])


def rows_of(text: str) -> list[tuple[str, str, int, float, float, str]]:
    """(low label, high label, count, percent, cumulative percent, bar) of every histogram row."""
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            low, high, count, pct, cum, bar = m.groups()
            rows.append((low, high, int(count), float(pct), float(cum), bar or ""))
    return rows


# ---- format_duration ----


@pytest.mark.parametrize(
    "ns, text",
    [
        (0, "0ns"),
        (987, "987ns"),
        (1000, "1.00us"),
        (1234, "1.23us"),
        (9_996, "10.0us"),
        (99_960, "100us"),
        (999_600, "1.00ms"),  # 999.6us would round to "1000us"
        (1_234_567, "1.23ms"),
        (12_345_678, "12.3ms"),
        (123_456_789, "123ms"),
        (1_500_000_000, "1.50s"),
        (7_200_000_000_000, "7200s"),
    ],
)
def test_format_duration_auto(ns, text):
    assert format_duration(ns, "auto") == text


@pytest.mark.parametrize(
    "ns, unit, text",
    [
        (1_234_567, "ns", "1234567ns"),
        (1_234_567, "us", "1235us"),
        (1_234_567, "ms", "1.23ms"),
        (500_000, "ms", "0.500ms"),
        (1_500, "ms", "0.00150ms"),
        (2_000_000_000, "s", "2.00s"),
        (20_000_000, "s", "0.0200s"),
        (0, "ms", "0ms"),
    ],
)
def test_format_duration_explicit_unit(ns, unit, text):
    assert format_duration(ns, unit) == text


def test_format_duration_rejects_unknown_unit():
    with pytest.raises(ValueError, match="unit must be one of auto, ns, us, ms, s"):
        format_duration(5, "min")


# ---- header ----


def test_header_line():
    assert (
        header_line(3, 7, 4242, "go1.23.9", "./bin")
        == "Tracing 3 functions (7 probe sites) in ./bin pid 4242 (go1.23.9)... Ctrl-C to stop"
    )
    assert (
        header_line(1, 1, None, "1.21.13", "/usr/bin/caddy")
        == "Tracing 1 function (1 probe site) in /usr/bin/caddy, every process (go1.21.13)... Ctrl-C to stop"
    )


# ---- JSON ----


def test_json_has_exactly_the_contract_keys_and_values():
    hist = three_groups()
    report = latency_report_json(TARGET, 1, [FunctionReport("main.work", hist, unmatched=3, in_flight=2,
                                                             oldest_in_flight_ns=5_000_000)],
                                 ts_start_ns=1_700_000_000_000_000_000, ts_end_ns=1_700_000_001_000_000_000, final=True)
    assert json.loads(json.dumps(report)) == report  # plain JSON types only
    # the contract's keys, and version 2's additions
    assert set(report) == {"target", "interval_s", "functions", "event", "ts_start_ns", "ts_end_ns", "final"}
    assert report["event"] == "report" and report["final"] is True
    assert (report["ts_start_ns"], report["ts_end_ns"]) == (1_700_000_000_000_000_000, 1_700_000_001_000_000_000)
    assert report["target"] == {"binary": "./bin", "pid": 4242, "go_version": "go1.23.9"}
    assert report["interval_s"] == 1.0 and isinstance(report["interval_s"], float)
    (fn,) = report["functions"]
    assert set(fn) == {
        "name", "count", "mean_ns", "min_ns", "max_ns",
        "p50_ns", "p90_ns", "p99_ns", "p999_ns", "buckets", "unmatched",
        "in_flight", "oldest_in_flight_ns", "detached", "untimed", "on_probation", "probation_calls",
    }  # fmt: skip
    assert fn["name"] == "main.work"
    assert fn["count"] == 111
    assert fn["unmatched"] == 3
    assert (fn["in_flight"], fn["oldest_in_flight_ns"], fn["detached"]) == (2, 5_000_000, False)
    # 1500 ns lives in [1496, 1504), 150 us in [149504, 150528), 15 ms in [14942208, 15007744)
    assert fn["buckets"] == [
        {"low_ns": 1496, "high_ns": 1504, "count": 100},
        {"low_ns": 149504, "high_ns": 150528, "count": 10},
        {"low_ns": 14942208, "high_ns": 15007744, "count": 1},
    ]
    assert fn["min_ns"] == 1496
    assert fn["max_ns"] == 15007744
    assert fn["p50_ns"] == 1500 and fn["p90_ns"] == 1500
    # rank round(0.99 * 111) = 110: a 150 us call; rank round(0.999 * 111) = 111: the 15 ms call
    assert 149504 <= fn["p99_ns"] < 150528
    assert 14942208 <= fn["p999_ns"] < 15007744
    # the mean is over the same per-bucket values the percentiles report
    assert fn["mean_ns"] == round((100 * fn["p50_ns"] + 10 * fn["p99_ns"] + fn["p999_ns"]) / 111)
    assert fn["mean_ns"] == pytest.approx((100 * 1500 + 10 * 150_000 + 15_000_000) / 111, rel=0.005)
    assert all(isinstance(fn[k], int) for k in fn if k.endswith("_ns") or k in ("count", "unmatched"))


def test_json_function_without_calls_appears_with_null_statistics():
    report = latency_report_json(
        {"binary": "./bin", "go_version": "go1.19.8"},
        0.5,
        [FunctionReport("main.idle", LatencyHistogram(), unmatched=0), FunctionReport("main.work", three_groups())],
    )
    assert report["target"]["pid"] is None
    idle, work = report["functions"]
    assert idle == {
        "name": "main.idle", "count": 0, "mean_ns": None, "min_ns": None, "max_ns": None,
        "p50_ns": None, "p90_ns": None, "p99_ns": None, "p999_ns": None, "buckets": [], "unmatched": 0,
        "in_flight": 0, "oldest_in_flight_ns": None, "detached": False, "untimed": 0, "on_probation": False,
        "probation_calls": 0,
    }  # fmt: skip
    assert work["count"] == 111


def test_json_target_keeps_only_contract_keys():
    report = latency_report_json({**TARGET, "arch": "amd64"}, 1.0, [])
    assert set(report["target"]) == {"binary", "pid", "go_version"}
    assert report["functions"] == []


# ---- text ----


def test_text_rows_have_the_right_counts_labels_and_bars():
    text = render_latency_text([FunctionReport("main.work", three_groups())])
    lines = text.splitlines()
    assert lines[0] == "main.work  111 calls"
    assert lines[1].split() == [
        "count", "111", "mean", "150us", "p50", "1.50us", "p90", "1.50us",
        "p99", "150us", "p99.9", "15.0ms", "max", "15.0ms",
    ]  # fmt: skip
    assert lines[2].split() == ["latency", "count", "%", "cum%", "distribution"]
    rows = rows_of(text)
    # every row is one range of the 1-2-5 scheme; a run of more than two empty rows is one "..." line
    assert [(low, high, count) for low, high, count, *_ in rows] == [
        ("1us", "2us", 100),
        ("100us", "200us", 10),
        ("10ms", "20ms", 1),
    ]
    assert [line.strip() for line in lines[3:]][1::2] == ["...", "..."]
    assert [pct for *_, pct, _, _ in rows] == [90.1, 9.0, 0.9]
    assert rows[-1][4] == 100.0
    # bars are proportional to the count: the peak has 40 columns, 10/100 of it 4
    assert rows[0][5] == "█" * 40
    assert rows[1][5] == "█" * 4
    assert rows[2][5] == "▍"  # 1/100 of 40 columns = 3.2 eighths


def test_text_ascii_bars():
    rows = rows_of(render_latency_text([FunctionReport("main.work", three_groups())], ascii_bars=True))
    assert [bar for *_, bar in rows] == ["#" * 40, "#" * 4, "#"]


def test_text_trims_empty_rows_at_both_ends():
    hist = LatencyHistogram.from_values([3_000_000] * 5 + [30_000_000] * 5)
    rows = rows_of(render_latency_text([FunctionReport("main.f", hist)]))
    assert rows[0][:3] == ("2ms", "5ms", 5)
    assert rows[-1][:3] == ("20ms", "50ms", 5)
    assert sum(r[2] for r in rows) == 10


def test_text_explicit_units_apply_everywhere():
    report = [FunctionReport("main.work", three_groups())]
    text_us = render_latency_text(report, unit="us")
    assert "p99.9 14983us" in text_us and "max 15008us" in text_us and "p50 1.50us" in text_us
    assert [(r[0], r[1]) for r in rows_of(text_us)][-1] == ("10000us", "20000us")
    text_ns = render_latency_text(report, unit="ns")
    assert "p50 1500ns" in text_ns and "max 15007744ns" in text_ns
    assert [(r[0], r[1]) for r in rows_of(text_ns)][0] == ("1000ns", "2000ns")
    text_ms = render_latency_text(report, unit="ms")
    assert "p50 0.00150ms" in text_ms and "max 15.0ms" in text_ms


def test_auto_unit_is_per_function():
    fast = LatencyHistogram.from_values([800] * 10)
    slow = LatencyHistogram.from_values([2_500_000_000] * 10)
    text = render_latency_text([FunctionReport("main.fast", fast), FunctionReport("main.slow", slow)])
    fast_block, slow_block = text.split("\n\n")
    assert re.search(r"p50 80\dns", fast_block)
    assert re.search(r"p50 2\.5\ds", slow_block)


def test_narrow_distribution_gets_equal_decimal_rows():
    rng = random.Random(5)
    hist = LatencyHistogram.from_values([rng.randint(1_000_000, 1_199_999) for _ in range(6000)])
    rows = rows_of(render_latency_text([FunctionReport("main.work", hist)]))
    assert len(rows) >= 4  # not a single "1ms - 2ms" row
    assert sum(r[2] for r in rows) == 6000
    assert ("1ms", "1.05ms") in [(r[0], r[1]) for r in rows]
    assert all(r[2] > 0 for r in rows)


def test_constant_latency_shows_its_value():
    rows = rows_of(render_latency_text([FunctionReport("main.const", LatencyHistogram.from_values([42] * 7))]))
    assert rows == [("40ns", "45ns", 7, 100.0, 100.0, "█" * 40)]


def test_functions_without_calls_print_one_line():
    text = render_latency_text(
        [
            FunctionReport("main.idle", LatencyHistogram()),
            FunctionReport("main.serve", LatencyHistogram(), unmatched=1),
            FunctionReport("main.work", three_groups(), unmatched=2),
            FunctionReport("main.conn", LatencyHistogram(), in_flight=2, oldest_in_flight_ns=3_200_000_000),
        ]
    )
    blocks = text.split("\n\n")
    assert blocks[0] == "main.idle  no calls"
    assert blocks[1] == "main.serve  no calls, 1 unmatched (unwound by a panic or runtime.Goexit)"
    assert blocks[2].startswith("main.work  111 calls, 2 unmatched (unwound by a panic or runtime.Goexit)\n")
    assert blocks[3] == "main.conn  no calls, 2 in flight (oldest 3.20s)\n"


def test_idle_functions_are_one_line_and_functions_sort_by_total_time():
    slow_few = LatencyHistogram.from_values([10_000_000] * 3)  # 30 ms in all
    fast_many = LatencyHistogram.from_values([1_000] * 1000)  # 1 ms in all
    functions = [FunctionReport(f"main.idle{i}", LatencyHistogram()) for i in range(1312)]
    functions += [FunctionReport("main.fast", fast_many), FunctionReport("main.slow", slow_few),
                  FunctionReport("main.gone", LatencyHistogram(), detached=True)]
    text = render_latency_text(functions, sort="total", verbose=False)
    titles = [line for line in text.splitlines() if line.startswith("main.")]
    assert titles == ["main.slow  3 calls", "main.fast  1000 calls"]
    assert text.endswith("\n1,312 functions had no calls (-v lists them)\n"
                         "1 function was detached by the cost guard: main.gone\n")
    by_count = [line for line in render_latency_text(functions, sort="count", verbose=False).splitlines()
                if line.startswith("main.")]
    assert by_count == ["main.fast  1000 calls", "main.slow  3 calls"]
    listed = render_latency_text(functions[-3:], sort="name", verbose=True)
    assert [line for line in listed.splitlines() if line.startswith("main.")] == [
        "main.fast  1000 calls", "main.gone  no calls, detached by the cost guard", "main.slow  3 calls"]


def test_functions_on_probation_are_one_line_apart_from_the_idle_ones():
    """Functions on probation with nothing timed are summarized in a line of their own (not "had no calls"), and
    listed with -v; one on probation is flagged in JSON."""
    functions = [FunctionReport(f"runtime.f{i}", LatencyHistogram(), on_probation=True) for i in range(412)]
    functions += [FunctionReport("main.idle", LatencyHistogram()),
                  FunctionReport("main.fast", LatencyHistogram.from_values([1_000] * 10))]
    text = render_latency_text(functions, sort="total", verbose=False)
    assert [line for line in text.splitlines() if line.startswith(("main.", "runtime."))] == ["main.fast  10 calls"]
    assert text.endswith("\n1 function had no calls (-v lists them)\n"
                         "412 functions are on probation: counted, not timed until the cost guard has seen what "
                         "timing them costs (-v lists them)\n")
    listed = render_latency_text(functions[:1], sort="name", verbose=True)
    assert listed.splitlines()[0] == "runtime.f0  no calls, on probation (not timed yet)"
    report = latency_report_json(TARGET, 1.0, functions[:1])
    assert report["functions"][0]["on_probation"] is True


def test_functions_called_only_on_probation_are_not_said_to_have_had_no_calls():
    """A function promoted after calls counted on probation, none timed since, is summarized apart from the
    idle ones and from those still on probation; -v and JSON give its count of calls counted on probation."""
    functions = [FunctionReport(f"main.p{i}", LatencyHistogram(), probation_calls=i + 1) for i in range(5)]
    functions += [FunctionReport("main.idle", LatencyHistogram()),
                  FunctionReport("main.waiting", LatencyHistogram(), on_probation=True, probation_calls=2),
                  FunctionReport("main.both", LatencyHistogram.from_values([1_000] * 10), probation_calls=4)]
    text = render_latency_text(functions, sort="total", verbose=False)
    assert [line for line in text.splitlines() if line.startswith("main.")] == [
        "main.both  10 calls, 4 counted on probation (not timed)"]
    assert text.endswith("\n1 function had no calls (-v lists them)\n"
                         "1 function is on probation: counted, not timed until the cost guard has seen what "
                         "timing them costs: main.waiting\n"
                         "5 functions were called only while on probation: counted, not timed (-v lists them)\n")
    listed = render_latency_text(functions, sort="name", verbose=True)
    titles = [line for line in listed.splitlines() if line.startswith("main.")]
    assert "main.p2  no timed calls, 3 counted on probation (not timed)" in titles
    assert "main.waiting  no timed calls, on probation: 2 counted, not timed yet" in titles
    assert "main.idle  no calls" in titles
    report = latency_report_json(TARGET, 1.0, functions)
    by_name = {fn["name"]: fn for fn in report["functions"]}
    assert (by_name["main.p4"]["count"], by_name["main.p4"]["probation_calls"]) == (0, 5)
    assert (by_name["main.both"]["count"], by_name["main.both"]["probation_calls"]) == (10, 4)
    assert by_name["main.idle"]["probation_calls"] == 0


def test_saturated_last_bucket_is_open_ended():
    hist = LatencyHistogram.from_values([max_trackable_ns() * 4, 5 * 10**12])
    rows = rows_of(render_latency_text([FunctionReport("main.main", hist)]))
    assert rows[-1][1] == "inf"
    assert sum(r[2] for r in rows) == 2


def test_no_line_exceeds_100_columns_even_in_nanoseconds():
    rng = random.Random(9)
    hist = LatencyHistogram.from_values([int(2 ** rng.uniform(0, 44)) for _ in range(5000)])
    for unit in ("auto", "ns", "us", "ms", "s"):
        text = render_latency_text([FunctionReport("main.(*Server).ServeHTTP", hist, 12)], unit=unit)
        assert max(len(line) for line in text.splitlines()) <= 100, unit
        assert len(rows_of(text)) <= 40


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=4863),
        st.integers(min_value=1, max_value=10**6),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(["auto", "ns", "us", "ms", "s"]),
)
def test_rows_account_for_every_call(counts, unit):
    hist = LatencyHistogram(counts)
    text = render_latency_text([FunctionReport("main.f", hist)], unit=unit)
    rows = rows_of(text)
    assert sum(r[2] for r in rows) == hist.count()
    assert rows[0][2] > 0 and rows[-1][2] > 0
    assert rows[-1][4] == 100.0
    assert max(len(line) for line in text.splitlines()) <= 100
    # every kernel bucket's midpoint lies in the row that counts it: rows are ordered and adjacent, but where
    # a "..." line stands for a run of empty rows
    gaps = sum(a[1] != b[0] for a, b in zip(rows, rows[1:]))
    assert gaps == sum(line.strip() == "..." for line in text.splitlines())


def test_bucket_helpers_used_in_expectations():
    # the literal bounds used above follow from the bucket scheme
    assert bucket_bounds(bucket_index(1500)) == (1496, 1504)
    assert bucket_midpoint(bucket_index(150_000)) == 150016
    assert bucket_midpoint(bucket_index(15_000_000)) == 14974976


# ---- what a tracing command says besides its reports ----


def test_skipped_functions_are_one_line_by_reason_unless_few_or_verbose():
    from gotrace.output.events import Skipped, SkippedSummary

    skipped = tuple([Skipped(f"runtime.a{i}", "no return instruction (never returns)") for i in range(47)]
                    + [Skipped(f"runtime.b{i}", "assembly function without the goroutine register") for i in range(70)])
    assert SkippedSummary(skipped, 1570).text() == (
        "gotrace: skipping 117 of 1,570 matched functions: 70 assembly function without the goroutine register, "
        "47 no return instruction (never returns) (-v lists them)")
    assert SkippedSummary(skipped, 1570, verbose=True).text().splitlines()[0] == (
        "gotrace: skipping runtime.a0: no return instruction (never returns)")
    assert SkippedSummary(skipped[:2], 5).text() == (
        "gotrace: skipping runtime.a0: no return instruction (never returns)\n"
        "gotrace: skipping runtime.a1: no return instruction (never returns)")


def test_detached_event_names_the_costliest_and_says_why_in_text_and_json():
    from gotrace.output.events import Detached, DetachedFunction

    functions = tuple(DetachedFunction(f"runtime.f{i}", 1000.0 * (10 - i), 0.01 * (10 - i), f"reason {i}")
                      for i in range(5))
    event = Detached(functions, 0.62, 5.0, 0.123)
    assert event.text() == (
        "gotrace: detached 5 functions in 0.12s (probes cost 62.0% of the target's CPU, over the --max-overhead "
        "budget of 5%), costliest first: runtime.f0 (10,000 hits/s, 10.0% of the target's CPU), runtime.f1 "
        "(9,000 hits/s, 9.0% of the target's CPU), runtime.f2 (8,000 hits/s, 8.0% of the target's CPU) and 2 more "
        "(-v lists them)")
    lines = event.json_lines()
    assert [line["func"] for line in lines] == [f"runtime.f{i}" for i in range(5)]
    assert lines[0] == {"event": "detached", "func": "runtime.f0", "reason": "reason 0", "hits_per_s": 10000.0,
                        "cpu_share_of_target": 0.1, "detach_s": 0.123}


def test_count_report_text_and_json():
    from gotrace.output.count import CountReport, FunctionCount
    from gotrace.output.report import CostEstimate, ReportFrame

    frame = ReportFrame(TARGET, 2.0, 1_700_000_000_000_000_000, 1_700_000_002_000_000_000, True,
                        CostEstimate(1234.5, 0.0123, 0.0456, 5.0))
    functions = [FunctionCount("main.b", 10), FunctionCount("main.a", 12_345), FunctionCount("main.idle", 0),
                 FunctionCount("main.hot", 0, detached=True)]
    report = CountReport(frame, functions)
    assert report.text() == (
        " CALLS  CALLS/S  FUNCTION\n"
        "12,345  6,172.5  main.a\n"
        "    10      5.0  main.b\n"
        "1 function had no calls (-v lists them)\n"
        "1 function was detached by the cost guard: main.hot\n"
        "probes: 1,234 hits/s, about 1.2% of one CPU and 4.6% of the target's CPU (budget 5%)\n")
    doc = report.json()
    assert doc["event"] == "report" and doc["final"] is True and doc["interval_s"] == 2.0
    assert doc["functions"][1] == {"name": "main.a", "count": 12345, "rate_per_s": 6172.5, "detached": False}
    assert doc["overhead"] == {"hits_per_s": 1234.5, "goroutine_exit_hits_per_s": 0.0, "cpu_share_of_one_cpu": 0.0123,
                               "cpu_share_of_target": 0.0456, "max_overhead_pct": 5.0}
    exits = CostEstimate(40_000.0, 0.036, 0.033, 5.0, 39_000.0)  # latency: its probe on runtime.goexit1 too
    assert exits.text() == ("probes: 40,000 hits/s (39,000 of them at goroutine exits), about 3.6% of one CPU and "
                            "3.3% of the target's CPU (budget 5%)")
    assert exits.json()["goroutine_exit_hits_per_s"] == 39_000.0
