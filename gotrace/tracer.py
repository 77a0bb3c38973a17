"""Loads probes/latency.bpf.c, attaches it at a Go binary's entry and return sites, and reads the per-function histograms.

The BPF side (probes/latency.bpf.c, constants and layouts in probes/gotrace.h)
pairs each call's entry and `ret` by goroutine and aggregates latencies into
log-linear buckets in the kernel; this module only configures, attaches and
reads it.

Attaching does not go through bcc's attach_uprobe: bcc 0.26 cannot give a
uprobe a BPF cookie, and the cookie (the function id) is how the two programs
learn which function a hit belongs to, correctly for PIE binaries and for
every process running the binary, whose runtime addresses differ. Two ways,
both by file offset, neither touching tracefs, both undone by closing file
descriptors (so nothing is left behind even if this process dies):

* Linux 6.6+: one uprobe_multi BPF link per program (BPF_LINK_CREATE with
  BPF_TRACE_UPROBE_MULTI), all sites and cookies in one system call.
* Linux 5.15-6.5: one perf event of the kernel's `uprobe` PMU per site, each
  linked with BPF_LINK_CREATE(BPF_PERF_EVENT) carrying the cookie. Each close
  waits for an RCU grace period, so they are closed from many threads at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gotrace import probes_header
from gotrace.errors import CapabilityError, UsageError

SOURCE_PATH = probes_header.PROBES_DIR / "latency.bpf.c"

_ARCH_IDS = {"amd64": "GT_ARCH_AMD64", "arm64": "GT_ARCH_ARM64"}

# Linux ABI numbers (uapi/linux/bpf.h, perf_event.h, asm/unistd.h).
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_LINK_CREATE = 28
_BPF_PERF_EVENT = 41  # enum bpf_attach_type
_BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type, Linux 6.6+
_CLOSE_THREADS = 64

_STAT_NAMES = {
    "GT_STAT_NO_GOROUTINE": "no_goroutine",
    "GT_STAT_READ_FAULT": "read_faults",
    "GT_STAT_STALE_STARTS": "stale_starts",
    "GT_STAT_RETURNS_WITHOUT_ENTRY": "returns_without_entry",
    "GT_STAT_START_UPDATE_FAILED": "start_update_failed",
    "GT_STAT_HIST_FULL": "histogram_full",
}


@dataclass(frozen=True)
class TracedFunction:
    """One function to trace: its id in the BPF maps and its probe sites as ELF vaddrs."""

    func_id: int  # 0..n-1
    name: str
    entry_vaddr: int  # ELF vaddr of the post-prologue entry site
    return_vaddrs: tuple[int, ...]  # ELF vaddrs of every ret


@dataclass
class FunctionCounts:
    """One function's calls since the last reset."""

    buckets: dict[int, int]  # bucket index (probes/gotrace.h scheme) -> count
    unmatched: int  # entered, never seen returning (panic unwinds, evicted, still open at final report)


def _const(name: str) -> int:
    return probes_header.constant(name)


def file_offsets(binary_path: str, vaddrs: Sequence[int]) -> list[int]:
    """The file offset of each ELF vaddr (uprobes are placed by file offset, also for PIE)."""
    from gotrace.elffile import ElfImage

    image = ElfImage(binary_path)
    try:
        return [image.vaddr_to_file_offset(vaddr) for vaddr in vaddrs]
    finally:
        image.close()


