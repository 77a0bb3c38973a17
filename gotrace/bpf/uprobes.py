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
  linked with BPF_LINK_CREATE(BPF_PERF_EVENT) carrying the cookie. Two file
  descriptors per site: RLIMIT_NOFILE is raised before attaching (root may
  raise the hard limit), or attaching is refused before it starts.

Detaching a perf-event site is slow, and the kernel does it one site at a time
(measured with scripts/detach-bench): closing its BPF link waits for an RCU
tasks-trace grace period (Linux 6.1: under a global mutex; 6.18: in
parallel), and only then can its perf event go, whose close removes the int3
from the target and waits for more grace periods under another global mutex.
PERF_EVENT_IOC_DISABLE is quick but stops nothing: the BPF program keeps
running and the int3 stays. So UprobeSet.close() closes each site's link and
then its perf event, links from several threads and perf events from one as
their links go, the two global mutexes overlapping; with many sites it hands
them to a detached helper process (`gotrace-detach`) and returns at once:
the probes keep costing the target until the helper has closed them (about
a grace period or two per site), and nothing outlives the helper.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Sequence

from gotrace.bpf import kernel
from gotrace.bpf.syscalls import BPF_TRACE_UPROBE_MULTI, Syscalls
from gotrace.errors import CapabilityError, UsageError

MODES = ("auto", "uprobe_multi", "perf_link")
NO_EXPECTED_ATTACH_TYPE = -1  # how a program is loaded for perf-event links

# (program name, expected attach type) -> fd of the loaded program.
ProgramLoader = Callable[[bytes, int], int]

# Perf-event sites: the BPF links are closed from this many threads at once.
_LINK_CLOSE_THREADS = 16
# From this many perf-event sites on, close(wait=None) leaves the detaching to a helper process.
BACKGROUND_DETACH_MIN_SITES = 16
# Open files beyond the probes' own that the rest of gotrace may need meanwhile.
_SPARE_FDS = 64


