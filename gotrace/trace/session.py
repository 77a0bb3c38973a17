"""A tracing session: target process handling, the report loop and its ending.

Shared by the tracing commands. It starts `-c` commands gated so probes are in
place before their first instruction, watches a `-p` process, turns SIGINT and
SIGTERM into "stop and report", and never touches the traced process beyond
the probes: signals are only ever sent to a `-c` child we started, and only
when gotrace itself is told to stop before the child ends.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import shutil
import time
from dataclasses import dataclass, field

from gotrace.errors import UsageError

POLL_S = 0.1


@dataclass
class Target:
    """What to trace: a binary for every process, one pid, or a command we start."""

    binary_path: str            # the file the probes go on
    display: str                # how the user named it
    pid: int | None = None
    command: list[str] | None = None
    exit_status: int | None = None     # of a `-c` command, once it has ended
    _started_child: bool = field(default=False, repr=False)
    _gate_w: int | None = field(default=None, repr=False)

    def start_gated(self) -> None:
        """Fork the `-c` command, held before exec until release(), so the probes
        (filtered on its pid) are in place before its first instruction."""
        if not self.command:
            return
        program = shutil.which(self.command[0])
        if program is None:
            raise UsageError(f"-c: command not found: {self.command[0]}")
        gate_r, gate_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the gate, then become the command
            try:
                os.close(gate_w)
                if os.read(gate_r, 1) == b"g":
                    os.close(gate_r)
                    os.execv(program, self.command)
            except BaseException:
                pass
            os._exit(127)
        os.close(gate_r)
        self._gate_w = gate_w
        self.pid = pid
        self._started_child = True

    def release(self) -> None:
        if self._gate_w is not None:
            try:
                os.write(self._gate_w, b"g")
            finally:
                os.close(self._gate_w)
                self._gate_w = None

    def alive(self) -> bool:
        if self._started_child:
            if self.exit_status is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    pid, status = self.pid, 0
                if pid == 0:
                    return True
                self.exit_status = os.waitstatus_to_exitcode(status)
            return False
        if self.pid is not None:
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[-1].split()[0]
                return state not in ("Z", "X")
            except OSError:
                return False
        return True

    def abandon(self) -> None:
        """Called when gotrace stops early: a gated child that never ran is killed;
        a running `-c` child is left to finish on its own."""
        if self._gate_w is not None and self._started_child:
            os.close(self._gate_w)      # the child reads EOF and exits without running
            self._gate_w = None
            os.waitpid(self.pid, 0)


def parse_command(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"-c: cannot parse the command ({e}); quote it as one argument") from None
    if not argv:
        raise UsageError("-c: empty command; give the command to start, e.g. -c './server -port 8080'")
    return argv


class StopFlag:
    """SIGINT/SIGTERM set a flag instead of raising, for the duration of a `with`."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self) -> bool:
        return self.signal is not None


class Ending:
    """When a trace ends: a SIGINT/SIGTERM, the -d duration elapsed (counted from creation, after the
    probes are attached), or the target process exited."""

    def __init__(self, target: Target, stop: StopFlag, duration_s: float | None) -> None:
        self.target = target
        self.stop = stop
        self.duration_s = duration_s
        self.started = time.monotonic()
        self.reason: str | None = None  # "signal", "duration" or "target-exit", once ended

    def check(self) -> bool:
        """True (and `reason` set) once the trace is to end."""
        if self.reason is None:
            if self.stop:
                self.reason = "signal"
            elif self.duration_s is not None and time.monotonic() - self.started >= self.duration_s:
                self.reason = "duration"
            elif self.target.pid is not None and not self.target.alive():
                self.reason = "target-exit"
        return self.reason is not None

    def wait_s(self, longest_s: float = POLL_S) -> float:
        """How long to sleep before the next check: at most longest_s, never past the -d deadline."""
        wake = longest_s
        if self.duration_s is not None:
            wake = min(wake, max(0.0, self.started + self.duration_s - time.monotonic()))
        return wake


def intervals(ending: Ending, interval_s: float | None, wait=None):
    """Yields None once every interval_s (never when None) until the trace ends (ending.reason says why).

    With `wait`, the pauses between checks are wait(seconds) instead of sleeping: it returns what arrived
    meanwhile, and each of those is yielded as it comes."""
    next_report = ending.started + interval_s if interval_s else None
    while not ending.check():
        now = time.monotonic()
        if next_report is not None and now >= next_report:
            yield None
            next_report += interval_s
            continue
        wake = ending.wait_s()
        if next_report is not None:
            wake = min(wake, max(0.0, next_report - now))
        if wait is None:
            time.sleep(wake)
        else:
            yield from wait(wake)


@contextlib.contextmanager
def attached(target: Target, make_tracer):
    """The traced session's frame: SIGINT/SIGTERM become a StopFlag, a `-c`
    command is started held before exec, the tracer attaches, the command is
    released; on the way out the tracer detaches and a command that never ran
    is removed. Yields (tracer, stop)."""
    with StopFlag() as stop:
        target.start_gated()
        try:
            with make_tracer() as tracer:
                target.release()
                yield tracer, stop
        finally:
            target.abandon()
