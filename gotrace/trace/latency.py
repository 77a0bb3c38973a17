"""Loads probes/latency.bpf.c, attaches it at a Go binary's entry and return sites, and reads the per-function histograms.

The BPF side (probes/latency.bpf.c, constants and layouts in probes/gotrace.h)
pairs each call's entry and `ret` by goroutine and aggregates latencies into
log-linear buckets in the kernel; this module only configures, attaches and
reads it. The compiled program comes from gotrace.bpf.cache (compiled with bcc,
in a short-lived child process, only when no earlier run left it there); this
process never imports bcc, and reads the maps through raw bpf() calls on their
fds.

Attaching (uprobe_multi links, or perf-event links on older kernels, each site
with its function id as BPF cookie) is gotrace.bpf.uprobes' job.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gotrace.bpf import compiler as bpfprog
from gotrace import header as probes_header
from gotrace.bpf import uprobes
from gotrace.bpf.syscalls import Syscalls, percpu_value_size, possible_cpus
from gotrace.errors import UsageError

if TYPE_CHECKING:
    from gotrace.bpf import cache as bpfcache

SOURCE_PATH = probes_header.PROBES_DIR / "latency.bpf.c"
_PROGRAMS = (b"gt_entry", b"gt_return")


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
        arch_id = bpfprog.arch_constant(arch)
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
        self.pid = None if pid is None else bpfprog.validated_int("pid", pid, 1, 2**22)
        self.arch = arch
        self._nfuncs = len(self.functions)
        self._hist_entries = min(
            _const("GT_HIST_MAX_ENTRIES"),
            max(_const("GT_HIST_MIN_ENTRIES"), self._nfuncs * _const("GT_HIST_ENTRIES_PER_FUNC")),
        )
        self._cflags = {
            "GT_CFG_ARCH": arch_id,
            "GT_CFG_GOID_OFFSET": bpfprog.validated_int("goid_offset", goid_offset, 0, 4096),
            "GT_CFG_STACK_HI_OFFSET": bpfprog.validated_int("stack_hi_offset", stack_hi_offset, 0, 4096),
            "GT_CFG_NFUNCS": self._nfuncs,
            "GT_CFG_HIST_ENTRIES": self._hist_entries,
        }
        self._loaded: bpfcache.LoadedImage | None = None  # maps and programs in the kernel
        self._uprobes: uprobes.UprobeSet | None = None  # closing it detaches
        self._hist_base: dict[int, int] = {}  # (bucket << 32 | func_id) -> cumulative count at last reset
        self._fc_base: list[int] = [0] * (self._nfuncs * _const("GT_FC_N"))
        self._gen = 0
        # Seconds spent in each phase of attach(): prepare, bpf_compile, attach.
        self.timings_s: dict[str, float] = {}
        # "auto": uprobe_multi links when the kernel has them, else one perf-event link per site.
        self.attach_mode = "auto"
        # Whether attach() found the compiled program in gotrace.bpf.cache (and never imported bcc).
        self.bpf_cache_hit: bool | None = None
        # On a miss, the peak RSS (kB, VmHWM) of the short-lived child process that compiled it; None on a hit.
        self.bpf_compiler_peak_rss_kb: int | None = None

    # -- life cycle -----------------------------------------------------

    def __enter__(self) -> LatencyTracer:
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def bpf_source(self) -> str:
        """The C text as compiled: the -D configuration as #defines, then probes/latency.bpf.c."""
        return bpfprog.source_text(SOURCE_PATH, self._cflags)

    def attach(self) -> None:
        """Load the BPF program (from gotrace.bpf.cache, else compiled) and attach it at every entry and return site."""
        if self._loaded is not None:
            return
        from gotrace.bpf import cache as bpfcache
        from gotrace.bpf import kernel as kernelenv

        started = time.perf_counter()
        kernelenv.check_can_trace()
        headers_dir = kernelenv.use_kernel_headers()
        entry_offsets = uprobes.file_offsets(self.binary_path, [fn.entry_vaddr for fn in self.functions])
        return_offsets = uprobes.file_offsets(self.binary_path, [site for fn in self.functions for site in fn.return_vaddrs])
        entry_sites = list(zip(entry_offsets, (fn.func_id for fn in self.functions)))
        return_ids = [fn.func_id for fn in self.functions for _ in fn.return_vaddrs]
        return_sites = list(zip(return_offsets, return_ids))
        self._sys = Syscalls()
        self._ncpus = possible_cpus()
        compile_started = time.perf_counter()
        self.timings_s["prepare"] = compile_started - started
        found = bpfcache.compiled(SOURCE_PATH, self._cflags, _PROGRAMS, headers_dir)
        image, self.bpf_cache_hit = found.image, found.cache_hit
        self.bpf_compiler_peak_rss_kb = found.compiler_peak_rss_kb
        attach_started = time.perf_counter()
        self.timings_s["bpf_compile"] = attach_started - compile_started
        try:
            self._loaded = image.instantiate(self._sys)
            self._sys.map_update_elem(self._loaded.map_fd("gt_target"), struct.pack("<I", 0),
                                      struct.pack("<I", self.pid or 0))
            self._uprobes = uprobes.attach_sites(
                self.binary_path,
                ((b"gt_entry", entry_sites), (b"gt_return", return_sites)),
                pid=self.pid,
                load_program=self._loaded.load_program,
                mode=self.attach_mode,
                site_name=lambda func_id: self.functions[func_id].name,
            )
            self.attach_mode = self._uprobes.mode
        except BaseException:
            self.close()
            raise
        finally:
            self.timings_s["attach"] = time.perf_counter() - attach_started

    def close(self) -> None:
        """Detach every probe and free the BPF programs and maps. Safe to call twice."""
        attached, self._uprobes = self._uprobes, None
        if attached is not None:
            attached.close()
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.close()

    # -- reading --------------------------------------------------------

    def _require_attached(self) -> bpfcache.LoadedImage:
        if self._loaded is None:
            raise RuntimeError("LatencyTracer.attach() was not called (or close() was)")
        return self._loaded

    def _percpu_sums(self, map_name: str, key_size: int, value_size: int, max_entries: int) -> tuple[bytes, list[int]]:
        """Keys (raw) and per-key sums over all CPUs of a per-CPU map of u64 values."""
        ncpus = self._ncpus
        map_fd = self._require_attached().map_fd(map_name)
        keys, values, count = self._sys.map_lookup_batch(map_fd, key_size, percpu_value_size(value_size, ncpus), max_entries)
        flat = memoryview(values).cast("Q")
        if ncpus == 1:
            return keys, flat.tolist()
        return keys, list(map(sum, zip(*(flat[cpu::ncpus] for cpu in range(ncpus)))))

    def read(self, *, reset: bool) -> dict[int, FunctionCounts]:
        """Counts per func_id since the last reset (all functions, zero-call ones included).

        The kernel's counters are cumulative; a reset moves this tracer's baseline
        and starts a new report generation, so no call is lost between reads.
        """
        loaded = self._require_attached()
        if reset:
            # New generation first: returns of calls entered from now on count toward the next report.
            self._gen += 1
            self._sys.map_update_elem(loaded.map_fd("gt_gen"), struct.pack("<I", 0), struct.pack("<I", self._gen & 0xFFFFFFFF))
        fc_n = _const("GT_FC_N")
        _, fc_sums = self._percpu_sums("gt_func_counts", 4, 8, self._nfuncs * fc_n)
        hist_keys, hist_sums = self._percpu_sums("gt_hist", 8, 8, self._hist_entries)
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
        keys, sums = self._percpu_sums("gt_stats", 4, 8, _const("GT_STAT_N"))
        by_index = dict(zip(memoryview(keys).cast("I"), sums))
        return {name: by_index.get(_const(const_name), 0) for const_name, name in _STAT_NAMES.items()}
