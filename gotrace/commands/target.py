"""What a command is pointed at: the contract's target forms (./bin, -p PID, -c 'CMD' ./bin) as a Target and patterns."""

from __future__ import annotations

import contextlib
import os
import shutil

from gotrace.binary.gobinary import GoBinary
from gotrace.errors import CapabilityError, UsageError
from gotrace.trace.priority import yielding
from gotrace.trace.session import Target, parse_command


def resolve_binary(arg: str) -> str:
    """A binary argument as a path: an existing path, else a command on $PATH."""
    if os.path.exists(arg) or "/" in arg:
        return arg
    return shutil.which(arg) or arg


def pid_binary(pid: int) -> str:
    """`/proc/PID/exe` of a live process (works for processes in containers)."""
    exe = f"/proc/{pid}/exe"
    if not os.path.exists(f"/proc/{pid}"):
        raise UsageError(f"no process with pid {pid}; check the pid with ps or pgrep")
    try:
        os.stat(exe)
    except PermissionError:
        if os.geteuid() == 0:
            raise UsageError(f"cannot read {exe}: permission denied even to root (the process is not dumpable, or "
                             "belongs to another user namespace): gotrace cannot trace it; give another pid") from None
        raise CapabilityError(f"cannot read {exe}: permission denied; run gotrace as root (sudo)") from None
    except OSError:
        raise UsageError(f"process {pid} has no readable executable (a kernel thread or exited); give a Go process pid")
    return exe


def readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return path


def open_binary(binary: str | None, pid: int | None) -> GoBinary:
    """The Go binary of a listing target: a path (or command on $PATH), or a pid's executable."""
    if pid is not None:
        return GoBinary.open(pid_binary(pid), display_path=f"pid {pid} ({readlink(f'/proc/{pid}/exe')})")
    if binary is None:
        raise UsageError("give a binary path or -p PID")
    return GoBinary.open(resolve_binary(binary), display_path=binary)


def listing_target(args: tuple[str, ...], pid: int | None) -> tuple[str | None, list[str]]:
    """(binary or None with -p, patterns) of `gotrace funcs` arguments."""
    if pid is not None:
        return None, list(args)
    if not args:
        raise UsageError("missing TARGET: give a Go binary path or -p PID (see gotrace funcs --help)")
    return args[0], list(args[1:])


def tracing_target(args: tuple[str, ...], pid: int | None, command: str | None) -> tuple[Target, list[str]]:
    """(Target, patterns) of a tracing command's positional arguments and -p/-c."""
    if pid is not None and command is not None:
        raise UsageError("-p and -c exclude each other: trace a running process or start one")
    if pid is not None:
        if not args:
            raise UsageError("missing PATTERN: give at least one Go function name or glob, e.g. 'main.*'")
        return Target(pid_binary(pid), readlink(f"/proc/{pid}/exe"), pid=pid), list(args)
    if len(args) < 2:
        what = "./bin and PATTERN" if not args else "PATTERN after the binary"
        raise UsageError(f"missing {what}: e.g. gotrace latency ./server 'main.handle' (or -p PID PATTERN)")
    argv = parse_command(command) if command is not None else None
    return Target(resolve_binary(args[0]), args[0], command=argv), list(args[1:])


def open_traced(target: Target) -> GoBinary:
    """The Go binary a tracing target's probes go on."""
    if target.pid is not None and not target.command:
        return GoBinary.open(target.binary_path, display_path=f"pid {target.pid} ({target.display})")
    return GoBinary.open(target.binary_path, display_path=target.display)


def reading_priority(target: Target) -> contextlib.AbstractContextManager:
    """How to read the binary and plan (CPU-bound, seconds for '*'): at the analysis priority while the traced
    processes run (-p, or every process of the binary), so that they go first; at gotrace's own for a -c
    command, which is held before exec until the probes are in place: there is nothing to yield to, and a
    lower priority would only let unrelated work (another gotrace's detach helper, say) delay the trace."""
    return yielding() if target.command is None else contextlib.nullcontext()
