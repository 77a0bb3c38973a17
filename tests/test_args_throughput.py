"""`gotrace args` under load: how many calls per second it reports, and that every call is either shown or counted as dropped.

testdata/argstruth -bench calls main.fnBench in a loop from -g goroutines
(optionally paced to -rate calls per second) and prints how many calls it
made. The accounting must close exactly: shown + dropped == calls made. The
cost guard only estimates here (--max-overhead 0): a loop of calls is what it
would detach, and what these tests count is args's own accounting (the guard
on args: tests/test_guard.py).
"""

from __future__ import annotations

import json
import re
import time

import pytest

from support import gobuild
from support.cli import run_gotrace_process
from gotrace.capture.plan import plan_args
from gotrace.commands.args import args_functions
from gotrace.trace.args import ArgsTracer
from gotrace.binary.gobinary import GoBinary

pytestmark = pytest.mark.bpf

SUMMARY = re.compile(r"gotrace: (\d+) calls? shown[^;]*; (\d+) dropped")


def _binary():
    return gobuild.build("argstruth", gobuild.TOOLCHAINS[2])


def run_bench(seconds: float, goroutines: int, rate: float, max_rate: int) -> tuple[int, int, int, float, str]:
    """(calls made, shown, dropped, calls per second made, stderr) of one traced bench run."""
    binary = _binary()
    proc = run_gotrace_process("args", "--json", "--max-rate", max_rate, "--max-overhead", 0,
                               "-c", f"{binary} -bench {seconds} -g {goroutines} -rate {rate}", binary, "main.fnBench")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    made = next(line for line in lines if "calls" in line)
    events = [line for line in lines if line.get("func") == "main.fnBench"]
    match = SUMMARY.search(proc.stderr)
    assert match, proc.stderr
    shown, dropped = int(match[1]), int(match[2])
    assert shown == len(events)
    # every call's arguments arrived intact: fnBench(n, "bench") is called with n = 0, 1, 2, ... per goroutine
    assert all(e["args"]["s"] == "bench" and e["results"]["~r0"] == e["args"]["n"] + 5 for e in events)
    return made["calls"], shown, dropped, made["calls"] / made["seconds"], proc.stderr


def test_an_unpaced_program_has_every_call_accounted_for():
    """As fast as two goroutines can call: every call is shown or counted as dropped. (How many calls per second
    gotrace keeps up with is scripts/bench's to measure.)"""
    calls, shown, dropped, per_second, stderr = run_bench(3, goroutines=2, rate=0, max_rate=0)
    print(f"unpaced, 2 goroutines: {per_second:.0f} calls/s made under tracing, {shown} shown, {dropped} dropped")
    assert calls > 0
    assert shown + dropped == calls, stderr
    assert "returns without a recorded entry" not in stderr


@pytest.mark.parametrize("rate", [1000, 4000])
def test_paced_rates_are_shown_in_full(rate):
    calls, shown, dropped, per_second, stderr = run_bench(3, goroutines=2, rate=rate, max_rate=0)
    print(f"paced {rate}/s: {per_second:.0f} calls/s made, {shown} shown, {dropped} dropped")
    assert dropped == 0 and shown == calls, stderr


def test_rate_limit_drops_are_counted_not_silent():
    calls, shown, dropped, per_second, stderr = run_bench(3, goroutines=1, rate=3000, max_rate=500)
    print(f"paced 3000/s, --max-rate 500: {shown} shown, {dropped} dropped of {calls}")
    assert shown + dropped == calls
    assert dropped > 0 and shown <= 500 * 4  # at most 4 one-second windows in 3 s plus start-up
    assert f"over --max-rate 500/s" in stderr


def test_a_reader_that_falls_behind_gets_counts_of_what_it_lost(tmp_path):
    """Nobody reads the ring buffer while the program runs: what did not fit is counted, exactly."""
    from gotrace.trace.session import Target

    binary = _binary()
    out_path = tmp_path / "bench.json"
    received = []
    # 6 s unpaced: far more records (~400 bytes each) than the 8 MiB ring buffer holds
    script = f"exec {binary} -bench 6 -g 2 > {out_path}"
    target = Target(str(binary), "bench", command=["/bin/sh", "-c", script])
    with GoBinary(binary) as gobin:
        functions = args_functions(gobin, plan_args(gobin, ["main.fnBench"]))
        target.start_gated()  # held before exec until the probes are in place
        try:
            with ArgsTracer(gobin, functions, pid=target.pid) as tracer:
                target.release()
                while target.alive():
                    time.sleep(0.1)
                received += tracer.drain()
                stats = tracer.stats()
        finally:
            target.abandon()
    calls = json.loads(out_path.read_text())["calls"]
    print(f"unread ring buffer: {len(received)} kept, {stats['dropped_ringbuf_full']} counted as dropped, "
          f"{calls} calls made")
    assert stats["dropped_ringbuf_full"] > 0
    assert len(received) == stats["events"]
    assert len(received) + stats["dropped_ringbuf_full"] == calls