class _Syscalls:
    """The two raw system calls bcc 0.26 does not wrap the way we need: perf_event_open and bpf()."""

    def __init__(self) -> None:
        machine = os.uname().machine
        if machine not in _SYS_BPF:
            raise CapabilityError(f"gotrace supports x86_64 and aarch64 machines, not {machine}")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._nr_perf = _SYS_PERF_EVENT_OPEN[machine]
        self._nr_bpf = _SYS_BPF[machine]

    def perf_uprobe_open(self, pmu_type: int, path: bytes, file_offset: int, pid: int) -> int:
        """A perf event for a uprobe at `file_offset` of `path`; pid -1 means every process."""
        path_buf = ctypes.create_string_buffer(path)
        attr = bytearray(_PERF_ATTR_SIZE)
        struct.pack_into("<IIQQ", attr, 0, pmu_type, _PERF_ATTR_SIZE, 0, 1)  # type, size, config, sample_period
        struct.pack_into("<I", attr, 48, 1)  # wakeup_events
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(path_buf), file_offset)  # config1=uprobe_path, config2=probe_offset
        attr_buf = ctypes.create_string_buffer(bytes(attr), _PERF_ATTR_SIZE)
        # perf_event_open refuses pid == cpu == -1; uprobe events do not filter by cpu.
        cpu = 0 if pid == -1 else -1
        fd = self._libc.syscall(self._nr_perf, attr_buf, pid, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "perf_event_open(uprobe)")
        return fd

    def link_create_perf(self, prog_fd: int, perf_fd: int, cookie: int) -> int:
        """BPF_LINK_CREATE: runs prog_fd on the perf event, with bpf_get_attach_cookie() == cookie."""
        attr = ctypes.create_string_buffer(struct.pack("<IIIIQ", prog_fd, perf_fd, _BPF_PERF_EVENT, 0, cookie), 64)
        fd = self._libc.syscall(self._nr_bpf, _BPF_LINK_CREATE, attr, 64)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_LINK_CREATE)")
        return fd

    def link_create_uprobe_multi(
        self, prog_fd: int, path: bytes, file_offsets: Sequence[int], cookies: Sequence[int], pid: int
    ) -> int:
        """BPF_LINK_CREATE(BPF_TRACE_UPROBE_MULTI): prog_fd at every offset of path, each with its cookie; pid 0: all."""
        count = len(file_offsets)
        path_buf = ctypes.create_string_buffer(path)
        offsets_buf = (ctypes.c_uint64 * count)(*file_offsets)
        cookies_buf = (ctypes.c_uint64 * count)(*cookies)
        attr = ctypes.create_string_buffer(
            struct.pack(
                "<IIIIQQQQIII",
                prog_fd,
                0,  # target_fd
                _BPF_TRACE_UPROBE_MULTI,
                0,  # flags
                ctypes.addressof(path_buf),
                ctypes.addressof(offsets_buf),
                0,  # ref_ctr_offsets
                ctypes.addressof(cookies_buf),
                count,
                0,  # uprobe_multi.flags: entry probes (never BPF_F_UPROBE_MULTI_RETURN)
                pid,
            ),
            128,
        )
        fd = self._libc.syscall(self._nr_bpf, _BPF_LINK_CREATE, attr, 128)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_LINK_CREATE uprobe_multi)")
        return fd

    def map_lookup_batch(self, map_fd: int, key_size: int, value_size: int, max_entries: int) -> tuple[bytes, bytes, int]:
        """Every (key, value) of a map with BPF_MAP_LOOKUP_BATCH: (keys, values, count) as raw bytes."""
        chunk = min(max_entries, 16384)
        keys = ctypes.create_string_buffer(key_size * chunk)
        values = ctypes.create_string_buffer(value_size * chunk)
        in_batch = ctypes.c_uint64(0)
        out_batch = ctypes.c_uint64(0)
        key_parts: list[bytes] = []
        value_parts: list[bytes] = []
        total = 0
        first = True
        while True:
            attr = ctypes.create_string_buffer(
                struct.pack(
                    "<QQQQIIQQ",
                    0 if first else ctypes.addressof(in_batch),
                    ctypes.addressof(out_batch),
                    ctypes.addressof(keys),
                    ctypes.addressof(values),
                    chunk,  # count (in: room, out: filled)
                    map_fd,
                    0,  # elem_flags
                    0,  # flags
                ),
                64,
            )
            ret = self._libc.syscall(self._nr_bpf, _BPF_MAP_LOOKUP_BATCH, attr, 64)
            err = ctypes.get_errno() if ret < 0 else 0
            if ret < 0 and err != errno.ENOENT:
                raise OSError(err, "bpf(BPF_MAP_LOOKUP_BATCH)")
            count = struct.unpack_from("<I", attr.raw, 32)[0]
            key_parts.append(keys.raw[: key_size * count])
            value_parts.append(values.raw[: value_size * count])
            total += count
            if err == errno.ENOENT:  # no more elements
                break
            in_batch.value = out_batch.value
            first = False
        return b"".join(key_parts), b"".join(value_parts), total


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _validated_int(label: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{label} must be an integer in {low}..{high}, not {value!r}")
    return value


class LatencyTracer:
    """Per-goroutine latency histograms of the given functions of one Go binary.

    Use as a context manager, or call attach() and close(). pid None traces
    every process running the binary, now or started later.
    """

    def __init__(
        self,
        binary_path: str,
        functions: Sequence[TracedFunction],
        *,
        pid: int | None,
        goid_offset: int,
        stack_hi_offset: int = 8,
        arch: str = "amd64",
    ) -> None:
        if arch not in _ARCH_IDS:
            raise UsageError(f"unsupported architecture {arch!r}: gotrace traces amd64 and arm64 binaries")
        max_funcs = _const("GT_MAX_FUNCS")
        if not functions:
            raise UsageError("no functions to trace")
        if len(functions) > max_funcs:
            raise UsageError(f"{len(functions)} functions match; gotrace traces at most {max_funcs} at once: narrow the pattern")
        for index, fn in enumerate(functions):
            if fn.func_id != index:
                raise UsageError(f"function ids must be 0..n-1 in order; {fn.name} has id {fn.func_id} at position {index}")
            if not fn.return_vaddrs:
                raise UsageError(f"{fn.name} has no return instruction to probe: it cannot be traced for latency")
        self.binary_path = str(binary_path)
        self.functions = tuple(functions)
        self.pid = None if pid is None else _validated_int("pid", pid, 1, 2**22)
        self.arch = arch
        self._nfuncs = len(self.functions)
        self._hist_entries = min(
            _const("GT_HIST_MAX_ENTRIES"),
            max(_const("GT_HIST_MIN_ENTRIES"), self._nfuncs * _const("GT_HIST_ENTRIES_PER_FUNC")),
        )
        self._cflags = {
            "GT_CFG_ARCH": _const(_ARCH_IDS[arch]),
            "GT_CFG_GOID_OFFSET": _validated_int("goid_offset", goid_offset, 0, 4096),
            "GT_CFG_STACK_HI_OFFSET": _validated_int("stack_hi_offset", stack_hi_offset, 0, 4096),
            "GT_CFG_NFUNCS": self._nfuncs,
            "GT_CFG_TARGET_TGID": self.pid or 0,
            "GT_CFG_HIST_ENTRIES": self._hist_entries,
        }
        self._bpf = None
        self._fds: list[int] = []  # link and perf event fds; closing them detaches
        self._hist_base: dict[int, int] = {}  # (bucket << 32 | func_id) -> cumulative count at last reset
        self._fc_base: list[int] = [0] * (self._nfuncs * _const("GT_FC_N"))
        self._gen = 0
        # Seconds spent in each phase of attach(): prepare, bpf_compile, attach.
        self.timings_s: dict[str, float] = {}
        # "auto": uprobe_multi links when the kernel has them, else one perf-event link per site.
        self.attach_mode = "auto"

    # -- life cycle -----------------------------------------------------

    def __enter__(self) -> LatencyTracer:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def bpf_source(self) -> str:
        """The C text as compiled: the -D configuration as #defines, then probes/latency.bpf.c."""
        lines = ["/* configuration passed to the compiler as -D flags */"]
        lines += [f"#define {name} {value}" for name, value in self._cflags.items()]
        return "\n".join(lines) + "\n\n" + SOURCE_PATH.read_text()

    def attach(self) -> None:
        """Compile the BPF program and attach it at every entry and return site."""
        if self._bpf is not None:
            return
        from gotrace import kernelenv

        started = time.perf_counter()
        kernelenv.check_can_trace()
        self._pmu_type = kernelenv.uprobe_pmu_type()
        entry_offsets = file_offsets(self.binary_path, [fn.entry_vaddr for fn in self.functions])
        return_offsets = file_offsets(self.binary_path, [site for fn in self.functions for site in fn.return_vaddrs])
        self._entry_sites = list(zip(entry_offsets, (fn.func_id for fn in self.functions)))
        return_ids = [fn.func_id for fn in self.functions for _ in fn.return_vaddrs]
        self._return_sites = list(zip(return_offsets, return_ids))
        self._sys = _Syscalls()
        compile_started = time.perf_counter()
        self.timings_s["prepare"] = compile_started - started
        self._bpf = self._compile()
        attach_started = time.perf_counter()
        self.timings_s["bpf_compile"] = attach_started - compile_started
        try:
            from bcc.utils import get_possible_cpus

            self._ncpus = len(get_possible_cpus())
            if self.attach_mode in ("auto", "uprobe_multi"):
                try:
                    self._attach_uprobe_multi()
                    self.attach_mode = "uprobe_multi"
                    return
                except OSError as exc:
                    if self.attach_mode == "uprobe_multi":
                        raise self._attach_error(exc, None) from None
                    # An older kernel; the per-site path below reports any real problem precisely.
            self._attach_perf_links()
            self.attach_mode = "perf_link"
        except BaseException:
            self.close()
            raise
        finally:
            self.timings_s["attach"] = time.perf_counter() - attach_started

    def _load(self, name: bytes, attach_type: int):
        """Load (or reload with another expected attach type) one program of the compiled module."""
        stale = self._bpf.funcs.pop(name, None)
        if stale is not None:
            os.close(stale.fd)
        try:
            return self._bpf.load_func(name, self._bpf.KPROBE, attach_type=attach_type).fd
        except Exception as exc:  # bcc raises bare Exception
            raise CapabilityError(f"the kernel refused the BPF program ({exc}): gotrace needs Linux 5.15+ with BPF") from None

    def _attach_uprobe_multi(self) -> None:
        pid = self.pid or 0
        path = os.fsencode(self.binary_path)
        for prog, sites in ((b"gt_entry", self._entry_sites), (b"gt_return", self._return_sites)):
            prog_fd = self._load(prog, _BPF_TRACE_UPROBE_MULTI)
            offsets, cookies = zip(*sites)
            self._fds.append(self._sys.link_create_uprobe_multi(prog_fd, path, offsets, cookies, pid))

    def _attach_perf_links(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        path = os.fsencode(self.binary_path)
        pid = -1 if self.pid is None else self.pid
        for prog, sites in ((b"gt_entry", self._entry_sites), (b"gt_return", self._return_sites)):
            prog_fd = self._load(prog, -1)
            for file_offset, func_id in sites:
                try:
                    perf_fd = self._sys.perf_uprobe_open(self._pmu_type, path, file_offset, pid)
                except OSError as exc:
                    raise self._attach_error(exc, (func_id, file_offset)) from None
                self._fds.append(perf_fd)
                try:
                    self._fds.append(self._sys.link_create_perf(prog_fd, perf_fd, func_id))
                except OSError as exc:
                    raise CapabilityError(
                        f"cannot link the BPF program to a uprobe ({os.strerror(exc.errno)}): gotrace needs Linux 5.15+ (BPF cookies)"
                    ) from None

    def _attach_error(self, exc: OSError, site: tuple[int, int] | None) -> Exception:
        if exc.errno == errno.ESRCH:
            return UsageError(f"no process with pid {self.pid}")
        if exc.errno in (errno.EPERM, errno.EACCES):
            return CapabilityError("the kernel refused to create a uprobe: run as root (sudo)")
        where = self.binary_path
        if site is not None:
            where = f"{self.functions[site[0]].name} at file offset {site[1]:#x} of {self.binary_path}"
        return CapabilityError(f"cannot attach a uprobe to {where}: {os.strerror(exc.errno)}")

    def _compile(self):  # -> bcc.BPF
        import bcc

        cflags = [f"-I{probes_header.PROBES_DIR}"] + [f"-D{name}={value}" for name, value in self._cflags.items()]
        try:
            return bcc.BPF(src_file=os.fsencode(SOURCE_PATH), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception; clang's messages went to stderr
            raise CapabilityError(
                f"bcc could not compile the BPF program ({exc}): check the kernel headers (run scripts/kernel-headers)"
            ) from None

    def close(self) -> None:
        """Detach every probe and free the BPF programs and maps. Safe to call twice."""
        fds, self._fds = self._fds, []
        if len(fds) > 8:
            # Each perf-event uprobe release waits for a grace period: overlap them.
            from concurrent.futures import ThreadPoolExecutor

            links, perf_events = fds[1::2], fds[0::2]  # perf_link mode appends (perf, link) pairs
            with ThreadPoolExecutor(_CLOSE_THREADS) as pool:
                list(pool.map(_close_quietly, links))
            with ThreadPoolExecutor(_CLOSE_THREADS) as pool:
                list(pool.map(_close_quietly, perf_events))
        else:
            for fd in reversed(fds):
                _close_quietly(fd)
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            # Nothing was attached through bcc, so its cleanup touches no tracefs.
            bpf.cleanup()

    # -- reading --------------------------------------------------------

    def _require_attached(self):
        if self._bpf is None:
            raise RuntimeError("LatencyTracer.attach() was not called (or close() was)")
        return self._bpf

    def _percpu_sums(self, table, key_size: int, value_size: int, max_entries: int) -> tuple[bytes, list[int]]:
        """Keys (raw) and per-key sums over all CPUs of a per-CPU map of u64 values."""
        ncpus = self._ncpus
        keys, values, count = self._sys.map_lookup_batch(table.map_fd, key_size, value_size * ncpus, max_entries)
        flat = memoryview(values).cast("Q")
        if ncpus == 1:
            return keys, flat.tolist()
        return keys, list(map(sum, zip(*(flat[cpu::ncpus] for cpu in range(ncpus)))))

    def read(self, *, reset: bool) -> dict[int, FunctionCounts]:
        """Counts per func_id since the last reset (all functions, zero-call ones included).

        The kernel's counters are cumulative; a reset moves this tracer's baseline
        and starts a new report generation, so no call is lost between reads.
        """
        bpf = self._require_attached()
        if reset:
            # New generation first: returns of calls entered from now on count toward the next report.
            self._gen += 1
            gen_table = bpf[b"gt_gen"]
            gen_table[ctypes.c_int(0)] = ctypes.c_uint32(self._gen & 0xFFFFFFFF)
        fc_n = _const("GT_FC_N")
        _, fc_sums = self._percpu_sums(bpf[b"gt_func_counts"], 4, 8, self._nfuncs * fc_n)
        hist_keys, hist_sums = self._percpu_sums(bpf[b"gt_hist"], 8, 8, self._hist_entries)
        result = {fn.func_id: FunctionCounts(buckets={}, unmatched=0) for fn in self.functions}
        hist_now: dict[int, int] = {}
        for packed, total in zip(memoryview(hist_keys).cast("Q"), hist_sums):
            hist_now[packed] = total
            delta = total - self._hist_base.get(packed, 0)
            if delta > 0:
                func_id, bucket = packed & 0xFFFFFFFF, packed >> 32
                if func_id in result:
                    result[func_id].buckets[bucket] = delta
        i_entries, i_returns = _const("GT_FC_ENTRIES"), _const("GT_FC_RETURNS_SAME_GEN")
        for func_id, counts in result.items():
            base = func_id * fc_n
            entries = fc_sums[base + i_entries] - self._fc_base[base + i_entries]
            returns = fc_sums[base + i_returns] - self._fc_base[base + i_returns]
            counts.unmatched = max(0, entries - returns)
        if reset:
            self._hist_base = hist_now
            self._fc_base = fc_sums
        return result

    def stats(self) -> dict[str, int]:
        """Whole-run counters of the BPF side.

        LRU evictions of start times are not visible to BPF; an evicted call
        shows as a return without entry (and as unmatched for its function).
        """
        bpf = self._require_attached()
        table = bpf[b"gt_stats"]
        totals = {}
        for const_name, name in _STAT_NAMES.items():
            totals[name] = int(sum(table[ctypes.c_int(_const(const_name))]))
        return totals
