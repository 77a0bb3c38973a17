"""One life-cycle for every tracing program: validate, configure, load, attach, read, close.

A tracer is a BPF program pair in probes/ (an entry program and a return
program), or an entry program alone, put on the entry (and return) sites of
some functions of one Go binary. This base class does everything the
programs share:

* validate: at least one function, at most GT_MAX_FUNCS, ids 0..n-1, each
  with a return site when there is a return program;
* configure: nothing is compiled in. The settings every program reads (the
  process to trace, the number of functions, runtime.g offsets) go in its
  gt_config map; the maps sized by the number of functions get their size
  when they are created (map_sizes); the subclass fills its own maps;
* load: the object the package ships for this architecture (or one compiled
  here with clang when there is none, or when this kernel's verifier refuses
  the shipped one), through gotrace.bpf.cache; loaded with raw bpf();
* attach: the programs go on their sites (uprobe_multi links, or perf-event
  links before Linux 6.6), each site's BPF cookie naming its function. A
  program with the cost guard's checks (DETACHABLE: probes/guard.h) is
  attached in chunks, each switched on whole, return probes with entry
  probes (so no call looks entered-but-lost because of attach order);
  detach() then removes some functions' probes for real (the cost guard),
  and a function whose site the kernel refuses is left out (`refused`)
  instead of failing all;
* read: per-CPU counter maps summed here; the rest is the subclass's;
* close: detach, then free programs and maps.

Like cilium/ebpf's executable -> link, closing is detaching. Attach mode is a
setting (`mode`, "auto" by default); how the probes were attached is a result
(`attached_by`).
"""

from __future__ import annotations

import array
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gotrace import header
from gotrace.binary.gobinary import FunctionProbes, GoBinary
from gotrace.bpf import cache, compiler, kernel, uprobes
from gotrace.bpf.image import LoadedImage, ProgramRejected
from gotrace.bpf.syscalls import Syscalls, percpu_value_size, possible_cpus
from gotrace.errors import CapabilityError, UsageError

MAX_PID = 2**22  # PID_MAX_LIMIT on 64-bit Linux
MAX_G_OFFSET = 4096  # bytes into runtime.g; the real offsets are below 200
CONFIG_STRUCT = struct.Struct("<IIIIQIIII")  # struct gt_config of probes/gotrace.h


@dataclass(frozen=True)
class TracedFunction:
    """One function to trace: its id in the BPF maps (the sites' cookie) and its probe sites.

    Sites are ELF vaddrs (what `gotrace funcs` shows) and file offsets (where
    the kernel places a uprobe), in the same order.
    """

    func_id: int  # 0..n-1
    name: str
    entry_vaddr: int  # the post-prologue entry site
    return_vaddrs: tuple[int, ...]  # every `ret`
    entry_file_offset: int
    return_file_offsets: tuple[int, ...]

    @classmethod
    def of(cls, func_id: int, probes: FunctionProbes, gobin: GoBinary) -> TracedFunction:
        """The traced form of one function's probe sites in gobin."""
        sites = probes.sites
        return cls(func_id, probes.function.name, sites.entry_vaddr, tuple(sites.return_vaddrs),
                   gobin.file_offset(sites.entry_vaddr), tuple(gobin.file_offsets(sites.return_vaddrs)))


def traced_functions(gobin: GoBinary, probes: Sequence[FunctionProbes]) -> list[TracedFunction]:
    """TracedFunctions for probes, numbered in order."""
    return [TracedFunction.of(func_id, p, gobin) for func_id, p in enumerate(probes)]


def validated_functions(functions: Sequence[TracedFunction], *, need_returns: bool = True
                        ) -> tuple[TracedFunction, ...]:
    """functions, checked: 1..GT_MAX_FUNCS of them, ids 0..n-1 in order, each with a return site if need_returns."""
    max_funcs = header.constant("GT_MAX_FUNCS")
    if not functions:
        raise UsageError("no functions to trace")
    if len(functions) > max_funcs:
        raise UsageError(f"{len(functions)} functions match; gotrace traces at most {max_funcs} at once: "
                         "narrow the pattern")
    for index, fn in enumerate(functions):
        if fn.func_id != index:
            raise UsageError(f"function ids must be 0..n-1 in order; {fn.name} has id {fn.func_id} at position {index}")
        if len(fn.return_vaddrs) != len(fn.return_file_offsets):
            raise UsageError(f"{fn.name}: {len(fn.return_vaddrs)} return sites but {len(fn.return_file_offsets)} "
                             "file offsets")
        if need_returns and not fn.return_vaddrs:
            raise UsageError(f"{fn.name} has no return instruction to probe: its calls never complete")
    return tuple(functions)


