"""--slow and --by without BPF: durations, the slow call's text and JSON, split rows, option errors."""

from __future__ import annotations

import json

import pytest

from support.cli import run_gotrace
from gotrace.binary.symbolize import SourceFrame
from gotrace.output.histogram import LatencyHistogram
from gotrace.output.latency import FunctionReport, LatencyReport
from gotrace.output.report import ReportFrame
from gotrace.output.slow import SlowCall, SlowCounts
from gotrace.output.stream import render

TARGET = {"binary": "./bin", "pid": 4242, "go_version": "go1.23.9"}
FRAME = ReportFrame(TARGET, 1.0, 1_700_000_000_000_000_000, 1_700_000_001_000_000_000, True)


def slow_call() -> SlowCall:
    stack = (SourceFrame("main.viaHelper", "/src/main.go", 100, True),
             SourceFrame("main.slowCaller", "/src/main.go", 106, False),
             SourceFrame("?", None, None, False))
    return SlowCall("main.target", 4242, 17, 1_700_000_000_123_456_789, 5_210_000, stack)


def test_slow_call_json_is_the_contract_object():
    doc = json.loads(render(slow_call(), as_json=True)[0][1])
    assert doc == {"event": "slow", "func": "main.target", "pid": 4242, "goid": 17, "ts_ns": 1_700_000_000_123_456_789,
                   "latency_ns": 5_210_000,
                   "stack": [{"func": "main.viaHelper", "file": "/src/main.go", "line": 100, "inlined": True},
                             {"func": "main.slowCaller", "file": "/src/main.go", "line": 106, "inlined": False},
                             {"func": "?", "file": None, "line": None, "inlined": False}]}


def test_slow_call_text_is_a_line_then_one_frame_a_line():
    [(to_stdout, text)] = render(slow_call(), as_json=False)
    assert to_stdout
    first, *frames = text.splitlines()
    assert first.endswith(" pid=4242 goid=17 main.target 5.21ms") and first[2] == ":" and first[8] == "."
    assert frames == ["    main.viaHelper  /src/main.go:100  (inlined)", "    main.slowCaller  /src/main.go:106",
                      "    ?  ?"]


def test_report_shows_slow_counts_and_drops():
    quiet = SlowCounts(5_000_000, 100, 12, 0, 0)
    dropped = SlowCounts(5_000_000, 100, 100, 40, 2)
    assert quiet.text() == "slow calls (>= 5.00ms): 12 shown, none dropped"
    assert dropped.text() == ("slow calls (>= 5.00ms): 100 shown, 42 not shown (40 over --slow-rate 100/s, "
                              "2 while gotrace's reader was behind)")
    report = LatencyReport(FRAME, [FunctionReport("main.f", LatencyHistogram.from_values([10]))], slow=dropped)
    doc = report.json()
    assert doc["event"] == "report"
    assert doc["slow"] == {"threshold_ns": 5_000_000, "calls": 100, "dropped_rate_limit": 40,
                           "dropped_reader_behind": 2}
    assert dropped.text() in report.text()


def test_split_rows_carry_caller_or_pid():
    hist = LatencyHistogram.from_values([1000, 2000])
    rows = [FunctionReport("main.f", hist, split="caller", caller="main.a", call_sites=("/src/a.go:10",)),
            FunctionReport("main.f", LatencyHistogram(), 3, split="caller"),
            FunctionReport("main.g", hist, split="pid", pid=77)]
    doc = LatencyReport(FRAME, rows, sort="address").json()
    a, unknown, g = doc["functions"]
    assert (a["name"], a["caller"], a["call_sites"], a["count"]) == ("main.f", "main.a", ["/src/a.go:10"], 2)
    assert (unknown["caller"], unknown["count"], unknown["unmatched"]) == (None, 0, 3)
    assert (g["name"], g["pid"], g["count"]) == ("main.g", 77, 2) and "caller" not in g
    text = LatencyReport(FRAME, rows, sort="address").text()
    assert "main.f  from main.a (a.go:10)  2 calls" in text
    assert "main.f  (caller unknown: never returned)  no calls, 3 unmatched" in text
    assert "main.g  pid 77  2 calls" in text


@pytest.mark.parametrize("args,message", [
    (["--slow", "5"], "'5' is not a duration"),
    (["--slow", "0ms"], "must be more than 0"),
    (["--stack-depth", "0"], "--stack-depth"),
    (["--by", "goroutine"], "--by"),
])
def test_bad_options_are_one_line_and_exit_2(args, message):
    code, out, err = run_gotrace("latency", "./bin", "main.f", *args)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotrace: ") and message in lines[0], err