def _close_quietly(fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.close(fd)


def close_perf_sites(sites: Sequence[tuple[int, int]]) -> None:
    """Detach perf-event sites, given as (link fd, perf event fd) pairs (link fd -1: none), and return when all are gone.

    A perf event outlives the close of its fd while its BPF link holds it, so
    each site goes link first. Links are closed from several threads (kernels
    that wait for their grace period outside a lock overlap them), and each
    perf event from this thread as soon as its link is gone, so the kernel's
    two serialized waits (bpf_event_mutex for links, event_mutex for perf
    events) overlap instead of adding up. Roughly in the order given.
    """
    if len(sites) < 2:
        for link_fd, perf_fd in sites:
            _close_quietly(link_fd)
            _close_quietly(perf_fd)
        return
    released: queue.SimpleQueue[int] = queue.SimpleQueue()

    def close_links(share: Sequence[tuple[int, int]]) -> None:
        for link_fd, perf_fd in share:
            _close_quietly(link_fd)
            released.put(perf_fd)

    n_threads = min(_LINK_CLOSE_THREADS, len(sites))
    threads = [threading.Thread(target=close_links, args=(sites[i::n_threads],), name="gotrace-unlink", daemon=True)
               for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for _ in range(len(sites)):
        _close_quietly(released.get())
    for thread in threads:
        thread.join()


def _detach_in_background(sites: Sequence[tuple[int, int]]) -> int:
    """Hand the sites' fds to a helper process that closes them after this returns; its pid. OSError if it cannot start.

    The helper is forked, not executed (an interpreter's start-up would delay
    gotrace's exit by seconds on a slow machine): a first child starts a new
    session (Ctrl-C and a closing terminal reach gotrace, not the helper) and
    forks the helper, which init adopts when the first child exits at once.
    The helper closes every other inherited fd first (gotrace's stdout, for
    one, must reach EOF when gotrace exits), detaches the sites and exits.
    """
    keep = {fd for pair in sites for fd in pair if fd >= 0}
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # first child
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            helper = os.fork()
            if helper == 0:
                _helper(sites, keep)  # never returns
            os.write(write_end, str(helper).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        reported = os.read(read_end, 32)
    finally:
        os.close(read_end)
    _, status = os.waitpid(first, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not reported:
        raise OSError(errno.ECHILD, "the detach helper did not start")
    return int(reported)


def _helper(sites: Sequence[tuple[int, int]], keep: set[int]) -> None:
    """The detach helper's life, in a forked process: close all but the sites' fds, detach the sites, exit."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd not in keep:
                _close_quietly(fd)
        with contextlib.suppress(OSError):
            with open("/proc/self/comm", "w") as comm:
                comm.write("gotrace-detach")
        close_perf_sites(sites)
    finally:
        os._exit(0)


class UprobeSet:
    """Attached uprobe sites, held by file descriptors; close() detaches them all. Safe to close twice.

    `mode` says how they were attached: "uprobe_multi" or "perf_link".
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._links: list[int] = []  # uprobe_multi: one link per program
        self._sites: list[list[int]] = []  # perf_link: [link fd, perf event fd] per site (link -1 until created)
        self._cookies: list[int] = []  # perf_link: each site's cookie
        # Set by close() when it left the perf-event sites to a helper process: the probes are gone when it exits.
        self.detach_helper_pid: int | None = None

    def __enter__(self) -> UprobeSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def n_sites(self) -> int:
        """Perf-event sites held (uprobe_multi links hold theirs in one fd each)."""
        return len(self._sites)

    def close(self, *, wait: bool | None = None, first_cookies: Iterable[int] = ()) -> None:
        """Detach every site.

        uprobe_multi links go at once. Perf-event sites go one by one, slowly
        (see the module's docstring): wait=True detaches them before
        returning; wait=False leaves them to a detached helper process
        (`detach_helper_pid`) and returns at once; None (default) waits only
        for fewer than BACKGROUND_DETACH_MIN_SITES. Sites whose cookie is in
        `first_cookies` (say, the functions called most) are detached first.
        """
        links, self._links = self._links, []
        sites, self._sites = self._sites, []
        cookies, self._cookies = self._cookies, []
        for fd in links:
            _close_quietly(fd)
        if not sites:
            return
        first = set(first_cookies)
        if first:
            order = sorted(range(len(sites)), key=lambda i: (i >= len(cookies) or cookies[i] not in first, i))
            sites = [sites[i] for i in order]
        pairs = [(link_fd, perf_fd) for link_fd, perf_fd in sites]
        if wait is False or (wait is None and len(pairs) >= BACKGROUND_DETACH_MIN_SITES):
            try:
                self.detach_helper_pid = _detach_in_background(pairs)
            except OSError:
                pass  # no helper (no memory, no pids left): detach here, slowly but surely
            else:
                for link_fd, perf_fd in pairs:  # the helper holds its own references: these closes are quick
                    _close_quietly(link_fd)
                    _close_quietly(perf_fd)
                return
        close_perf_sites(pairs)


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
        pmu_type = kernel.uprobe_pmu_type()
        pid = -1 if self.pid is None else self.pid
        n_sites = sum(len(sites) for _, sites in groups)
        kernel.ensure_open_files(
            2 * n_sites + _SPARE_FDS,
            f"{n_sites} probe sites need a perf event and a BPF link each on this kernel (uprobe_multi needs Linux 6.6+)",
        )
        for program, sites in groups:
            prog_fd = self.load_program(program, NO_EXPECTED_ATTACH_TYPE)
            for file_offset, cookie in sites:
                try:
                    perf_fd = self.sys.perf_uprobe_open(pmu_type, self.path, file_offset, pid)
                except OSError as exc:
                    raise self.error(exc, (file_offset, cookie)) from None
                site = [-1, perf_fd]
                uprobes._sites.append(site)
                uprobes._cookies.append(cookie)
                try:
                    site[0] = self.sys.link_create_perf(prog_fd, perf_fd, cookie)
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        raise self.error(exc, (file_offset, cookie)) from None
                    raise CapabilityError(
                        f"cannot link the BPF program to a uprobe ({os.strerror(exc.errno)}): gotrace needs Linux 5.15+ (BPF cookies)"
                    ) from None

    def error(self, exc: OSError, site: tuple[int, int] | None) -> Exception:
        """The one-line error for a refused uprobe: site is (file_offset, cookie), or None for a whole link."""
        if exc.errno == errno.ESRCH:
            return UsageError(f"no process with pid {self.pid}")
        if exc.errno in (errno.EPERM, errno.EACCES):
            return CapabilityError("the kernel refused to create a uprobe: run as root (sudo)")
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return CapabilityError(
                f"ran out of open files attaching probes ({os.strerror(exc.errno)}): trace fewer functions, "
                f"or raise the limit (ulimit -n, fs.file-max)"
            )
        where = self.binary_path
        if site is not None and self.site_name is not None:
            file_offset, cookie = site
            where = f"{self.site_name(cookie)} at file offset {file_offset:#x} of {self.binary_path}"
        return CapabilityError(f"cannot attach a uprobe to {where}: {os.strerror(exc.errno)}")