class Tracer:
    """The programs of probes/<PROGRAM>.bpf.c attached at the entry and return sites of `functions` in one Go binary.

    Use as a context manager, or call attach() and close(). pid None traces
    every process running the binary, now or started later.
    """

    PROGRAM: ClassVar[str]  # probes/<PROGRAM>.bpf.c
    ENTRY_PROGRAM: ClassVar[bytes]
    RETURN_PROGRAM: ClassVar[bytes | None]  # None: entry probes only
    DETACHABLE: ClassVar[bool] = False  # the programs check gt_active (probes/guard.h)

    def __init__(self, gobin: GoBinary, functions: Sequence[TracedFunction], *, pid: int | None,
                 mode: str = "auto") -> None:
        self.functions = validated_functions(functions, need_returns=self.RETURN_PROGRAM is not None)
        self.binary_path = str(gobin.path)
        self.pid = None if pid is None else compiler.validated_int("pid", pid, 1, MAX_PID)
        if mode not in uprobes.MODES:
            raise UsageError(f"attach mode must be one of {', '.join(uprobes.MODES)}, not {mode!r}")
        self.mode = mode
        self.arch = compiler.validated_arch(gobin.arch)
        offsets = gobin.runtime_offsets
        # struct gt_config of probes/gotrace.h, in its field order.
        self.config = {
            "target_tgid": self.pid or 0,
            "nfuncs": len(self.functions),
            "goid_offset": compiler.validated_int("goid_offset", offsets.goid, 0, MAX_G_OFFSET),
            "stack_hi_offset": compiler.validated_int("stack_hi_offset", offsets.stack_hi, 0, MAX_G_OFFSET),
            # latency's stack build only (LatencyTracer sets them)
            "slow_ns": 0,
            "slow_rate": 0,
            "stack_depth": 0,
            "by": 0,
            "start_slot_mask": 0,  # latency only (LatencyTracer sets it)
        }
        self._sys = Syscalls()
        self._ncpus = possible_cpus()
        self._loaded: LoadedImage | None = None  # maps and programs in the kernel
        self._uprobes: uprobes.UprobeSet | uprobes.DetachableSites | None = None  # closing it detaches
        self.refused: dict[int, int] = {}  # func_id -> errno: a site the kernel would not probe (left out)
        # DETACHABLE: ns one hit costs, per function's entry and for a return (probes/guard.h gt_hit_cost);
        # set by the cost guard before attach()
        self.hit_cost_ns: tuple[list[float], float] | None = None
        # ... and per hit of the probe that is no traced function's (fixed_site_offsets(); GT_COST_FIXED_*)
        self.fixed_hit_cost_ns: float | None = None
        self.after_chunk = None  # DETACHABLE: called with each chunk's func_ids once attached (the cost guard's)
        self.hot_first: list[int] = []  # DETACHABLE: ids likely to be detached, the likeliest first (the guard's)
        # DETACHABLE with a return program: asked before each chunk is attached, whether its functions go on
        # probation (entry probes only, their hits counted, nothing timed; promote() ends it). The guard's.
        self.probation_for = None
        self._func_counts: memoryview | None = None  # DETACHABLE: gt_func_counts, shared with the kernel
        self.attached_by: str | None = None  # "uprobe_multi" or "perf_link", once attached
        self.timings_s: dict[str, float] = {}  # seconds per phase of attach(): prepare, bpf_compile, attach
        self.bpf_origin: str | None = None  # where the programs came from: "shipped", "cached" or "compiled"
        self.bpf_compiler_peak_rss_kb: int | None = None  # clang's peak RSS when attach() had to compile

    @property
    def bpf_cache_hit(self) -> bool | None:
        """Whether attach() loaded programs compiled before this run (shipped or cached), None before attach()."""
        return None if self.bpf_origin is None else self.bpf_origin != "compiled"

    # -- what a program adds -------------------------------------------------

    def map_sizes(self) -> dict[str, int]:
        """max_entries of this program's maps whose size depends on the run (by map name); a DETACHABLE
        program's guard maps (probes/guard.h) are sized here, the subclass adds its own."""
        if not self.DETACHABLE:
            return {}
        n = len(self.functions)
        return {"gt_func_counts": n * header.constant("GT_FC_N"), "gt_active": n, "gt_hit_cost": n + 2}

    def setup_maps(self, loaded: LoadedImage) -> None:
        """Fill this program's own maps after loading, before attaching."""

    def site_groups(self) -> list[tuple[bytes, list[tuple[int, int]]]]:
        """(program, [(file_offset, cookie)]) to attach: return sites (when there is a return program), then
        entry sites; the cookie is the func_id."""
        entries = [(fn.entry_file_offset, fn.func_id) for fn in self.functions]
        if self.RETURN_PROGRAM is None:
            return [(self.ENTRY_PROGRAM, entries)]
        returns = [(offset, fn.func_id) for fn in self.functions for offset in fn.return_file_offsets]
        return [(self.RETURN_PROGRAM, returns), (self.ENTRY_PROGRAM, entries)]

    def opened(self, loaded: LoadedImage) -> None:
        """Called once the probes are attached (a reader may open here)."""

    def detaching(self) -> None:
        """Called first when the probes are detached (the subclass removes its own probes here)."""

    def closing(self) -> None:
        """Called after the probes are detached, before the maps are freed."""

    # -- life cycle ------------------------------------------------------------

    @staticmethod
    def config_bytes(config: dict[str, int]) -> bytes:
        """struct gt_config of probes/gotrace.h holding config (the fields of Tracer.config, in order)."""
        fields = ("target_tgid", "nfuncs", "goid_offset", "stack_hi_offset", "slow_ns", "slow_rate", "stack_depth",
                  "by", "start_slot_mask")
        return CONFIG_STRUCT.pack(*(config.get(name, 0) for name in fields))

    @property
    def source_path(self) -> Path:
        return cache.source_path(self.PROGRAM)

    def bpf_source(self) -> str:
        """The program's C text, after a comment giving this run's gt_config values and map sizes."""
        settings = " ".join(f"{name}={value}" for name, value in self.config.items())
        sizes = " ".join(f"{name}={value}" for name, value in self.map_sizes().items())
        defines = " ".join(f"-D{name}={value}" for name, value in compiler.BUILDS[self.PROGRAM][1].items())
        build = f" (object {self.PROGRAM}: {defines})" if defines else ""
        return (f"/* {self.source_path.name}{build} for {self.arch}; gt_config[0]: {settings}"
                + (f"; max_entries: {sizes}" if sizes else "") + " */\n" + self.source_path.read_text())

    @property
    def n_sites(self) -> int:
        """Sites of the traced functions (those the kernel refused a site of not counted)."""
        returns = self.RETURN_PROGRAM is not None
        return sum(1 + (len(fn.return_vaddrs) if returns else 0) for fn in self.functions
                   if fn.func_id not in self.refused)

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def attach(self) -> None:
        """Load the programs (cached, else compiled) and attach them at every site."""
        if self._loaded is not None:
            return
        started = time.perf_counter()
        machine_arch = compiler.host_arch()
        if self.arch != machine_arch:
            raise UsageError(f"{self.binary_path} is an {self.arch} binary and this machine is "
                             f"{machine_arch or os.uname().machine}: trace it on an {self.arch} machine")
        kernel.check_can_trace()
        compile_started = time.perf_counter()
        self.timings_s["prepare"] = compile_started - started
        found = cache.find_program(self.PROGRAM, self.arch)
        attach_started = time.perf_counter()
        self.timings_s["bpf_compile"] = attach_started - compile_started
        try:
            try:
                self._load_and_attach(found)
            except ProgramRejected as rejected:
                if found.origin != "shipped":
                    raise
                self.close()
                # This kernel's verifier refused the shipped object: a local clang's code may pass.
                try:
                    found = cache.find_program(self.PROGRAM, self.arch, use_shipped=False)
                except CapabilityError as exc:
                    raise CapabilityError(f"{rejected}; compiling the program here instead failed: {exc}") from None
                self._load_and_attach(found)
        except BaseException:
            self.close()
            raise
        finally:
            self.timings_s["attach"] = time.perf_counter() - attach_started

    def _load_and_attach(self, found: cache.Found) -> None:
        self.bpf_origin, self.bpf_compiler_peak_rss_kb = found.origin, found.compiler_peak_rss_kb
        self._loaded = found.image.instantiate(self._sys, self.map_sizes())
        self._sys.map_update_elem(self._loaded.map_fd("gt_config"), struct.pack("<I", 0),
                                  self.config_bytes(self.config))
        self.setup_maps(self._loaded)
        site_name = lambda cookie: self.functions[cookie & 0xFFFFFFFF].name  # noqa: E731  (the low half: a function id)
        if self.DETACHABLE:
            self._func_counts = self._loaded.map_memory("gt_func_counts")
            if self.hit_cost_ns is not None:
                entry_ns, return_ns = self.hit_cost_ns
                cost = self._loaded.map_memory("gt_hit_cost")
                cost[: len(entry_ns)] = memoryview(array.array("Q", (round(ns) for ns in entry_ns)))
                cost[len(self.functions)] = round(return_ns)
                cost[len(self.functions) + 1] = round(self.fixed_hit_cost_ns or 0)
                del cost
            groups = self.site_groups()
            self._uprobes = uprobes.DetachableSites(
                self.binary_path, groups, pid=self.pid, load_program=self._loaded.load_program,
                set_generation=self._set_generation, mode=self.mode, site_name=site_name, hot_first=self.hot_first,
                probation_groups=self._probation_groups(groups))
            self._uprobes.attach(after_chunk=lambda units: self.after_chunk and self.after_chunk(units),
                                 probation_for=self.probation_for)
            self.refused = dict(self._uprobes.refused)
        else:
            self._uprobes = uprobes.attach_sites(
                self.binary_path, self.site_groups(), pid=self.pid, load_program=self._loaded.load_program,
                mode=self.mode, site_name=site_name)
        self.attached_by = self._uprobes.mode
        self.opened(self._loaded)

    def _set_generation(self, func_ids: Sequence[int], generation: int) -> None:
        """gt_active[func_id] = generation: which of a function's links count (probes/gotrace.h)."""
        map_fd = self.loaded().map_fd("gt_active")
        keys = array.array("I", func_ids)
        self._sys.map_update_batch(map_fd, keys.tobytes(), struct.pack("<I", generation) * len(keys), len(keys))

    def detach(self, func_ids) -> None:
        """Remove the probes of these functions for real (DETACHABLE programs): their traps stop, the first
        given first; the others keep counting, none of their calls lost or counted twice."""
        if not isinstance(self._uprobes, uprobes.DetachableSites):
            raise RuntimeError(f"{type(self).__name__} cannot detach single functions")
        func_ids = list(dict.fromkeys(func_ids))  # in the caller's order: the costliest first
        self._uprobes.detach(func_ids)
        self.detached(set(func_ids))

    def _probation_groups(self, groups: list[tuple[bytes, list]]) -> list[int]:
        """Of site_groups(), those linked while a function is on probation: its entry's, when it has returns."""
        if self.RETURN_PROGRAM is None:
            return []
        return [index for index, (program, _) in enumerate(groups) if program == self.ENTRY_PROGRAM]

    def promote(self, func_ids) -> None:
        """End these functions' probation: attach their return probes, and time their calls from now on."""
        if isinstance(self._uprobes, uprobes.DetachableSites):
            self._uprobes.promote(func_ids)

    def probation_ids(self) -> list[int]:
        return self._uprobes.probation_units() if isinstance(self._uprobes, uprobes.DetachableSites) else []

    def called_on_probation(self) -> set[int]:
        """Ids of the functions on probation that have been called (their entry hits are counted; none timed)."""
        ids = self.probation_ids()
        if not ids or self._func_counts is None:
            return set()
        n, entries = header.constant("GT_FC_N"), header.constant("GT_FC_ENTRIES")
        return {func_id for func_id in ids if self._func_counts[func_id * n + entries]}

    def upkeep(self) -> None:
        """Housekeeping a program's maps need now and then while tracing (called from the cost guard's thread)."""

    def detached(self, func_ids: set[int]) -> None:
        """Called after functions were detached (their leftovers in the maps may go)."""

    def detached_ids(self) -> set[int]:
        return self._uprobes.detached_units() if isinstance(self._uprobes, uprobes.DetachableSites) else set()

    def hits(self) -> tuple[list[int], list[int]]:
        """(entry probe hits, return probe hits) per func_id so far, cumulative (DETACHABLE programs): each hit is
        a trap the traced process paid for."""
        n = header.constant("GT_FC_N")
        counts = self.func_counts()
        return counts[header.constant("GT_FC_ENTRIES")::n], counts[header.constant("GT_FC_RETURNS")::n]

    def func_counts(self) -> list[int]:
        """gt_func_counts now (DETACHABLE programs): func_id * GT_FC_N + GT_FC_*, cumulative; read from memory
        shared with the kernel, no system call."""
        if self._func_counts is None:
            raise RuntimeError(f"{type(self).__name__}.attach() was not called (or close() was)")
        return self._func_counts.tolist()

    def hit_counts_bytes(self) -> bytes:
        """A copy of gt_func_counts now (DETACHABLE programs): u64 counters, func_id * GT_FC_N + GT_FC_*,
        cumulative; one copy of memory shared with the kernel (about 0.2 ms for 60,000 functions)."""
        if self._func_counts is None:
            raise RuntimeError(f"{type(self).__name__}.attach() was not called (or close() was)")
        return bytes(self._func_counts)

    def fixed_site_offsets(self) -> list[int]:
        """File offsets of the probes this tracer attaches that are no traced function's (they count their hits
        in GT_COST_FIXED_*, and no guard can detach them): none here."""
        return []

    def cost_totals(self) -> tuple[int, int, int, int]:
        """(hits, their cost in ns per gt_hit_cost) of all probes so far, then the same of the fixed probes
        alone (fixed_site_offsets(), included in the first two), cumulative (DETACHABLE programs)."""
        totals = self.counters("gt_cost", {"GT_COST_HITS": "hits", "GT_COST_NS": "cost_ns",
                                           "GT_COST_FIXED_HITS": "fixed_hits", "GT_COST_FIXED_NS": "fixed_ns"})
        return (totals["hits"] + totals["fixed_hits"], totals["cost_ns"] + totals["fixed_ns"], totals["fixed_hits"],
                totals["fixed_ns"])

    def close(self) -> None:
        """Detach every probe and free the BPF programs and maps. Safe to call twice.

        The subclass's own probes go first, then the functions' chunks, those of the most hit functions first:
        removing a probe takes the traced process's mmap lock, and a hit meanwhile waits for it."""
        self.detaching()
        hottest = self._hottest_first()
        self._func_counts = None
        attached, self._uprobes = self._uprobes, None
        if isinstance(attached, uprobes.DetachableSites):
            attached.close(first_units=hottest)
        elif attached is not None:
            attached.close()
        self.closing()
        loaded, self._loaded = self._loaded, None
        if loaded is not None:
            loaded.close()

    def _hottest_first(self) -> list[int]:
        """Ids of the functions hit so far (DETACHABLE programs), the most hit first."""
        if self._func_counts is None:
            return []
        n, entries = header.constant("GT_FC_N"), header.constant("GT_FC_ENTRIES")
        hits = self._func_counts[entries::n].tolist()  # u64 words
        return sorted((func_id for func_id, count in enumerate(hits) if count), key=lambda func_id: -hits[func_id])

    # -- reading ---------------------------------------------------------------

    def loaded(self) -> LoadedImage:
        if self._loaded is None:
            raise RuntimeError(f"{type(self).__name__}.attach() was not called (or close() was)")
        return self._loaded

    def percpu_sums(self, map_name: str, key_size: int, max_entries: int) -> tuple[bytes, list[int]]:
        """Keys (raw) and per-key sums over all CPUs of a per-CPU map of u64 values."""
        ncpus = self._ncpus
        map_fd = self.loaded().map_fd(map_name)
        keys, values, _ = self._sys.map_lookup_batch(map_fd, key_size, percpu_value_size(8, ncpus), max_entries)
        flat = memoryview(values).cast("Q")
        if ncpus == 1:
            return keys, flat.tolist()
        return keys, list(map(sum, zip(*(flat[cpu::ncpus] for cpu in range(ncpus)))))

    def counters(self, map_name: str, names: dict[str, str]) -> dict[str, int]:
        """A per-CPU array of counters summed over CPUs, by name: names maps GT_* index constant -> name."""
        n = 1 + max(header.constant(const) for const in names)
        keys, sums = self.percpu_sums(map_name, 4, n)
        by_index = dict(zip(memoryview(keys).cast("I"), sums))
        return {name: by_index.get(header.constant(const), 0) for const, name in names.items()}
