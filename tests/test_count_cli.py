"""Acceptance tests of `gotrace count` run as a user runs it, against the service's own call counts.

count puts one probe per call, at the entry: it counts functions that
latency cannot time (main.fail only panics and has no return instruction;
main.(*Wrapped).Describe is a tail-jump wrapper in some builds), and every
count must equal the service's own. The cost guard only estimates here
(--max-overhead 0): exact counts need every function traced to the end
(tests/test_guard.py checks the guard).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from support.gobuild import REPO_ROOT as REPO
from test_latency_cli import (BUILD, HANDLE, SERVE_HTTP, TRY_FAIL, WORK, parse_service, service, start_waiting_service,
                              untraced_run)

FAIL = "main.fail"


def count_argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "gotrace", "count", *map(str, args), "--max-overhead", "0"]


def run_count(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(count_argv(*args), cwd=REPO, capture_output=True, text=True, timeout=300)


_ROW = re.compile(r"^ *([\d,]+) +([\d,]+\.\d) +(\S.*?)(?:  \(detached by the cost guard\))?$")


def parse_count_text(stdout: str) -> dict[str, tuple[int, float]]:
    """function -> (calls, calls/s) of the rows of a text report."""
    rows = {}
    for line in stdout.splitlines():
        m = _ROW.match(line)
        if m:
            rows[m.group(3)] = (int(m.group(1).replace(",", "")), float(m.group(2).replace(",", "")))
    return rows


def check_count_contract(doc: dict) -> dict[str, dict]:
    """One `gotrace count --json` report against the CLI contract (version 2); its functions by name."""
    assert set(doc) - {"overhead"} == {"event", "target", "interval_s", "ts_start_ns", "ts_end_ns", "final",
                                       "functions"}, sorted(doc)
    assert doc["event"] == "report" and isinstance(doc["final"], bool)
    assert 1.7e18 < doc["ts_start_ns"] < doc["ts_end_ns"] <= time.time_ns()
    assert isinstance(doc["interval_s"], float) and doc["interval_s"] > 0
    by_name = {}
    for fn in doc["functions"]:
        assert set(fn) == {"name", "count", "rate_per_s", "detached"}, sorted(fn)
        assert isinstance(fn["count"], int) and fn["count"] >= 0
        assert isinstance(fn["rate_per_s"], float)
        assert fn["rate_per_s"] == pytest.approx(fn["count"] / doc["interval_s"], rel=1e-3, abs=1e-3)
        by_name[fn["name"]] = fn
    return by_name


@pytest.mark.bpf
def test_command_counts_equal_service_counts_including_functions_latency_cannot_time():
    binary = service(*BUILD)
    proc = run_count("-c", f"{binary} -n 200", binary, HANDLE, WORK, TRY_FAIL, FAIL, SERVE_HTTP)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"^Tracing 5 functions \(5 probe sites\) in ", proc.stderr, re.M), proc.stderr
    assert re.search(r"^gotrace: \S+ \(pid \d+\) exited with status 0$", proc.stderr, re.M), proc.stderr
    out = parse_service(proc.stdout)
    assert out.stable() == untraced_run(str(binary), "-n", "200").stable()
    rows = parse_count_text(proc.stdout)
    assert {name: n for name, (n, _) in rows.items()} == {
        HANDLE: out.calls[HANDLE], WORK: out.calls[WORK], TRY_FAIL: out.calls[FAIL], FAIL: out.calls[FAIL]}
    assert out.calls[HANDLE] == 200 and out.calls[FAIL] == 20
    # sorted by count, the idle function in one line
    assert list(rows) [:2] in ([HANDLE, WORK], [WORK, HANDLE])
    assert "1 function had no calls (-v lists them)" in proc.stdout


@pytest.mark.bpf
def test_an_entry_the_kernel_refuses_is_skipped_before_attaching():
    """runtime.abort is assembly whose first instruction, count's only site, is `int $3` (refused by the kernel):
    count names it with the reason funcs gives, attaches nothing there (no error 524 at attach), and counts the
    rest exactly."""
    binary = service(*BUILD)
    proc = run_count("-c", f"{binary} -n 50", binary, HANDLE, "runtime.abort", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "gotrace: skipping runtime.abort: the kernel refuses a uprobe on its entry instruction (int n)" \
        in proc.stderr, proc.stderr
    assert "error 524" not in proc.stderr, proc.stderr
    assert re.search(r"^Tracing 1 function \(1 probe site\) in ", proc.stderr, re.M), proc.stderr
    assert parse_count_text(proc.stdout)[HANDLE][0] == parse_service(proc.stdout).calls[HANDLE] == 50
    alone = run_count(binary, "runtime.abort")
    assert alone.returncode == 2 and alone.stderr.count("\n") == 1, alone.stderr
    assert "runtime.abort cannot be counted: the kernel refuses a uprobe on its entry instruction (int n)" \
        in alone.stderr


@pytest.mark.bpf
def test_command_json_follows_contract():
    binary = service(*BUILD)
    proc = run_count("-c", f"{binary} -n 100", binary, "main.*", "--json")
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(docs) == 1 and docs[0]["final"] is True, proc.stdout
    functions = check_count_contract(docs[0])
    out = parse_service(proc.stdout)
    for name, n in out.calls.items():
        if name in ("main.Map[int]", "main.Map[string]"):  # pclntab names the instances main.Map[go.shape...]
            continue
        assert functions[name]["count"] == n, name
    assert functions[SERVE_HTTP]["count"] == 0
    assert docs[0]["overhead"]["max_overhead_pct"] is None


@pytest.mark.bpf
def test_interval_reports_add_up_and_the_last_is_final(spawn):
    binary = service(*BUILD)
    svc, pid = start_waiting_service(spawn, binary, "-n", "300", "-workers", "1", "-sleep-us", "20000")
    gotrace = spawn(count_argv("-p", pid, HANDLE, "-i", "0.5", "--json"))
    gotrace.wait_line("stderr", r"^Tracing 1 function ")
    import os

    os.kill(pid, signal.SIGUSR1)
    assert svc.finish(120) == 0, svc.stderr
    assert gotrace.finish(60) == 0, gotrace.stderr   # the target's exit ends the trace
    assert re.search(rf"^gotrace: process {pid} \(\S+\) exited$", gotrace.stderr, re.M), gotrace.stderr
    docs = [json.loads(line) for line in gotrace.stdout.splitlines() if line.startswith("{")]
    counts = [check_count_contract(doc)[HANDLE]["count"] for doc in docs]
    assert [doc["final"] for doc in docs] == [False] * (len(docs) - 1) + [True]
    assert all(a["ts_end_ns"] == b["ts_start_ns"] for a, b in zip(docs, docs[1:]))
    assert sum(counts) == parse_service(svc.stdout).calls[HANDLE] == 300, counts
    assert len([c for c in counts if c]) >= 2, counts
