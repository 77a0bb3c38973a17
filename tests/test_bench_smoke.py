"""`scripts/bench --quick` runs and prints every section with its ratios (a smoke test: no timing is checked).

The bench empties gotrace's BPF cache for its cold runs: it gets a cache directory of its own
(GOTRACE_BPF_CACHE), so that no other gotrace filling or using the same directory meanwhile can
turn a cold run warm, nor lose its entries to the bench.
"""

from __future__ import annotations

import os
import re

import pytest

from support.cli import run_command
from support.gobuild import REPO_ROOT

NUMBER = r"(-?\d+\.\d+)"  # a ratio of two noisy differences may come out below 0 in a --quick run


@pytest.mark.bpf
def test_quick_bench_prints_every_section_with_ratios(caddy, tmp_path):
    env = dict(os.environ, GOTRACE_BPF_CACHE=str(tmp_path / "bpf-cache"))
    proc = run_command([str(REPO_ROOT / "scripts" / "bench"), "--quick"], env=env, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in ("== Overhead per traced call", "== Start-up: gotrace latency -p PID", "== Start-up: gotrace args -p PID",
                   "== Scale: attach and detach",
                   "== Memory: peak RSS of gotrace ==", "== Targets =="):
        assert header in out, f"missing section {header!r} in:\n{out}"
    assert re.search(rf"gotrace/floor = {NUMBER} \(95% CI {NUMBER}-{NUMBER}; median", out), out  # its value is bench's
    assert re.search(rf"bench's own error \(A/A, identical floors\): +{NUMBER} \[ *{NUMBER}, +{NUMBER}\]", out), out
    assert re.search(r"noise: floor .* runs preempted on CPU \d+", out), out
    for stage in ("1", "2", "4", "6"):
        assert re.search(rf"^\s+{stage} \S.* {NUMBER} us +{NUMBER} us +{NUMBER} \[", out, re.M), f"no row {stage}"
    # every call the CLI rows were asked to trace is in their own reports
    assert re.search(r"gotrace latency counted (\d+) calls of \1 \(all calls seen\)", out), out
    assert re.search(r"gotrace args counted (\d+) calls of \d+", out), out
    for name in ("BPF compile", "ELF analysis", "attach (uprobe_multi links)", "total: invocation to probes attached"):
        assert re.search(rf"{re.escape(name)}.*{NUMBER} s", out), f"no {name} figure in:\n{out}"
    for n in (10, 100, 1000):
        assert re.search(rf"^\s+{n}\s+\d+\s+{NUMBER}", out, re.M), f"no scale row for {n} functions"
    summary = out.split("== Targets ==", 1)[1]
    targets = re.findall(rf"^  (.+?)\s+{NUMBER}.*target .*? {NUMBER} of target\s+(OK|MISSED)$", summary, re.M)
    assert [t[0].strip() for t in targets] == ["overhead gotrace/floor", "overhead, 95% CI upper bound",
                                               "start-up, 1 function on caddy",
                                               "attach 1000 functions", "peak RSS"], out
    assert re.search(rf"gotrace args on a caddy method .* start-up {NUMBER} s \({NUMBER} x latency's\)", summary), out
