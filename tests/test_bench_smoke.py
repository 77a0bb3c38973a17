"""`scripts/bench --quick` runs and prints every section with its ratios (a smoke test: no timing is checked)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CADDY = Path("/var/cache/gotrace/caddy/bin/caddy")
NUMBER = r"(\d+\.\d+)"


@pytest.mark.bpf
def test_quick_bench_prints_every_section_with_ratios():
    if not CADDY.is_file() and not (REPO / "scripts" / "thirdparty").exists():
        pytest.skip("caddy is not installed: run scripts/test (or scripts/thirdparty)")
    proc = subprocess.run([str(REPO / "scripts" / "bench"), "--quick", "--no-bpftrace"], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in ("== Overhead per traced call", "== Start-up: gotrace latency -p PID", "== Start-up: gotrace args -p PID",
                   "== Scale: attach and detach",
                   "== Memory: peak RSS of gotrace ==", "== Targets =="):
        assert header in out, f"missing section {header!r} in:\n{out}"
    ratio = float(re.search(rf"gotrace/floor = {NUMBER}", out).group(1))
    assert ratio > 0.5  # tracing costs about what the kernel's floor costs, not nothing and not nonsense
    assert re.search(r"gotrace counted (\d+) calls of \1 per round \(all calls seen\)", out), out
    for name in ("BPF compile", "ELF analysis", "attach (uprobe_multi links)", "total: invocation to probes attached"):
        assert re.search(rf"{re.escape(name)}.*{NUMBER} s", out), f"no {name} figure in:\n{out}"
    for n in (10, 100, 1000):
        assert re.search(rf"^\s+{n}\s+\d+\s+{NUMBER}", out, re.M), f"no scale row for {n} functions"
    summary = out.split("== Targets ==", 1)[1]
    targets = re.findall(rf"^  (.+?)\s+{NUMBER}.*target .*? {NUMBER} of target\s+(OK|MISSED)$", summary, re.M)
    assert [t[0].strip() for t in targets] == ["overhead gotrace/floor", "start-up, 1 function on caddy",
                                               "attach 1000 functions", "peak RSS"], out
    assert re.search(rf"gotrace args on a caddy method .* start-up {NUMBER} s \({NUMBER} x latency's\)", summary), out
