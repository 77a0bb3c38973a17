"""`gotrace args` streams: each call's line as it returns, `-n N` exits once N calls are shown.

testdata/argstruth -stream N calls main.fnStream(0..N-1) at -rate calls per
second and writes, per call, the wall-clock time (CLOCK_REALTIME) right
after it returned. This test reads gotrace's stdout as it comes and notes
when each line arrives (CLOCK_REALTIME too, in this process): the delay of a
call is arrival minus return. The figures are printed (run with -s); as
everywhere in this suite nothing asserts a wall-clock duration, only what
the user would see whatever the machine's load: every call arrives, in
order, each after its own return, and `-n 3` stops after exactly three calls
while the traced program is still calling.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from support import gobuild

pytestmark = pytest.mark.bpf


def _binary():
    return gobuild.build("argstruth", gobuild.TOOLCHAINS[-1])


def stream(tmp_path, calls: int, rate: float, *extra: str) -> tuple[list[int], dict[int, int], str, int]:
    """(return times of the program's calls, arrival time of each call's line by argument n, stderr,
    gotrace's exit time), all ns since the epoch."""
    binary = _binary()
    times_path = tmp_path / "returns.json"
    # --max-overhead 0: the guard estimates only; what is measured is how soon each call's line arrives
    cmd = [sys.executable, "-m", "gotrace", "args", "--json", "--max-rate", "0", "--max-overhead", "0", *extra,
           "-c", f"{binary} -stream {calls} -rate {rate} -times {times_path}", str(binary), "main.fnStream"]
    proc = subprocess.Popen(cmd, cwd=gobuild.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    arrivals: dict[int, int] = {}
    order: list[int] = []

    def read() -> None:  # until EOF: the -c program holds gotrace's stdout open until it ends too
        for line in proc.stdout:
            arrived = time.time_ns()
            event = json.loads(line)
            if event.get("func") == "main.fnStream":
                n = event["args"]["n"]
                assert event["results"]["~r0"] == 2 * n
                arrivals[n] = arrived
                order.append(n)

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait(timeout=120)
    exited = time.time_ns()
    stderr = proc.stderr.read().decode()
    reader.join(timeout=120)
    assert proc.returncode == 0, stderr
    assert order == sorted(order), "lines arrive in call order"
    deadline = time.monotonic() + 60
    while not times_path.exists() and time.monotonic() < deadline:  # -n: the program may still be running
        time.sleep(0.1)
    returns = json.loads(times_path.read_text())
    return returns, arrivals, stderr, exited


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("calls, rate", [(12, 1.0), (15000, 5000.0)], ids=["1-per-s", "5000-per-s"])
def test_each_call_is_shown_as_it_returns(tmp_path, calls, rate):
    returns, arrivals, stderr, _ = stream(tmp_path, calls, rate)
    assert sorted(arrivals) == list(range(calls)), stderr
    # The program reads the clock just after the call returned, gotrace's probe fires on the `ret`
    # itself: on a busy machine a line can arrive before the program got to read the clock.
    delays_ms = [(arrivals[n] - returns[n]) / 1e6 for n in range(calls)]
    print(f"\n{rate:g} calls/s, {calls} calls: delay from return to line p50 {_percentile(delays_ms, 0.5):.2f} ms, "
          f"p99 {_percentile(delays_ms, 0.99):.2f} ms, max {max(delays_ms):.2f} ms")


def test_n_exits_once_n_calls_are_shown(tmp_path):
    returns, arrivals, stderr, exited = stream(tmp_path, 8, 1.0, "-n", "3")
    assert sorted(arrivals) == [0, 1, 2]
    assert "3 calls shown (-n reached)" in stderr
    # gotrace is gone before the program's last call (it calls once a second, 8 times)
    assert exited < returns[-1], "gotrace kept running after -n 3 was reached"
    print(f"\n-n 3: gotrace exited {(exited - returns[2]) / 1e6:.0f} ms after the third call returned "
          f"(its line arrived {(arrivals[2] - returns[2]) / 1e6:.1f} ms after)")
