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
EXEC_WAIT_S = 2.0     # longest wait for a released `-c` child to exec its command
WRAPPER_WAIT_S = 0.5  # ... and, once it runs another binary, for that one to exec the target (env, nice)


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

    def check_exec(self) -> None:
        """After release(): the `-c` command must run the binary the probes are on (same device and inode as
        /proc/PID/exe). If it runs another, it is stopped (it was started for this trace) and UsageError says so."""
        if not self._started_child:
            return
        want = os.stat(self.binary_path)
        ours = os.stat("/proc/self/exe")
        started = time.monotonic()
        other_since = None
        running = None
        while True:
            try:
                st = os.stat(f"/proc/{self.pid}/exe")
                running = os.readlink(f"/proc/{self.pid}/exe")
            except OSError:  # ended already: judge by the program it was given
                program = shutil.which(self.command[0])
                try:
                    st = os.stat(program) if program else None
                except OSError:
                    st = None
                if st is None or _same_file(st, want):
                    return
                running = program
                break
            if _same_file(st, want):
                return
            now = time.monotonic()
            if not _same_file(st, ours):  # it has exec'd something else: perhaps a wrapper that execs again
                other_since = other_since or now
                if now - other_since >= WRAPPER_WAIT_S:
                    break
            elif now - started >= EXEC_WAIT_S:
                return  # never exec'd (a stuck child): its exit status will tell
            time.sleep(0.002)
        self._stop_child()
        raise UsageError(f"-c: the command runs {running}, not {self.display}, the binary the probes are on: "
                         f"give -c a command that runs {self.display} (or trace {running})")

    def _stop_child(self) -> None:
        """End the `-c` child started for this trace (SIGTERM, then SIGKILL after a second) and reap it."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            self.exit_status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

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


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
    for due in ticks(ending, interval_s, wait=wait):
        if due is True:
            yield None
        elif due is not False:
            yield due


def ticks(ending: Ending, interval_s: float | None, every_s: float | None = None, wait=None):
    """Until the trace ends (ending.reason says why): yields True once every interval_s (never when None), and
    False every every_s in between (never when None), for work that runs more often than reports.

    With `wait`, the pauses between checks are wait(seconds) instead of sleeping: it returns what arrived
    meanwhile (never True or False), and each of those is yielded as it comes."""
    next_report = ending.started + interval_s if interval_s else None
    next_tick = ending.started + every_s if every_s else None
    while not ending.check():
        now = time.monotonic()
        if next_report is not None and now >= next_report:
            yield True
            next_report += interval_s
            continue
        if next_tick is not None and now >= next_tick:
            yield False
            next_tick = max(next_tick + every_s, time.monotonic())
            continue
        wake = ending.wait_s()
        for deadline in (next_report, next_tick):
            if deadline is not None:
                wake = min(wake, max(0.0, deadline - now))
        if wait is None:
            time.sleep(wake)
        else:
            yield from wait(wake)


@contextlib.contextmanager
def attached(target: Target, make_tracer, prepare=None, after_attach=None):
    """The traced session's frame: SIGINT/SIGTERM become a StopFlag, a `-c`
    command is started held before exec, the tracer is made, prepare(tracer)
    runs (the cost guard calibrates and takes its baseline), the tracer
    attaches, after_attach(tracer) runs, the command is released and checked
    to run the traced binary;
    on the way out the tracer detaches and a command that never ran is
    removed. Yields (tracer, stop)."""
    with StopFlag() as stop:
        target.start_gated()
        try:
            tracer = make_tracer()
            try:
                if prepare is not None:
                    prepare(tracer)
                tracer.attach()
                if after_attach is not None:
                    after_attach(tracer)
                target.release()
                target.check_exec()
                yield tracer, stop
            finally:
                tracer.close()
        finally:
            target.abandon()
