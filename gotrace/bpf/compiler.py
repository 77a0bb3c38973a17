"""Compiles probes/<program>.bpf.c into a BPF object file for one architecture with clang: when the package is built, and at run time only when no usable object was shipped.

Plain `clang -target bpfel`, no kernel headers (`-nostdinc`): the programs
restate the little kernel ABI they use (probes/bpf_abi.h), so the object is
the same whatever machine builds it, and one object per architecture (the
layout of pt_regs, the one compile-time setting, GT_CFG_ARCH) loads on every
kernel with the helpers and map types it uses. `-mcpu=v3` (Linux 5.1+
instructions; the atomic fetch-and-add and compare-and-swap of args and latency need 5.12) is
below what the programs need anyway (BPF cookies, Linux 5.15).

This module only runs clang: setup.py imports it to build the package's
objects, gotrace.bpf.cache to compile on a host that got none. Nothing about
a run (pid, offsets, sizes) is ever compiled in.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gotrace.errors import CapabilityError, UsageError

# args' capture loop bound (GT_CFG_OPS_BOUND): the verifier's work grows with it, so one object per bound
# is built and a run loads the smallest that holds its longest plan.
ARGS_OPS_BOUNDS = (16, 32, 64, 128)
SHIPPED_BUILDS: dict[str, tuple[str, dict[str, int]]] = {
    "latency": ("latency", {}),
    "count": ("count", {}),
    # latency with --slow and --by caller compiled in (probes/latency_stacks.h): plain runs load the one without
    "latency_stacks": ("latency", {"GT_CFG_STACKS": 1}),
    **{f"args{bound}": ("args", {"GT_CFG_OPS_BOUND": bound}) for bound in ARGS_OPS_BOUNDS},
}
# scripts/bench's decomposition of latency's per-call cost (probes/bench.bpf.c): compiled when the bench
# asks for them, never shipped. GT_BENCH_STAGE 1 empty, 3 g, 4 goroutine key, 5 start map, 6 latency's whole
# work, with the variants that bench.bpf.c describes.
BENCH_BUILDS: dict[str, tuple[str, dict[str, int]]] = {
    "bench_empty": ("bench", {"GT_BENCH_STAGE": 1}),
    "bench_g": ("bench", {"GT_BENCH_STAGE": 3}),
    "bench_key": ("bench", {"GT_BENCH_STAGE": 4}),
    "bench_start": ("bench", {"GT_BENCH_STAGE": 5}),
    "bench_full": ("bench", {"GT_BENCH_STAGE": 6}),
    "bench_one_read": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_ONE_READ": 1}),
    "bench_start_hash": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_START_HASH": 1}),
    "bench_hist_pair": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_HIST": 1}),
    "bench_hist_array": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_HIST": 2}),
    "bench_no_func_counts": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_NO_FUNC_COUNTS": 1}),
    "bench_start_array": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_START_ARRAY": 1}),
    "bench_no_ktime": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_NO_KTIME": 1}),
    "bench_slots": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_START_ARRAY": 2}),
    "bench_slots_pair": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_START_ARRAY": 2, "GT_BENCH_HIST": 1}),
    "bench_slots_pair_read": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_START_ARRAY": 2, "GT_BENCH_HIST": 1,
                                        "GT_BENCH_ONE_READ": 1}),
    "bench_guard": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 1}),
    "bench_guard_nocost": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 2}),
    "bench_guard_slots": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 1, "GT_BENCH_START_ARRAY": 2}),
    "bench_guard_slots_pair": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 1, "GT_BENCH_START_ARRAY": 2,
                                         "GT_BENCH_HIST": 1}),
    "bench_guard_slots_read": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 1, "GT_BENCH_START_ARRAY": 2,
                                         "GT_BENCH_ONE_READ": 1}),
    "bench_guard_slots_pair_read": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_GUARD": 1, "GT_BENCH_START_ARRAY": 2,
                                              "GT_BENCH_ONE_READ": 1, "GT_BENCH_HIST": 1}),
    "bench_noexist": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_NOEXIST": 1}),
    "bench_lean": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_NOEXIST": 1, "GT_BENCH_HIST": 1}),
    "bench_pair_hash": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_HIST": 1, "GT_BENCH_START_HASH": 1}),
    "bench_pair_hash_read": ("bench", {"GT_BENCH_STAGE": 6, "GT_BENCH_HIST": 1, "GT_BENCH_START_HASH": 1,
                                       "GT_BENCH_ONE_READ": 1}),
}
# program -> (its source, probes/<source>.bpf.c, and the -D constants of its build)
BUILDS: dict[str, tuple[str, dict[str, int]]] = {**SHIPPED_BUILDS, **BENCH_BUILDS}
PROGRAMS = tuple(SHIPPED_BUILDS)  # what the package ships and scripts/install compiles
ARCHES = ("amd64", "arm64")
ARCH_MACROS = {"amd64": "GT_ARCH_AMD64", "arm64": "GT_ARCH_ARM64"}
MACHINE_ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}
CLANG_ENV = "GOTRACE_CLANG"  # a clang to use instead of the first one on PATH
CLANG_NAMES = ("clang", "clang-20", "clang-19", "clang-18", "clang-17", "clang-16", "clang-15", "clang-14")
CFLAGS = ("-target", "bpfel", "-mcpu=v3", "-O2", "-g0", "-nostdinc", "-Wall", "-Wno-unused-function")


def validated_int(label: str, value: object, low: int, high: int) -> int:
    """`value` if it is an int (not a bool) in [low, high]; UsageError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{label} must be an integer in {low}..{high}, not {value!r}")
    return value


