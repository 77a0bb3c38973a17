"""`gotrace args --min-latency`: only calls at least that slow are shown; the kernel counts the others.

testdata/argstruth -sleep calls main.fnSleep(d) once per duration given;
each call takes at least d. With --min-latency 3ms, every call that slept
3 ms or more must be shown, every call shown must have taken at least 3 ms
(by gotrace's own measurement), and the calls shown plus those counted as
faster must be all the calls made. Nothing here depends on how fast the
machine is: a short sleep that happens to take longer than 3 ms is shown,
and counted, like any other.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from support import gobuild

pytestmark = pytest.mark.bpf

SLEEPS_MS = [0, 0, 4, 0, 10, 1, 6, 0, 3, 0]
MIN_MS = 3


def test_only_calls_at_least_min_latency_are_shown():
    binary = gobuild.build("argstruth", gobuild.TOOLCHAINS[-1])
    sleeps = ",".join(f"{ms}ms" for ms in SLEEPS_MS)
    cmd = [sys.executable, "-m", "gotrace", "args", "--json", "--min-latency", f"{MIN_MS}ms",
           "-c", f"{binary} -sleep {sleeps}", str(binary), "main.fnSleep"]
    proc = subprocess.run(cmd, cwd=gobuild.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in proc.stdout.splitlines()]
    slept_ms = [call["args"]["d"] / 1e6 for call in calls]
    assert all(call["latency_ns"] >= MIN_MS * 1_000_000 for call in calls)
    long_enough = [ms for ms in SLEEPS_MS if ms >= MIN_MS]
    assert [ms for ms in slept_ms if ms >= MIN_MS] == long_enough
    match = re.search(r"gotrace: (\d+) calls? shown; 0 dropped; (\d+) faster than --min-latency 3ms not shown",
                      proc.stderr)
    assert match, proc.stderr
    assert int(match[1]) == len(calls) and int(match[1]) + int(match[2]) == len(SLEEPS_MS)
    print(f"\n--min-latency {MIN_MS}ms: {len(calls)} of {len(SLEEPS_MS)} calls shown (slept {slept_ms} ms)")
