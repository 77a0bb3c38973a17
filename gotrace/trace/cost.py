"""What one probe hit costs the traced process on this machine, measured by a self-test and cached per host and kernel.

A uprobe hit is a trap: the traced thread enters the kernel, the BPF program
runs, and the probed instruction is either emulated by the kernel (x86
`push`) or single-stepped out of line (a second trap: every other
instruction, `ret` included). On a VM a hit costs 1-15 us; on bare metal
well under that. The traced thread pays it in its own CPU time.

The self-test measures exactly that, with the tracer's own compiled
programs: it maps a few bytes of machine code from a file (a loop calling
four copies of a function `push rbp; mov rbp, rsp; pop rbp; ret`), attaches
the programs to the copies (the entry program on a `push`, the entry
program on a `mov`, entry and return programs on a `push` and its `ret`,
nothing on the fourth), and times each copy by this thread's CPU time
(CLOCK_THREAD_CPUTIME_ID: time the thread is descheduled does not count).
R14 points at a fake goroutine, so the programs take their full path.
Per hit: (probed - unprobed) / calls, the median of interleaved rounds.

The figures are cached as JSON in CALIBRATION_DIR (env
GOTRACE_CALIBRATION_DIR), keyed by program, kernel build and CPU model.
GOTRACE_HIT_COST_NS=N sets every figure by hand (machines where the
self-test cannot run: arm64, or a cache directory mounted noexec).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gotrace.bpf import cache, uprobes
from gotrace.bpf.syscalls import Syscalls
from gotrace.errors import GotraceError

CALIBRATION_DIR = Path("/var/cache/gotrace/calibration")
FORMAT_VERSION = 1
ROUNDS = 7
CALLS_PER_ROUND = 3000
# Used when the self-test cannot run and GOTRACE_HIT_COST_NS is unset: a slow VM's figure (this
# project's 2-CPU VM measured 1.0 us for an emulated entry, 11-12 us for a stepped one or a `ret`).
ASSUMED_HIT_NS = 12_000

# Site kinds: what the kernel does with the probed instruction.
PUSH = "push"   # emulated by the kernel on x86 (one trap)
STEP = "step"   # executed out of line (a second trap)
RET = "ret"     # a return site: `ret`, executed out of line


@dataclass(frozen=True)
class HitCosts:
    """CPU time one hit costs the traced thread, in ns, by program side and site kind."""

    entry_push_ns: float
    entry_step_ns: float
    return_ns: float
    how: str  # "calibrated", "cached" (calibrated earlier), "GOTRACE_HIT_COST_NS" or "assumed"

    def entry_ns(self, kind: str) -> float:
        return self.entry_push_ns if kind == PUSH else self.entry_step_ns

    def text(self, returns: bool = True) -> str:
        """e.g. "a probe hit costs 1.0us at an entry on a push, 11.4us on other instructions, 11.6us at a return
        (calibrated)"; without the return when `returns` is False (an entry-only program)."""
        ret = f", {self.return_ns / 1000:.1f}us at a return" if returns else ""
        return (f"a probe hit costs {self.entry_push_ns / 1000:.1f}us at an entry on a push, "
                f"{self.entry_step_ns / 1000:.1f}us on other instructions{ret} ({self.how})")


def site_kind(arch: str, code: bytes) -> str:
    """The kind of a site whose instruction starts with `code`."""
    if arch == "amd64" and code:
        if code[0] == 0xC3:
            return RET
        if 0x50 <= code[0] <= 0x57 or (len(code) > 1 and code[0] == 0x41 and 0x50 <= code[1] <= 0x57):
            return PUSH
    return STEP


def site_kinds(binary_path: str, arch: str, file_offsets: Sequence[int]) -> list[str]:
    """site_kind() of each site, read from the binary's file."""
    with open(binary_path, "rb") as file:
        return [site_kind(arch, os.pread(file.fileno(), 2, offset)) for offset in file_offsets]


# -- the self-test's machine code (amd64) ------------------------------------------
# loop(n: rdi, fake_g: rsi, fn: rdx): r14 = fake_g; call fn n times (fn keeps rdi, rdx).
_LOOP = bytes([
    0x41, 0x56,              # push r14
    0x49, 0x89, 0xF6,        # mov r14, rsi
    0x48, 0x85, 0xFF,        # test rdi, rdi
    0x74, 0x07,              # jz done
    0xFF, 0xD2,              # L: call rdx
    0x48, 0xFF, 0xCF,        # dec rdi
    0x75, 0xF9,              # jnz L
    0x41, 0x5E,              # done: pop r14
    0xC3,                    # ret
])
_FUNC = bytes([0x55, 0x48, 0x89, 0xE5, 0x5D, 0xC3])  # push rbp; mov rbp, rsp; pop rbp; ret
_FUNC_AT = (32, 48, 64, 80)  # four copies: entry on push, entry on mov, entry+return, none
_MOV_AT, _RET_AT = 1, 5      # offsets inside _FUNC
_PAGE = 4096


def _code_image() -> bytes:
    image = bytearray(b"\xcc" * _PAGE)
    image[: len(_LOOP)] = _LOOP
    for at in _FUNC_AT:
        image[at: at + len(_FUNC)] = _FUNC
    return bytes(image)


