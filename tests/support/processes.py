"""Child processes a test watches while they run: wait for a line, signal them, collect their output.

``Running(argv)`` starts a process (from the repository root unless told
otherwise) whose stdout and stderr are read by threads, so a test can wait
for a line on either while the process goes on. The ``spawn`` fixture
(tests/conftest.py) starts them and kills whatever is still running when
the test ends.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

import pytest

from support.gobuild import REPO_ROOT

START_TIMEOUT_S = 120
"""How long gotrace may take to print a line it prints at start-up (analysis + BPF compile) on a loaded 2-core VM."""


class Running:
    """A subprocess whose stdout and stderr are collected by threads, so a test can wait for a line meanwhile."""

    def __init__(self, argv: list[str], **kwargs) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=kwargs.pop("cwd", REPO_ROOT), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, **kwargs)
        self.pid = self.proc.pid
        self.lines: dict[str, list[tuple[float, str]]] = {"stdout": [], "stderr": []}
        self._open = 2
        self.closed_at: float | None = None     # when both streams reached EOF: the process had ended
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(stream, name), daemon=True)
                         for stream, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream, name: str) -> None:
        for line in stream:
            with self._cond:
                self.lines[name].append((time.monotonic(), line))
                self._cond.notify_all()
        with self._cond:
            self._open -= 1
            if not self._open:
                self.closed_at = time.monotonic()
            self._cond.notify_all()

    def wait_line(self, name: str, pattern: str, timeout: float = START_TIMEOUT_S) -> tuple[float, re.Match]:
        """(arrival time, match) of the first line of `name` matching `pattern`; fails on timeout or EOF."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for stamp, line in self.lines[name]:
                    m = regex.search(line)
                    if m:
                        return stamp, m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._open:
                    pytest.fail(f"{self.argv[:6]}: no {name} line matching {pattern!r} "
                                f"({'timeout' if remaining <= 0 else 'ended'}); stdout={self.stdout!r} "
                                f"stderr={self.stderr!r}")
                self._cond.wait(min(remaining, 1.0))

    def finish(self, timeout: float = 120) -> int:
        """Wait for the process and its output; its exit status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[:6]} did not end within {timeout} s; stdout={self.stdout!r} stderr={self.stderr!r}")
        for thread in self._threads:
            thread.join(10)
        return code

    @property
    def stdout(self) -> str:
        with self._cond:
            return "".join(line for _, line in self.lines["stdout"])

    @property
    def stderr(self) -> str:
        with self._cond:
            return "".join(line for _, line in self.lines["stderr"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Spawner:
    """What the ``spawn`` fixture hands a test: spawn(argv, **popen_kwargs) -> Running."""

    def __init__(self) -> None:
        self.started: list[Running] = []

    def __call__(self, argv: list[str], **kwargs) -> Running:
        running = Running(argv, **kwargs)
        self.started.append(running)
        return running

    def kill_all(self) -> None:
        """Kill every process still running, the last started first."""
        for running in reversed(self.started):
            running.kill()
