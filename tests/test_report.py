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
    report = latency_report_json(TARGET, 1, [FunctionReport("main.work", hist, unmatched=3)])
    assert json.loads(json.dumps(report)) == report  # plain JSON types only
    assert set(report) == {"target", "interval_s", "functions"}
    assert report["target"] == {"binary": "./bin", "pid": 4242, "go_version": "go1.23.9"}
    assert report["interval_s"] == 1.0 and isinstance(report["interval_s"], float)
    (fn,) = report["functions"]
    assert set(fn) == {
        "name", "count", "mean_ns", "min_ns", "max_ns",
        "p50_ns", "p90_ns", "p99_ns", "p999_ns", "buckets", "unmatched",
    }  # fmt: skip
    assert fn["name"] == "main.work"
    assert fn["count"] == 111
    assert fn["unmatched"] == 3
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


def test_json_function_without_calls_appears_with_zeros():
    report = latency_report_json(
        {"binary": "./bin", "go_version": "go1.19.8"},
        0.5,
        [FunctionReport("main.idle", LatencyHistogram(), unmatched=0), FunctionReport("main.work", three_groups())],
    )
    assert report["target"]["pid"] is None
    idle, work = report["functions"]
    assert idle == {
        "name": "main.idle", "count": 0, "mean_ns": 0, "min_ns": 0, "max_ns": 0,
        "p50_ns": 0, "p90_ns": 0, "p99_ns": 0, "p999_ns": 0, "buckets": [], "unmatched": 0,
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
    # empty runs of more than two 1-2-5 rows collapse into one row
    assert [(low, high, count) for low, high, count, *_ in rows] == [
        ("1us", "2us", 100),
        ("2us", "100us", 0),
        ("100us", "200us", 10),
        ("200us", "10ms", 0),
        ("10ms", "20ms", 1),
    ]
    assert [pct for *_, pct, _, _ in rows] == [90.1, 0.0, 9.0, 0.0, 0.9]
    assert rows[-1][4] == 100.0
    # bars are proportional to the count: the peak has 40 columns, 10/100 of it 4
    assert rows[0][5] == "█" * 40
    assert rows[2][5] == "█" * 4
    assert rows[1][5] == ""
    assert rows[4][5] == "▍"  # 1/100 of 40 columns = 3.2 eighths


def test_text_ascii_bars():
    rows = rows_of(render_latency_text([FunctionReport("main.work", three_groups())], ascii_bars=True))
    assert [bar for *_, bar in rows] == ["#" * 40, "", "#" * 4, "", "#"]


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
        ]
    )
    blocks = text.split("\n\n")
    assert blocks[0] == "main.idle  no calls"
    assert blocks[1] == "main.serve  no calls, 1 unmatched (entered but not seen returning)"
    assert blocks[2].startswith("main.work  111 calls, 2 unmatched (entered but not seen returning)\n")


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
    # every kernel bucket's midpoint lies in the row that counts it: rows are ordered and adjacent
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


def test_bucket_helpers_used_in_expectations():
    # the literal bounds used above follow from the bucket scheme
    assert bucket_bounds(bucket_index(1500)) == (1496, 1504)
    assert bucket_midpoint(bucket_index(150_000)) == 150016
    assert bucket_midpoint(bucket_index(15_000_000)) == 14974976