def calibration_dir() -> Path:
    return Path(os.environ.get("GOTRACE_CALIBRATION_DIR") or CALIBRATION_DIR)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cache_key(tracer) -> str:
    uname = os.uname()
    sources = [path.read_text() for path in sorted(tracer.source_path.parent.glob("*.[ch]"))]
    text = "\n".join([f"gotrace-hit-cost {FORMAT_VERSION}", tracer.PROGRAM, *sources,
                      uname.release, uname.version, uname.machine, _cpu_model(), str(os.cpu_count())])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def hit_costs(tracer) -> HitCosts:
    """The hit costs of tracer's programs here: GOTRACE_HIT_COST_NS, else cached, else measured now (and cached)."""
    forced = os.environ.get("GOTRACE_HIT_COST_NS")
    if forced:
        try:
            ns = float(forced)
        except ValueError:
            ns = -1
        if not 0 < ns < 1e9:
            from gotrace.errors import UsageError

            raise UsageError(f"GOTRACE_HIT_COST_NS must be a number of nanoseconds, not {forced!r}")
        return HitCosts(ns, ns, ns, "GOTRACE_HIT_COST_NS")
    if tracer.arch != "amd64" or os.uname().machine != "x86_64":
        return HitCosts(ASSUMED_HIT_NS, ASSUMED_HIT_NS, ASSUMED_HIT_NS, "assumed")
    path = calibration_dir() / f"{cache_key(tracer)}.json"
    try:
        cached = json.loads(path.read_text())
        return HitCosts(float(cached["entry_push_ns"]), float(cached["entry_step_ns"]), float(cached["return_ns"]),
                        "cached")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        costs = calibrate(tracer)
    except (OSError, GotraceError):
        return HitCosts(ASSUMED_HIT_NS, ASSUMED_HIT_NS, ASSUMED_HIT_NS, "assumed")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps({**asdict(costs), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "rounds": ROUNDS, "calls_per_round": CALLS_PER_ROUND}))
        os.replace(temp, path)
    except OSError:
        pass
    return costs


def calibrate(tracer, rounds: int = ROUNDS, calls: int = CALLS_PER_ROUND) -> HitCosts:
    """Measure tracer's programs' hit costs in this process (amd64; about 0.5 s on a slow VM)."""
    directory = calibration_dir()
    directory.mkdir(parents=True, exist_ok=True)
    code_path = directory / "probe-self-test.bin"
    image = _code_image()
    if not code_path.exists() or code_path.read_bytes() != image:
        temp = code_path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_bytes(image)
        os.replace(temp, code_path)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(code_path, os.O_RDONLY)
    try:
        base = libc.mmap(None, _PAGE, mmap.PROT_READ | mmap.PROT_EXEC, mmap.MAP_PRIVATE, fd, 0)
    finally:
        os.close(fd)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), f"cannot map {code_path} executable (noexec mount?)")
    try:
        return _measure(tracer, str(code_path), base, rounds, calls)
    finally:
        libc.munmap(base, _PAGE)


def _measure(tracer, code_path: str, base: int, rounds: int, calls: int) -> HitCosts:
    loop = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p)(base)
    config = tracer.config
    fake_g = ctypes.create_string_buffer(_PAGE)
    struct.pack_into("<Q", fake_g, config["goid_offset"], 1)
    struct.pack_into("<Q", fake_g, config["stack_hi_offset"], 0x7FFF_FFFF_F000)
    push_at, mov_at, pair_at, none_at = _FUNC_AT
    entry, ret = tracer.ENTRY_PROGRAM, tracer.RETURN_PROGRAM
    groups = [(entry, [(push_at, 0), (mov_at + _MOV_AT, 0)] + ([(pair_at, 0)] if ret else []))]
    if ret:
        groups.append((ret, [(pair_at + _RET_AT, 0)]))

    def cpu_ns(at: int) -> int:
        began = time.thread_time_ns()
        loop(calls, ctypes.addressof(fake_g), base + at)
        return time.thread_time_ns() - began

    sys = Syscalls()
    # One function (id 0, generation 0: gt_active's initial value), in this process.
    loaded = cache.find_program(tracer.PROGRAM, tracer.arch).image.instantiate(sys)
    try:
        settings = {**config, "target_tgid": os.getpid(), "nfuncs": 1}
        sys.map_update_elem(loaded.map_fd("gt_config"), struct.pack("<I", 0), tracer.config_bytes(settings))
        samples: dict[int, list[float]] = {at: [] for at in _FUNC_AT}
        with uprobes.attach_sites(code_path, groups, pid=os.getpid(), load_program=loaded.load_program):
            cpu_ns(none_at)  # warm up
            for _ in range(rounds):
                unprobed = cpu_ns(none_at)
                for at in (push_at, mov_at, pair_at):
                    samples[at].append((cpu_ns(at) - unprobed) / calls)
    finally:
        loaded.close()
    push = max(0.0, statistics.median(samples[push_at]))
    step = max(0.0, statistics.median(samples[mov_at]))
    pair = max(0.0, statistics.median(samples[pair_at])) if ret else push
    return HitCosts(push, step, max(0.0, pair - push), "calibrated")
