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
import math
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from concurrent.futures import ThreadPoolExecutor

from gotrace import header
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
# Other fds (chunks of DetachableSites): closed from this many threads when there are more than _SEQUENTIAL_CLOSE_MAX.
_CLOSE_THREADS = 128
_SEQUENTIAL_CLOSE_MAX = 8
# DetachableSites.close(): from this many links on, a helper process removes them, at DETACH_CPU_SHARE of a CPU.
BACKGROUND_CLOSE_MIN_LINKS = 256
DETACH_CPU_SHARE = 0.25
_PACE_SLACK_S = 0.05  # close_paced(): CPU seconds it may be ahead of its share
_PACE_STEP_S = 0.01
_PACED_CLOSE_THREADS = 128  # close_paced(): each waits out grace periods after its close (counted in the load average)


def _close_quietly(fd: int) -> None:
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_all(fds: Sequence[int]) -> None:
    """Close fds (links of one kind, or perf events whose links are gone), from many threads when there are many."""
    if len(fds) > _SEQUENTIAL_CLOSE_MAX:
        with ThreadPoolExecutor(_CLOSE_THREADS) as pool:
            list(pool.map(_close_quietly, fds))
    else:
        for fd in reversed(fds):
            _close_quietly(fd)


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


def _detach_in_background(sites: Sequence[tuple[int, int]], work: Callable[[], None] | None = None) -> int:
    """Hand the sites' fds to a helper process that closes them; this process's own copies are closed before this
    returns; the helper's pid. OSError if it cannot start (nothing closed then).
    (work: how the helper closes them, instead of close_perf_sites(sites).)

    The helper is forked, not executed (an interpreter's start-up would delay
    gotrace's exit by seconds on a slow machine): a first child starts a new
    session (Ctrl-C and a closing terminal reach gotrace, not the helper) and
    forks the helper, which init adopts when the first child exits at once.
    The helper closes every other inherited fd first (gotrace's stdout, for
    one, must reach EOF when gotrace exits), then waits until this process
    has closed its copies of the sites' fds (EOF on a pipe), detaches the
    sites and exits. The close that drops a link's last reference is the one
    that removes its probes and waits for a grace period (40 ms each, one
    after the other, seen on caddy under load); had the helper started first,
    its closes would drop the second-last references, quickly, and gotrace's
    own, one by one, the last: that once kept gotrace closing 4,000 links for
    3 minutes while they cost the service.
    """
    keep = {fd for pair in sites for fd in pair if fd >= 0}
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()  # EOF: this process's copies are closed
    try:
        first = os.fork()
    except OSError:
        for fd in (read_end, write_end, go_read, go_write):
            os.close(fd)
        raise
    if first == 0:  # first child
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            helper = os.fork()
            if helper == 0:
                _helper(keep | {go_read}, work or (lambda: close_perf_sites(sites)), go_read)  # never returns
            os.write(write_end, str(helper).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    os.close(go_read)
    try:
        try:
            reported = os.read(read_end, 32)
        finally:
            os.close(read_end)
        _, status = os.waitpid(first, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not reported:
            raise OSError(errno.ECHILD, "the detach helper did not start")
        for link_fd, perf_fd in sites:  # the helper holds its own references: these closes are quick
            _close_quietly(link_fd)
            _close_quietly(perf_fd)
    finally:
        os.close(go_write)  # the helper goes on (or, with no helper, the pipe goes)
    return int(reported)


def _helper(keep: set[int], work: Callable[[], None], go_fd: int) -> None:
    """The detach helper's life, in a forked process: close all fds but `keep`, wait for EOF on go_fd, work
    (detach the sites), exit."""
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
        while os.read(go_fd, 1):
            pass
        os.close(go_fd)
        work()
    finally:
        os._exit(0)


def close_paced(fds: Sequence[int], cpu_share: float) -> None:
    """Close fds (links) roughly in the order given, from up to _PACED_CLOSE_THREADS threads, keeping this process's
    CPU time to cpu_share of one CPU over the whole: removing a probe is kernel work in the closing thread's
    time (the grace periods waited for after it are not), and on a service under load it competes with the
    service for its CPUs and for its mmap lock."""
    import resource

    def cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    started, cpu_at_start = time.monotonic(), cpu_s()
    gate = threading.Lock()
    pending = iter(fds)

    def closer() -> None:
        while True:
            with gate:  # one thread at a time takes the next fd, after waiting while over the share
                while cpu_s() - cpu_at_start > cpu_share * (time.monotonic() - started) + _PACE_SLACK_S:
                    time.sleep(_PACE_STEP_S)
                fd = next(pending, None)
            if fd is None:
                return
            _close_quietly(fd)

    threads = [threading.Thread(target=closer, name="gotrace-unlink", daemon=True)
               for _ in range(min(_PACED_CLOSE_THREADS, len(fds)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


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
        self.detach_helper_pid = detach_perf_sites(pairs, wait)


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


# ==== Detachable sites (the cost guard's part: gotrace/trace/guard.py) =========================
# attach_sites() above holds all sites of a program in one link. DetachableSites holds them in
# chunks of whole units (a unit: what the low 32 bits of a cookie name, a traced function), one
# link per chunk and program, so that some units can be detached for real (their traps removed)
# while the others keep counting, and a site the kernel refuses costs only its own unit.
#
# It relies on the programs' generation check (probes/gotrace.h, "Which link counts a hit"): a
# site's cookie is (generation << 32) | unit, and set_generation(units, generation) tells the
# programs which generation counts. A chunk is attached with a generation nothing counts yet,
# then switched on for all its units at once, so that a call is either seen at its entry and at
# its return or not at all (never entered-but-not-returned because of attach order). Replacing a
# chunk's links without some units attaches the survivors' new links first, switches them,
# and only then closes the old links: no hit is lost or counted twice.

# Sites per link. Detaching a unit re-creates its chunk's links for the other units: each of their sites is
# registered again (the breakpoint stays, but every registration takes the traced process's mmap lock), so
# small chunks disturb less; each chunk costs a file descriptor per program (fewer, larger chunks when those are
# short; the units likely to be detached get chunks of their own: plan_chunks).
CHUNK_SITES = 64
# Sites per chunk of the units likely to be detached that cannot have chunks of their own (plan_chunks).
SMALL_CHUNK_SITES = 8
_FD_RESERVE = 256  # descriptors left for everything else
ENOTSUPP = 524  # the kernel's own "not supported": an instruction a uprobe cannot be placed on
REFUSED_SITE_ERRNOS = frozenset({ENOTSUPP, errno.EOPNOTSUPP})
# Link generations stay below it: header GT_GEN_DETACHED (0xFFFFFFFF) and GT_GEN_PROBATION (the top bit) are
# never a link's.
_GENERATION_LIMIT = 0x7FFFFFFE


def _next_generation(generation: int) -> int:
    return generation + 1 if generation + 1 < _GENERATION_LIMIT else 1

# set_generation(units, generation): write gt_active[unit] = generation for each unit.
GenerationSetter = Callable[[Sequence[int], int], None]


class _Chunk:
    """Some units' sites in every program, attached together (one link per program, or per site)."""

    def __init__(self, units: list[int], generation: int, probation: bool = False) -> None:
        self.units = units
        self.generation = generation
        self.probation = probation  # only the probation groups' links (DetachableSites)
        self.links: list[int] = []
        self.perf_events: list[int] = []
        self.unit_fds: dict[int, list[int]] = {}  # perf_link mode: each unit's own links and perf events

    def fds(self) -> list[int]:
        return self.links + self.perf_events

    def take_units(self, leaving: set[int]) -> _Chunk:
        """perf_link mode: the leaving units' fds, as a chunk of their own; this chunk keeps the others."""
        gone = _Chunk([unit for unit in self.units if unit in leaving], self.generation, self.probation)
        for unit in gone.units:
            gone.links += self.unit_fds.pop(unit, [])
        kept = {fd for fds in self.unit_fds.values() for fd in fds}
        self.units = [unit for unit in self.units if unit not in leaving]
        self.links = [fd for fd in self.links if fd in kept]
        self.perf_events = [fd for fd in self.perf_events if fd in kept]
        return gone


class DetachableSites:
    """Sites attached in chunks of whole units; detach(units) removes those units' probes for real.

    groups: (program, [(file_offset, unit)]) per program. mode as for
    attach_sites(). site_name(unit) names a unit in errors; detached_units()
    and refused (unit -> errno of the kernel's refusal) say what is not
    attached. close() detaches everything. Safe to close twice.

    A chunk may be attached on probation (attach()'s probation_for): only
    the links of probation_groups (the entry program's), its units' gt_active
    entries being generation | GT_GEN_PROBATION (the programs count those
    hits and do nothing else); promote(units) gives them all their links.
    """

    def __init__(self, binary_path: str, groups: Sequence[tuple[bytes, Sequence[tuple[int, int]]]], *,
                 pid: int | None, load_program: ProgramLoader, set_generation: GenerationSetter,
                 mode: str = "auto", site_name: Callable[[int], str] | None = None,
                 chunk_sites: int = CHUNK_SITES, hot_first: Sequence[int] = (),
                 probation_groups: Sequence[int] = ()) -> None:
        if mode not in MODES:
            raise UsageError(f"attach mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._attacher = _Attacher(str(binary_path), pid, load_program, site_name)
        self._programs = [program for program, _ in groups]
        self._unit_sites: dict[int, list[list[int]]] = {}  # unit -> file offsets per group
        for index, (_, sites) in enumerate(groups):
            for file_offset, unit in sites:
                self._unit_sites.setdefault(unit, [[] for _ in groups])[index].append(file_offset)
        self._set_generation = set_generation
        total_sites = sum(len(sites) for _, sites in groups)
        self._total_sites = total_sites
        self._chunk_sites = max(1, chunk_sites)
        self._hot_first = [unit for unit in dict.fromkeys(hot_first) if unit in self._unit_sites]
        self._probation_groups = frozenset(probation_groups)
        self.requested_mode = mode
        self.mode: str | None = None  # "uprobe_multi" or "perf_link" once the first chunk is attached
        self._prog_fds: dict[bytes, int] = {}
        self._chunks: list[_Chunk] = []
        self._detached: set[int] = set()
        self.refused: dict[int, int] = {}
        self._pool = None
        # Set by close() when it left the perf-event sites to a helper process: the probes are gone when it exits.
        self.detach_helper_pid: int | None = None

    def __enter__(self) -> DetachableSites:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def units(self) -> list[int]:
        return list(self._unit_sites)

    def attached_units(self) -> list[int]:
        return [unit for chunk in self._chunks for unit in chunk.units]

    def detached_units(self) -> set[int]:
        return set(self._detached)

    def probation_units(self) -> list[int]:
        return [unit for chunk in self._chunks if chunk.probation for unit in chunk.units]

    def n_sites(self, units) -> int:
        return sum(len(offsets) for unit in units for offsets in self._unit_sites.get(unit, ()))

    def plan_chunks(self) -> list[list[int]]:
        """The units in order, cut into chunks (a unit is never split) that fit in the file descriptors this
        process may open: see plan_chunks()."""
        return plan_chunks({unit: self.n_sites([unit]) for unit in self._unit_sites}, self._hot_first,
                           _fd_room(), max(1, len(self._programs)), self._chunk_sites)

    def attach(self, after_chunk: Callable[[list[int]], None] | None = None,
               probation_for: Callable[[list[int]], bool] | None = None) -> None:
        """Attach every unit, chunk by chunk, each chunk switched on once all its programs' links exist.

        after_chunk(units) runs after each chunk, given its units (a guard may detach some, or pause).
        probation_for(units), asked before each chunk (with probation_groups): whether it goes on probation.
        A unit with a site the kernel refuses (an instruction it cannot probe)
        is left out and recorded in `refused`; any other refusal raises
        (UsageError or CapabilityError) with nothing left attached.
        """
        try:
            for units in self.plan_chunks():
                units = [unit for unit in units if unit not in self._detached]
                if units:
                    self._attach_chunk(units, 1, bool(self._probation_groups and probation_for is not None
                                                      and probation_for(units)))
                if after_chunk is not None:
                    after_chunk(units)
        except BaseException:
            self.close()
            raise

    def _attach_chunk(self, units: list[int], generation: int, probation: bool = False) -> _Chunk | None:
        """Attach units as a chunk of `generation` (on probation: only the probation groups' links) and switch
        it on; units with refused sites are left out."""
        while units:
            chunk = _Chunk(units, generation, probation)
            try:
                self._link_chunk(chunk)
            except _RefusedSite as refusal:
                self._close_later(chunk)
                refused = self._find_refused(units, refusal.group, refusal.errno)
                for unit, err in refused.items():
                    self.refused[unit] = err
                units = [unit for unit in units if unit not in refused]
                continue
            except BaseException:
                _close_all(chunk.fds())
                raise
            self._set_generation(units, generation | (header.constant("GT_GEN_PROBATION") if probation else 0))
            self._chunks.append(chunk)
            return chunk
        return None

    def _groups_of(self, chunk: _Chunk) -> list[int]:
        return [group for group in range(len(self._programs))
                if not chunk.probation or group in self._probation_groups]

    def _program_fd(self, program: bytes, mode: str) -> int:
        if program not in self._prog_fds:
            attach_type = BPF_TRACE_UPROBE_MULTI if mode == "uprobe_multi" else NO_EXPECTED_ATTACH_TYPE
            self._prog_fds[program] = self._attacher.load_program(program, attach_type)
        return self._prog_fds[program]

    def _link_chunk(self, chunk: _Chunk) -> None:
        """Create the chunk's links (nothing counts through them until its generation is switched on)."""
        if self.mode is None:
            if self.requested_mode in ("auto", "uprobe_multi"):
                try:
                    self._link_multi(chunk, "uprobe_multi")
                    self.mode = "uprobe_multi"
                    return
                except _RefusedSite:
                    self.mode = "uprobe_multi"  # the kernel has the links; a site of this chunk is the problem
                    raise
                except OSError as exc:
                    _close_all(chunk.fds())
                    chunk.links, chunk.perf_events = [], []
                    if self.requested_mode == "uprobe_multi":
                        raise self._attacher.error(exc, None) from None
                    # An older kernel: one perf-event link per site, which reports a real problem precisely.
            self._prog_fds.clear()
            kernel.ensure_open_files(
                2 * self._total_sites + _SPARE_FDS,
                f"{self._total_sites} probe sites need a perf event and a BPF link each on this kernel "
                "(uprobe_multi needs Linux 6.6+)",
            )
            self.mode = "perf_link"
        if self.mode == "uprobe_multi":
            try:
                self._link_multi(chunk, "uprobe_multi")
            except OSError as exc:
                raise self._attacher.error(exc, None) from None
        else:
            self._link_perf(chunk)

    def _group_sites(self, units: list[int], group: int, generation: int) -> tuple[list[int], list[int]]:
        offsets, cookies = [], []
        for unit in units:
            for file_offset in self._unit_sites[unit][group]:
                offsets.append(file_offset)
                cookies.append(generation << 32 | unit)
        return offsets, cookies

    def _link_multi(self, chunk: _Chunk, mode: str, groups: Sequence[int] | None = None) -> None:
        sys = self._attacher.sys
        for group in self._groups_of(chunk) if groups is None else groups:
            program = self._programs[group]
            offsets, cookies = self._group_sites(chunk.units, group, chunk.generation)
            if not offsets:
                continue
            prog_fd = self._program_fd(program, mode)
            try:
                chunk.links.append(sys.link_create_uprobe_multi(prog_fd, self._attacher.path, offsets, cookies,
                                                                self._attacher.pid or 0))
            except OSError as exc:
                if exc.errno in REFUSED_SITE_ERRNOS:
                    raise _RefusedSite(group, exc.errno) from None
                raise

    def _link_perf(self, chunk: _Chunk, groups: Sequence[int] | None = None) -> None:
        sys = self._attacher.sys
        pmu_type = kernel.uprobe_pmu_type()
        pid = -1 if self._attacher.pid is None else self._attacher.pid
        for group in self._groups_of(chunk) if groups is None else groups:
            program = self._programs[group]
            offsets, cookies = self._group_sites(chunk.units, group, chunk.generation)
            if not offsets:
                continue
            prog_fd = self._program_fd(program, "perf_link")
            for file_offset, cookie in zip(offsets, cookies):
                try:
                    perf_fd = sys.perf_uprobe_open(pmu_type, self._attacher.path, file_offset, pid)
                except OSError as exc:
                    if exc.errno in REFUSED_SITE_ERRNOS:
                        raise _RefusedSite(group, exc.errno) from None
                    raise self._attacher.error(exc, (file_offset, cookie & 0xFFFFFFFF)) from None
                chunk.perf_events.append(perf_fd)
                unit_fds = chunk.unit_fds.setdefault(cookie & 0xFFFFFFFF, [])
                unit_fds.append(perf_fd)
                try:
                    chunk.links.append(sys.link_create_perf(prog_fd, perf_fd, cookie))
                    unit_fds.append(chunk.links[-1])
                except OSError as exc:
                    raise CapabilityError(
                        f"cannot link the BPF program to a uprobe ({os.strerror(exc.errno)}): "
                        "gotrace needs Linux 5.15+ (BPF cookies)") from None

    def _find_refused(self, units: list[int], group: int, err: int) -> dict[int, int]:
        """The units among `units` (refused together with errno err) whose sites in `group` the kernel
        refuses, found by bisection: unit -> errno."""
        if len(units) == 1:
            return {units[0]: err}
        refused: dict[int, int] = {}
        half = len(units) // 2
        for part in (units[:half], units[half:]):
            part_err = self._refusal_of(part, group)
            if part_err is not None:
                refused.update(self._find_refused(part, group, part_err))
        return refused

    def _refusal_of(self, units: list[int], group: int) -> int | None:
        """The errno with which the kernel refuses these units' sites in `group` (a trial link, closed), or None."""
        probe = _Chunk(units, _GENERATION_LIMIT)  # a generation that never counts
        sys = self._attacher.sys
        offsets, cookies = self._group_sites(units, group, probe.generation)
        try:
            if self.mode == "uprobe_multi":
                probe.links.append(sys.link_create_uprobe_multi(
                    self._program_fd(self._programs[group], self.mode), self._attacher.path, offsets, cookies,
                    self._attacher.pid or 0))
            else:
                pid = -1 if self._attacher.pid is None else self._attacher.pid
                for file_offset in offsets:
                    probe.perf_events.append(sys.perf_uprobe_open(kernel.uprobe_pmu_type(), self._attacher.path,
                                                                  file_offset, pid))
        except OSError as exc:
            return exc.errno if exc.errno in REFUSED_SITE_ERRNOS else None
        finally:
            self._close_later(probe)
        return None

    def detach(self, units) -> None:
        """Detach units for real: nothing counts for them at once; with uprobe_multi links, the other units of
        their chunks get new links before this returns; the old links (with perf-event links, the units' own)
        close in the background (removing a link's traps is quick, the kernel's grace period after it is not
        waited for here; close() waits)."""
        order = {unit: i for i, unit in enumerate(dict.fromkeys(units))}  # the first given goes first
        units = set(order) - self._detached
        if not units:
            return
        self._detached |= units
        self._set_generation(sorted(units), header.constant("GT_GEN_DETACHED"))
        if self.mode == "perf_link":  # one link per site: close the leaving units' own
            for chunk in self._chunks:
                if not units.isdisjoint(chunk.units):
                    self._close_later(chunk.take_units(units))
            self._chunks = [chunk for chunk in self._chunks if chunk.units]
            return
        affected = [chunk for chunk in self._chunks if not units.isdisjoint(chunk.units)]
        self._chunks = [chunk for chunk in self._chunks if units.isdisjoint(chunk.units)]
        # Chunk by chunk, each old link closed as soon as its survivors are relinked: a hot unit's traps go after
        # its own chunk's relinking, not after every chunk's. The chunks that have no survivors go first (closing
        # them is quick), then the others; within each, the chunk of the first unit given first.
        affected.sort(key=lambda chunk: (not set(chunk.units) <= units,
                                         min(order[unit] for unit in chunk.units if unit in units)))
        closed = 0
        try:
            for chunk in affected:
                survivors = [unit for unit in chunk.units if unit not in units]
                if survivors:
                    self._attach_chunk(survivors, _next_generation(chunk.generation), chunk.probation)
                self._close_later(chunk)
                closed += 1
        finally:
            for chunk in affected[closed:]:
                self._close_later(chunk)

    def promote(self, units) -> None:
        """Give units on probation all their links, and time their calls. A chunk whose units all go gets the
        links it lacks, then is switched on; otherwise new links for them (and new probation links for the
        chunk's others), switched on, then the old ones closed."""
        units = set(units) - self._detached
        affected = [chunk for chunk in self._chunks if chunk.probation and not units.isdisjoint(chunk.units)]
        for chunk in affected:
            if set(chunk.units) <= units and self._complete(chunk):
                continue
            promoted = [unit for unit in chunk.units if unit in units]
            generation = _next_generation(chunk.generation)
            if self.mode == "perf_link":  # one link per site: the promoted units' own go
                old = chunk.take_units(set(promoted))
                if not chunk.units:
                    self._chunks.remove(chunk)
                try:
                    self._attach_chunk(promoted, generation)
                finally:
                    self._close_later(old)
                continue
            self._chunks.remove(chunk)
            try:
                self._attach_chunk(promoted, generation)
                rest = [unit for unit in chunk.units if unit not in units]
                if rest:
                    self._attach_chunk(rest, generation, probation=True)
            finally:
                self._close_later(chunk)

    def _complete(self, chunk: _Chunk) -> bool:
        """Link the groups a chunk on probation lacks and switch it on as a whole chunk; False (nothing changed)
        when the kernel refuses one of the new sites."""
        extra = _Chunk(list(chunk.units), chunk.generation)
        lacking = [group for group in range(len(self._programs)) if group not in self._probation_groups]
        try:
            if self.mode == "perf_link":
                self._link_perf(extra, lacking)
            else:
                self._link_multi(extra, "uprobe_multi", lacking)
        except _RefusedSite:
            self._close_later(extra)
            return False
        except OSError as exc:
            _close_all(extra.fds())
            raise self._attacher.error(exc, None) from None
        except BaseException:
            _close_all(extra.fds())
            raise
        chunk.links += extra.links
        chunk.perf_events += extra.perf_events
        for unit, fds in extra.unit_fds.items():
            chunk.unit_fds.setdefault(unit, []).extend(fds)
        chunk.probation = False
        self._set_generation(chunk.units, chunk.generation)
        return True

    def _executor(self):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_CLOSE_THREADS)
        return self._pool

    def _close_later(self, chunk: _Chunk) -> None:
        """Close a chunk's links (one that never counted, or no longer counts) without waiting for them."""
        fds = chunk.fds()
        if fds:
            self._executor().submit(_close_all, fds)

    def close(self, *, wait: bool | None = None, first_units: Sequence[int] = ()) -> None:
        """Detach every site (links, then the perf events under them) and free the programs' fds; the chunks of
        first_units first, in that order. With uprobe_multi links, from BACKGROUND_CLOSE_MIN_LINKS links on
        (or wait=False), a helper process removes them after this returns (detach_helper_pid), at
        DETACH_CPU_SHARE of one CPU: removing 160,000 probes at once takes a busy service's CPUs and mmap lock
        for seconds, while the probes left cost it what the cost guard allowed (and nothing, on an idle one).

        Fewer uprobe_multi links go at once, here. Perf-event sites go one by one, slowly
        (see the module's docstring): wait=True detaches them before
        returning; wait=False leaves them to a detached helper process
        (`detach_helper_pid`) and returns at once; None (default) waits only
        for fewer than BACKGROUND_DETACH_MIN_SITES.
        """
        chunks, self._chunks = self._chunks, []
        rank = {unit: i for i, unit in enumerate(first_units)}
        chunks.sort(key=lambda chunk: min((rank.get(unit, len(rank)) for unit in chunk.units), default=len(rank)))
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # units the guard detached: their closes were under way
        if self.mode != "perf_link":
            links = [fd for chunk in chunks for fd in chunk.links]
            if wait is False or (wait is None and len(links) >= BACKGROUND_CLOSE_MIN_LINKS):
                try:
                    self.detach_helper_pid = _detach_in_background(
                        [(fd, -1) for fd in links], lambda: close_paced(links, DETACH_CPU_SHARE))
                except OSError:
                    pass  # no helper (no memory, no pids left): detach here
                else:
                    return
            _close_all(links)
            _close_all([fd for chunk in chunks for fd in chunk.perf_events])
            return
        pairs: list[tuple[int, int]] = []
        for chunk in chunks:  # each perf event's link was created right after it, or attaching failed
            pairs += zip(chunk.links, chunk.perf_events)
            pairs += [(-1, perf_fd) for perf_fd in chunk.perf_events[len(chunk.links):]]
        self.detach_helper_pid = detach_perf_sites(pairs, wait)


def detach_perf_sites(pairs: list[tuple[int, int]], wait: bool | None) -> int | None:
    """Close (link fd, perf event fd) pairs: here (wait True, or few sites with wait None), or in a helper process
    that holds its own references (wait False, or many sites); returns that helper's pid, or None."""
    if wait is False or (wait is None and len(pairs) >= BACKGROUND_DETACH_MIN_SITES):
        try:
            return _detach_in_background(pairs)
        except OSError:
            pass  # no helper (no memory, no pids left): detach here, slowly but surely
    close_perf_sites(pairs)
    return None


def plan_chunks(unit_sites: dict[int, int], hot_first: Sequence[int], room_links: int, n_programs: int,
                chunk_sites: int) -> list[list[int]]:
    """Cut units (unit -> its number of sites, in attach order) into chunks; a unit is never split.

    Units likely to be detached (hot_first, the likeliest first) get chunks of
    their own, so that detaching one removes its traps without registering
    any other unit's sites again. The plan must fit in room_links links (one
    per chunk and program): when it would not, the least likely of them share
    chunks of SMALL_CHUNK_SITES, or else the others' chunks (as many of the
    likeliest as fit stay alone), and as a last resort every chunk grows
    beyond chunk_sites.

    Order: the chunks of units in hot_first come first, the likeliest first;
    then the others, in the order of their first unit. On a service under
    load, registering a probe takes the process's mmap lock for writing, and a
    thread that hits a probe meanwhile waits for it (the kernel looks up a
    hit's uprobe under that lock when its lockless lookup fails): while hot
    functions' probes are attached, registering more stalls the service far
    beyond the traps' own cost. Attached first, the hottest are on (and
    detached by the cost guard) after a few thousand registrations, not after
    all of them.
    """
    hot = [unit for unit in dict.fromkeys(hot_first) if unit in unit_sites]
    max_chunks = max(1, room_links // max(1, n_programs))
    rank = {unit: i for i, unit in enumerate(hot)}

    def cut(n_solo: int, small: bool, sites: int) -> list[list[int]]:
        return _cut(unit_sites, set(hot[:n_solo]), set(hot[n_solo:]) if small else set(), sites)

    # With small chunks, the units not in hot are cut alike whatever n_solo is: counted once (sites is chunk_sites
    # whenever small is).
    hot_sites = {unit: n for unit, n in unit_sites.items() if unit in rank}  # in attach order
    not_hot = _count_chunks({unit: n for unit, n in unit_sites.items() if unit not in rank}, {}, 0, True, chunk_sites)

    def fits(n_solo: int, small: bool, sites: int) -> bool:
        if small:
            return not_hot + _count_chunks(hot_sites, rank, n_solo, True, sites) <= max_chunks
        return _count_chunks(unit_sites, rank, n_solo, small, sites) <= max_chunks

    for small in (True, False):
        if not fits(0, small, chunk_sites):
            continue
        low, high = 0, len(hot)  # the most solo units that fit: low fits; find the largest
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle, small, chunk_sites):
                low = middle
            else:
                high = middle - 1
        return _likeliest_first(cut(low, small, chunk_sites), hot)
    chunks = cut(0, False, chunk_sites)
    while len(chunks) > max_chunks and len(chunks) > 1:
        chunk_sites = math.ceil(chunk_sites * max(1.25, len(chunks) / max_chunks))
        chunks = cut(0, False, chunk_sites)
    return _likeliest_first(chunks, hot)


def _count_chunks(unit_sites: dict[int, int], rank: dict[int, int], n_solo: int, small: bool, chunk_sites: int
                  ) -> int:
    """How many chunks _cut() would make with hot[:n_solo] alone and (small) the rest of hot in small chunks (rank:
    unit -> its index in hot), without making them: plan_chunks' search counts a cut of `'*'`'s 60,000 units
    about 15 times, and building each took 0.05 s."""
    n_chunks = 0
    room = {False: -1, True: -1}  # sites still free in the open chunk of each kind; -1: none open
    for unit, n in unit_sites.items():
        at = rank.get(unit)
        is_small = small and at is not None and at >= n_solo
        limit = SMALL_CHUNK_SITES if is_small else chunk_sites
        if (at is not None and at < n_solo) or n >= limit:
            n_chunks += 1
        elif n <= room[is_small]:
            room[is_small] -= n
        else:
            n_chunks += 1
            room[is_small] = limit - n
    return n_chunks


def _likeliest_first(chunks: list[list[int]], hot: list[int]) -> list[list[int]]:
    """The chunks with a unit of hot first, by their likeliest unit, the likeliest first; then the others (in
    their order)."""
    rank = {unit: i for i, unit in enumerate(hot)}
    cold = [chunk for chunk in chunks if not any(unit in rank for unit in chunk)]
    warm = [chunk for chunk in chunks if any(unit in rank for unit in chunk)]
    warm.sort(key=lambda chunk: min(rank.get(unit, len(rank)) for unit in chunk))
    return warm + cold


def _cut(unit_sites: dict[int, int], solo: set[int], small: set[int], chunk_sites: int) -> list[list[int]]:
    """plan_chunks' cut: each solo unit alone, small ones in chunks of SMALL_CHUNK_SITES sites, the others in
    chunks of chunk_sites (a unit that has more sites than its chunks may: alone)."""
    chunks: list[list[int]] = []
    open_chunks: dict[bool, tuple[int, int]] = {}  # small? -> (index in chunks, its sites so far)
    for unit, n in unit_sites.items():
        is_small = unit in small
        limit = SMALL_CHUNK_SITES if is_small else chunk_sites
        if unit in solo or n >= limit:
            chunks.append([unit])
            continue
        at = open_chunks.get(is_small)
        if at is None or at[1] + n > limit:
            chunks.append([])
            at = (len(chunks) - 1, 0)
        chunks[at[0]].append(unit)
        open_chunks[is_small] = (at[0], at[1] + n)
    return chunks


def _fd_room() -> int:
    """File descriptors this process may still open, beyond _FD_RESERVE (its soft limit raised to the hard one)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    return max(0, soft - open_now - _FD_RESERVE)


class _RefusedSite(Exception):
    """The kernel refused a site of a chunk's group (an instruction it cannot probe)."""

    def __init__(self, group: int, err: int) -> None:
        super().__init__(group, err)
        self.group = group
        self.errno = err
