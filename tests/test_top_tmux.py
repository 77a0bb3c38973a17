"""`gotrace top` in a real terminal: tmux runs it in an 80x24 pane, the test reads the screen.

testdata/slowtruth runs its two callers five times (-loop 5) under `gotrace top -c`; its log holds every
call of main.target. When it exits, top keeps the final counts on the screen: the CALLS column must equal
the program's counts (main.target once per logged call, each caller once per loop), the rows must be sorted
by their share of time, and every line must fit the 80x24 pane. The keys are checked on the live screen
(space pauses) and on the final one (n sorts by name, q quits with status 0). Without a terminal, top says
so in one line and exits 2.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from support import gobuild

REPO = gobuild.REPO_ROOT
WIDTH, HEIGHT = 80, 24
LOOPS = 5


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def screen(session: str) -> list[str]:
    return tmux("capture-pane", "-p", "-t", session).split("\n")[:HEIGHT]


def wait_screen(session: str, needle: str, timeout_s: float = 180) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        lines = screen(session)
        if any(needle in line for line in lines):
            return lines
        if time.monotonic() > deadline:
            pytest.fail(f"{needle!r} never appeared on the screen:\n" + "\n".join(lines))
        time.sleep(0.2)


def table(lines: list[str]) -> list[tuple[str, ...]]:
    """The rows under the FUNCTION header: (name, calls/s, calls, p50, p99, max, in flight, time%)."""
    start = next(i for i, line in enumerate(lines) if line.startswith("FUNCTION"))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        fields = line.split()
        rows.append((" ".join(fields[:-7]), *fields[-7:]))
    return rows


@pytest.mark.bpf
def test_top_screen_counts_equal_the_program(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/test installs it)")
    binary = gobuild.build("slowtruth", "1.23.9", "default")
    log, status = tmp_path / "calls.jsonl", tmp_path / "status"
    command = shlex.join([sys.executable, "-m", "gotrace", "top", "-c", f"{binary} -n 100 -loop {LOOPS} -out {log}",
                          str(binary), "main.target", "main.fastCaller", "main.slowCaller"])
    session = f"gotrace-test-{uuid.uuid4().hex[:8]}"
    tmux("new-session", "-d", "-s", session, "-x", str(WIDTH), "-y", str(HEIGHT), "-c", str(REPO),
         f"{command}; echo $? > {status}; sleep 600")
    try:
        live = wait_screen(session, "FUNCTION")
        assert live[0].startswith("gotrace top") and "sort: t time" in live[-1]
        tmux("send-keys", "-t", session, " ")
        paused = wait_screen(session, "[paused]")
        tmux("send-keys", "-t", session, " ")
        wait_screen(session, "sort: t time")
        final = wait_screen(session, "the traced process exited")
        assert all(len(line) <= WIDTH for line in final + paused)

        calls = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(calls) == LOOPS * 150
        rows = table(final)
        want = {"main.target": len(calls), "main.fastCaller": LOOPS, "main.slowCaller": LOOPS}
        assert {row[0]: int(row[2]) for row in rows} == want, "\n".join(final)
        assert f"{sum(want.values())} calls since start" in final[1]
        shares = [float(row[7]) for row in rows]
        assert shares == sorted(shares, reverse=True)
        assert 99.5 <= sum(shares) <= 100.5 or sum(shares) == 0  # no call returned in the last, partial second
        assert all(row[6] == "0" for row in rows)  # in flight: the process exited, nothing runs

        tmux("send-keys", "-t", session, "n")
        deadline = time.monotonic() + 30
        while [row[0] for row in table(screen(session))] != sorted(want) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [row[0] for row in table(screen(session))] == sorted(want)
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 60
        while not status.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_top_without_a_terminal_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "gotrace", "top", "./bin", "main.f"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "needs a terminal" in lines[0], proc.stderr
