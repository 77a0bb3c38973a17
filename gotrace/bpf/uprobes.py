"""Attaches BPF programs to uprobe sites by file offset, each site with its own BPF cookie, and detaches them by closing file descriptors.

Attaching does not go through bcc's attach_uprobe: bcc 0.26 cannot give a
uprobe a BPF cookie, and the cookie (a function id) is how a program learns
which function a hit belongs to, correctly for PIE binaries and for every
process running the binary, whose runtime addresses differ. Two ways, both by
file offset, neither touching tracefs, both undone by closing file descriptors
(so nothing is left behind even if this process dies):

* Linux 6.6+: one uprobe_multi BPF link per program (BPF_LINK_CREATE with
  BPF_TRACE_UPROBE_MULTI), all sites and cookies in one system call. The
  program must have been loaded with that expected attach type.
* Linux 5.15-6.5: one perf event of the kernel's `uprobe` PMU per site, each
  linked with BPF_LINK_CREATE(BPF_PERF_EVENT) carrying the cookie. Each close
  waits for an RCU grace period, so many are closed from many threads at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence

from gotrace.bpf.syscalls import BPF_TRACE_UPROBE_MULTI, Syscalls
from gotrace.errors import CapabilityError, UsageError

MODES = ("auto", "uprobe_multi", "perf_link")
NO_EXPECTED_ATTACH_TYPE = -1  # how a program is loaded for perf-event links

# (program name, expected attach type) -> fd of the loaded program.
ProgramLoader = Callable[[bytes, int], int]

_CLOSE_THREADS = 64
_SEQUENTIAL_CLOSE_MAX = 8


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_all(fds: Sequence[int]) -> None:
    if len(fds) > _SEQUENTIAL_CLOSE_MAX:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(_CLOSE_THREADS) as pool:
            list(pool.map(_close_quietly, fds))
    else:
        for fd in reversed(fds):
            _close_quietly(fd)


class UprobeSet:
    """Attached uprobe sites, held by file descriptors; close() detaches them all. Safe to close twice.

    `mode` says how they were attached: "uprobe_multi" or "perf_link".
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._links: list[int] = []
        self._perf_events: list[int] = []  # perf_link mode: one per site, closed after its link

    def __enter__(self) -> UprobeSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Detach every site: close the links, then the perf events under them."""
        links, self._links = self._links, []
        perf_events, self._perf_events = self._perf_events, []
        _close_all(links)
        _close_all(perf_events)


def attach_sites(
    binary_path: str,
    groups: Sequence[tuple[bytes, Sequence[tuple[int, int]]]],
    *,
    pid: int | None,
    load_program: ProgramLoader,
    mode: str = "auto",
    site_name: Callable[[int], str] | None = None,
) -> UprobeSet:
    """Attach each group's program at its sites, given as (file_offset, cookie) pairs, in `binary_path`.

    pid None attaches for every process running the binary, now or later.
    mode "auto" uses uprobe_multi links when the kernel has them, else one
    perf-event link per site; "uprobe_multi" or "perf_link" force one way.
    Every group's program is loaded, also one with no sites. site_name(cookie),
    when given, names the function a site belongs to in error messages.
    Raises UsageError (no such pid) or CapabilityError, with nothing left attached.
    """
    if mode not in MODES:
        raise UsageError(f"attach mode must be one of {', '.join(MODES)}, not {mode!r}")
    attacher = _Attacher(str(binary_path), pid, load_program, site_name)
    if mode in ("auto", "uprobe_multi"):
        uprobes = UprobeSet("uprobe_multi")
        try:
            attacher.attach_uprobe_multi(uprobes, groups)
            return uprobes
        except OSError as exc:
            uprobes.close()
            if mode == "uprobe_multi":
                raise attacher.error(exc, None) from None
            # An older kernel; the per-site path below reports any real problem precisely.
        except BaseException:
            uprobes.close()
            raise
    uprobes = UprobeSet("perf_link")
    try:
        attacher.attach_perf_links(uprobes, groups)
    except BaseException:
        uprobes.close()
        raise
    return uprobes


class _Attacher:
    """The system calls of attach_sites and the translation of their errors."""

    def __init__(self, binary_path: str, pid: int | None, load_program: ProgramLoader,
                 site_name: Callable[[int], str] | None) -> None:
        self.binary_path = binary_path
        self.path = os.fsencode(binary_path)
        self.pid = pid
        self.load_program = load_program
        self.site_name = site_name
        self.sys = Syscalls()

    def attach_uprobe_multi(self, uprobes: UprobeSet, groups: Sequence[tuple[bytes, Sequence[tuple[int, int]]]]) -> None:
        for program, sites in groups:
            prog_fd = self.load_program(program, BPF_TRACE_UPROBE_MULTI)
            if not sites:
                continue
            offsets, cookies = zip(*sites)
            uprobes._links.append(self.sys.link_create_uprobe_multi(prog_fd, self.path, offsets, cookies, self.pid or 0))

    def attach_perf_links(self, uprobes: UprobeSet, groups: Sequence[tuple[bytes, Sequence[tuple[int, int]]]]) -> None:
        from gotrace.bpf import kernel

        pmu_type = kernel.uprobe_pmu_type()
        pid = -1 if self.pid is None else self.pid
        for program, sites in groups:
            prog_fd = self.load_program(program, NO_EXPECTED_ATTACH_TYPE)
            for file_offset, cookie in sites:
                try:
                    perf_fd = self.sys.perf_uprobe_open(pmu_type, self.path, file_offset, pid)
                except OSError as exc:
                    raise self.error(exc, (file_offset, cookie)) from None
                uprobes._perf_events.append(perf_fd)
                try:
                    uprobes._links.append(self.sys.link_create_perf(prog_fd, perf_fd, cookie))
                except OSError as exc:
                    raise CapabilityError(
                        f"cannot link the BPF program to a uprobe ({os.strerror(exc.errno)}): gotrace needs Linux 5.15+ (BPF cookies)"
                    ) from None

    def error(self, exc: OSError, site: tuple[int, int] | None) -> Exception:
        """The one-line error for a refused uprobe: site is (file_offset, cookie), or None for a whole link."""
        if exc.errno == errno.ESRCH:
            return UsageError(f"no process with pid {self.pid}")
        if exc.errno in (errno.EPERM, errno.EACCES):
            return CapabilityError("the kernel refused to create a uprobe: run as root (sudo)")
        where = self.binary_path
        if site is not None and self.site_name is not None:
            file_offset, cookie = site
            where = f"{self.site_name(cookie)} at file offset {file_offset:#x} of {self.binary_path}"
        return CapabilityError(f"cannot attach a uprobe to {where}: {os.strerror(exc.errno)}")