def validated_arch(arch: str) -> str:
    """arch if gotrace has programs for it; UsageError otherwise."""
    if arch not in ARCHES:
        raise UsageError(f"unsupported architecture {arch!r}: gotrace traces amd64 and arm64 binaries")
    return arch


def host_arch() -> str | None:
    """The Go name of this machine's architecture (amd64, arm64), None for one gotrace does not support."""
    return MACHINE_ARCHES.get(os.uname().machine)


def source_name(program: str) -> str:
    """The file in probes/ a program is built from: `args.bpf.c` for args16 ... args128."""
    return f"{BUILDS[program][0]}.bpf.c"


def args_program(longest_plan: int) -> str:
    """The args program whose loop bound holds a plan of longest_plan operations."""
    for bound in ARGS_OPS_BOUNDS:
        if longest_plan <= bound:
            return f"args{bound}"
    raise UsageError(f"a capture plan of {longest_plan} operations is longer than gotrace runs "
                     f"({ARGS_OPS_BOUNDS[-1]}): lower --depth or --max-elems")


def object_name(program: str, arch: str) -> str:
    """The file name of program's object for arch: `latency.amd64.o`."""
    return f"{program}.{arch}.o"


def find_clang() -> str | None:
    """The clang to compile with: $GOTRACE_CLANG, else the first of CLANG_NAMES on PATH; None when there is none."""
    configured = os.environ.get(CLANG_ENV)
    if configured:
        return shutil.which(configured)
    for name in CLANG_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def clang_command(clang: str, source: Path, arch: str, output: Path,
                  defines: dict[str, int] | None = None) -> list[str]:
    """The command that compiles source (with the headers of its directory) for arch into output."""
    constants = [f"-D{name}={validated_int(name, value, 0, 2**31)}" for name, value in (defines or {}).items()]
    return [clang, *CFLAGS, f"-DGT_CFG_ARCH={ARCH_MACROS[validated_arch(arch)]}", *constants,
            f"-I{Path(source).parent}", "-c", str(source), "-o", str(output)]


@dataclass(frozen=True)
class CompileResult:
    output: Path
    peak_rss_kb: int  # clang's own VmHWM, sampled every SAMPLE_S while it ran (0 if never read)


SAMPLE_S = 0.01


def compile_program(program: str, probes_dir: Path, arch: str, output: Path, clang: str | None = None) -> CompileResult:
    """Compile one of PROGRAMS from probes_dir for arch into output (see compile_object)."""
    source, defines = BUILDS[program]
    return compile_object(Path(probes_dir) / f"{source}.bpf.c", arch, output, clang, defines)


def compile_object(source: Path, arch: str, output: Path, clang: str | None = None,
                   defines: dict[str, int] | None = None) -> CompileResult:
    """Compile source for arch into output with clang; CapabilityError (one line, clang's first error) on failure.

    clang's peak RSS is its VmHWM read from /proc while it runs (the last
    reading at most SAMPLE_S before it exits), not wait4's ru_maxrss: a child
    started with vfork (as subprocess does) carries its parent's high-water
    mark across exec, so ru_maxrss would report gotrace's own peak whenever
    that is the larger.
    """
    clang = clang or find_clang()
    if clang is None:
        raise CapabilityError("no clang to compile the BPF programs with: apt-get install clang")
    command = clang_command(clang, source, arch, output, defines)
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as exc:
        raise CapabilityError(f"cannot run {clang} ({exc.strerror}): apt-get install clang") from None
    peak_rss_kb = 0
    with proc:
        while True:
            peak_rss_kb = max(peak_rss_kb, _vm_hwm_kb(proc.pid))
            try:
                _, stderr = proc.communicate(timeout=SAMPLE_S)
                break
            except subprocess.TimeoutExpired:
                continue
    if proc.returncode != 0:
        raise CapabilityError(f"{clang} could not compile {Path(source).name} for {arch} "
                              f"({_why(proc.returncode, stderr.decode('utf-8', 'replace'))})")
    return CompileResult(Path(output), peak_rss_kb)


def _vm_hwm_kb(pid: int) -> int:
    """VmHWM of process pid in kB; 0 when it cannot be read (not started yet, or exited)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _why(returncode: int, stderr: str) -> str:
    """How clang failed: the signal that killed it, else its first error line, else its last line or status."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {-returncode}, {name}; out of memory?"
    for line in stderr.splitlines():
        if "error:" in line or "fatal" in line.lower():
            return " ".join(line.split())[:200]
    lines = stderr.strip().splitlines()
    return " ".join(lines[-1].split())[:200] if lines else f"exit status {returncode}"
