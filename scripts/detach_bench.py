"""Where the time goes when gotrace detaches its uprobes, per kernel: one run measures this host's kernel and VM kernels.

For each kernel (this host's, and each of --kernels booted by scripts/vmtest),
probes are attached at the first --sites entry and return sites of the
runtime.* functions of testdata/service, in a running (idle) copy of it, with
a trivial BPF program (gotrace's own program would change nothing measured
here). Then each way of detaching is timed on a fresh attach:

* perf_link (one perf event + one BPF link per site, what Linux before 6.6
  offers): closing every BPF link; PERF_EVENT_IOC_DISABLE on every perf event;
  closing the perf events one by one (sampled: which kernel functions the
  closing thread waits in); the same from 64 threads; the same with
  /sys/kernel/rcu_expedited=1 (restored afterwards); and gotrace's own
  UprobeSet.close(), with the time until the probes are really gone.
* uprobe_multi (Linux 6.6+): closing the one link that holds every site.

"Probes gone" is read from the target's memory: while a uprobe is registered
on an instruction, the process's copy of the page holds an int3 (0xcc) there.

Usage: sudo scripts/detach-bench [--sites N] [--kernels host,6.1,6.12] [--json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gotrace.binary.elffile import ElfImage  # noqa: E402
from gotrace.binary.gobinary import GoBinary  # noqa: E402
from gotrace.bpf import kernel  # noqa: E402
from gotrace.bpf import uprobes  # noqa: E402
from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI, Syscalls  # noqa: E402

GO_VERSION = "1.23.9"
PERF_EVENT_IOC_DISABLE = 0x2401
RCU_EXPEDITED = Path("/sys/kernel/rcu_expedited")
BPF_MAP_TYPE_ARRAY = 2


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def counting_program(map_fd: int) -> bytes:
    """Adds 1 to element 0 of an array map each time it runs (so a test can tell whether it still runs)."""
    return b"".join([
        insn(0x62, dst=10, off=-4, imm=0),          # *(u32 *)(r10 - 4) = 0
        insn(0xBF, dst=2, src=10),                  # r2 = r10
        insn(0x07, dst=2, imm=-4),                  # r2 += -4
        insn(0x18, dst=1, src=1, imm=map_fd),       # r1 = map (ld_imm64, BPF_PSEUDO_MAP_FD)
        insn(0x00),
        insn(0x85, imm=1),                          # call bpf_map_lookup_elem
        insn(0x15, dst=0, off=2, imm=0),            # if r0 == 0 goto out
        insn(0xB7, dst=1, imm=1),                   # r1 = 1
        insn(0xDB, dst=0, src=1, off=0, imm=0),     # lock *(u64 *)(r0 + 0) += r1
        insn(0xB7, dst=0, imm=0),                   # out: r0 = 0
        insn(0x95),                                 # exit
    ])


def service_binary() -> Path:
    from support import gobuild

    return gobuild.build("service", GO_VERSION, "default")


def probe_sites(binary: Path, count: int, patterns: tuple[str, ...] = ("runtime.*",)) -> list[tuple[int, int]]:
    """(vaddr, file_offset) of the first `count` entry and return sites of the functions matching `patterns`."""
    vaddrs: list[int] = []
    with GoBinary(binary) as gobin:
        for fn in gobin.match(list(patterns)):
            probes = gobin.probe_sites(fn)
            if probes.traceable:
                vaddrs += [probes.sites.entry_vaddr, *probes.sites.return_vaddrs]
            if len(vaddrs) >= count:
                break
    vaddrs = vaddrs[:count]
    image = ElfImage(str(binary))
    try:
        return [(v, image.vaddr_to_file_offset(v)) for v in vaddrs]
    finally:
        image.close()


class Target:
    """A private copy of the service, started and waiting (idle: no probe is ever hit), or busy (-forever)."""

    def __init__(self, binary: Path, directory: Path, busy: bool = False) -> None:
        self.path = directory / ("service-busy" if busy else "service")
        shutil.copy2(binary, self.path)
        argv = [str(self.path), "-forever"] if busy else [str(self.path), "-wait"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL if busy else subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        if not busy:
            line = self.proc.stdout.readline()
            if not line.startswith("ready pid="):
                raise RuntimeError(f"the service did not start: {line!r}")

    def int3_count(self, vaddrs: list[int]) -> int:
        """How many of `vaddrs` hold an int3 in the process's memory now."""
        n = 0
        with open(f"/proc/{self.proc.pid}/mem", "rb") as mem:
            for vaddr in vaddrs:
                mem.seek(vaddr)
                n += mem.read(1) == b"\xcc"
        return n

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class StackSampler:
    """Samples one thread's kernel stack (/proc/self/task/TID/stack) every few ms while active."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.samples: collections.Counter[str] = collections.Counter()
        self._tid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StackSampler:
        self._tid = threading.get_native_id()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        path = f"/proc/self/task/{self._tid}/stack"
        while not self._stop.is_set():
            try:
                with open(path) as f:
                    frames = [line.split()[1].split("+")[0] for line in f if len(line.split()) > 1]
            except OSError:
                frames = []
            if frames:
                self.samples[" < ".join(frames[:5])] += 1
            time.sleep(self.interval_s)

    def top(self, n: int = 4) -> list[tuple[str, float]]:
        total = sum(self.samples.values()) or 1
        return [(chain, count / total) for chain, count in self.samples.most_common(n)]


class Counter:
    """The counting program and its map."""

    def __init__(self, sys_: Syscalls) -> None:
        self.sys = sys_
        self.map_fd = sys_.map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0, b"detach_bench")

    def load(self, expected_attach_type: int) -> int:
        return self.sys.prog_load(BPF_PROG_TYPE_KPROBE, counting_program(self.map_fd), b"GPL", b"detach_bench",
                                  max(expected_attach_type, 0))

    def runs(self) -> int:
        return struct.unpack("<Q", self.sys.map_lookup_elem(self.map_fd, b"\0\0\0\0", 8))[0]

    def close(self) -> None:
        os.close(self.map_fd)


def attach_perf(sys_: Syscalls, target: Target, sites: list[tuple[int, int]], prog_fd: int) -> tuple[list[int], list[int], float]:
    pmu = kernel.uprobe_pmu_type()
    path = os.fsencode(str(target.path))
    perf_fds, link_fds = [], []
    started = time.perf_counter()
    for cookie, (_, file_offset) in enumerate(sites):
        perf_fds.append(sys_.perf_uprobe_open(pmu, path, file_offset, target.proc.pid))
        link_fds.append(sys_.link_create_perf(prog_fd, perf_fds[-1], cookie))
    return perf_fds, link_fds, time.perf_counter() - started


def timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def close_each(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def sampled(fn, *args) -> tuple[float, list[tuple[str, float]]]:
    with StackSampler() as sampler:
        seconds = timed(fn, *args)
    return seconds, sampler.top()


def close_threads(fds: list[int]) -> None:
    with ThreadPoolExecutor(64) as pool:
        list(pool.map(os.close, fds))


def disable_each(fds: list[int]) -> None:
    for fd in fds:
        fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)


@contextlib.contextmanager
def rcu_expedited():
    old = RCU_EXPEDITED.read_text().strip()
    RCU_EXPEDITED.write_text("1")
    try:
        yield
    finally:
        RCU_EXPEDITED.write_text(old)


def raise_fd_limit(need: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))


def measure_here(n_sites: int) -> dict:
    """Every measurement on the running kernel."""
    kernel.check_bpf_syscall()
    raise_fd_limit(4 * n_sites + 256)
    sys_ = Syscalls()
    binary = service_binary()
    sites = probe_sites(binary, n_sites)
    vaddrs = [v for v, _ in sites]
    out: dict = {"kernel": os.uname().release, "sites": len(sites), "accel": os.environ.get("VMTEST_ACCEL", "host")}
    counter = Counter(sys_)
    with tempfile.TemporaryDirectory() as tmp:
        target = Target(binary, Path(tmp))
        try:
            prog_fd = counter.load(uprobes.NO_EXPECTED_ATTACH_TYPE)
            per = len(sites)

            # 1. links first, then perf events one by one (sampling where the closing thread waits)
            perf_fds, link_fds, attach_s = attach_perf(sys_, target, sites, prog_fd)
            out["perf_attach_ms_per_site"] = 1000 * attach_s / per
            out["int3_while_attached"] = target.int3_count(vaddrs)
            seconds, out["link_close_waits_in"] = sampled(close_each, link_fds)
            out["link_close_ms_per_site"] = 1000 * seconds / per
            out["int3_after_link_close"] = target.int3_count(vaddrs)
            out["disable_ms_per_site"] = 1000 * timed(disable_each, perf_fds) / per
            out["int3_after_disable"] = target.int3_count(vaddrs)
            seconds, out["perf_close_waits_in"] = sampled(close_each, perf_fds)
            out["perf_close_ms_per_site"] = 1000 * seconds / per
            out["int3_after_perf_close"] = target.int3_count(vaddrs)

            # 2. links, then perf events, each from 64 threads
            perf_fds, link_fds, _ = attach_perf(sys_, target, sites, prog_fd)
            out["link_close_64_threads_ms_per_site"] = 1000 * timed(close_threads, link_fds) / per
            out["perf_close_64_threads_ms_per_site"] = 1000 * timed(close_threads, perf_fds) / per

            # 3. site by site: the link, then its perf event
            perf_fds, link_fds, _ = attach_perf(sys_, target, sites, prog_fd)
            out["site_by_site_close_ms_per_site"] = 1000 * timed(close_each, [fd for pair in zip(link_fds, perf_fds) for fd in pair]) / per

            # 4. with expedited RCU grace periods (a system-wide switch: measured, not used by gotrace)
            if RCU_EXPEDITED.exists():
                perf_fds, link_fds, _ = attach_perf(sys_, target, sites, prog_fd)
                with rcu_expedited():
                    out["link_close_rcu_expedited_ms_per_site"] = 1000 * timed(close_each, link_fds) / per
                    out["perf_close_rcu_expedited_ms_per_site"] = 1000 * timed(close_each, perf_fds) / per

            # 5. gotrace's own close: waiting (pipelined), and handed to its helper process (until the probes are gone)
            def gotrace_attach() -> uprobes.UprobeSet:
                return uprobes.attach_sites(
                    str(target.path), [(b"detach_bench", [(off, i) for i, (_, off) in enumerate(sites)])],
                    pid=target.proc.pid, mode="perf_link", load_program=lambda name, eat: counter.load(eat),
                )

            out["gotrace_close_wait_ms_per_site"] = 1000 * timed(lambda u: u.close(wait=True), gotrace_attach()) / per
            uprobe_set = gotrace_attach()
            started = time.perf_counter()
            uprobe_set.close(wait=False)
            out["gotrace_close_returns_ms"] = 1000 * (time.perf_counter() - started)
            while target.int3_count(vaddrs) and time.perf_counter() - started < 900:
                time.sleep(0.01)
            out["gotrace_probes_gone_ms_per_site"] = 1000 * (time.perf_counter() - started) / per
            os.close(prog_fd)

            # 6. uprobe_multi: one link for every site
            try:
                prog_fd = counter.load(BPF_TRACE_UPROBE_MULTI)
                started = time.perf_counter()
                link = sys_.link_create_uprobe_multi(prog_fd, os.fsencode(str(target.path)), [o for _, o in sites],
                                                     list(range(per)), target.proc.pid)
                out["multi_attach_ms_per_site"] = 1000 * (time.perf_counter() - started) / per
                out["multi_close_ms_per_site"] = 1000 * timed(os.close, link) / per
                out["int3_after_multi_close"] = target.int3_count(vaddrs)
                os.close(prog_fd)
            except OSError as exc:
                out["uprobe_multi"] = f"unavailable ({os.strerror(exc.errno)})"
        finally:
            target.close()

        # 7. Does the BPF program still run on a busy target once its perf events are disabled? Once its links are closed?
        busy = Target(binary, Path(tmp), busy=True)
        try:
            time.sleep(0.5)
            busy_sites = probe_sites(busy.path, 50, ("main.*",))  # the functions its loop calls
            prog_fd = counter.load(uprobes.NO_EXPECTED_ATTACH_TYPE)
            perf_fds, link_fds, _ = attach_perf(sys_, busy, busy_sites, prog_fd)

            def runs_in(seconds: float) -> int:
                before = counter.runs()
                time.sleep(seconds)
                return counter.runs() - before

            out["busy_runs_per_s_attached"] = runs_in(1.0)
            disable_each(perf_fds)
            out["busy_runs_per_s_disabled"] = runs_in(1.0)
            close_each(link_fds)
            out["busy_runs_per_s_links_closed"] = runs_in(1.0)
            close_each(perf_fds)
            os.close(prog_fd)
        finally:
            busy.close()
    counter.close()
    return out


def measure_in_vm(kernel: str, n_sites: int) -> dict:
    argv = [str(REPO / "scripts" / "vmtest"), "--timeout", "1800", kernel, "--",
            sys.executable, str(REPO / "scripts" / "detach_bench.py"), "--here", "--sites", str(n_sites), "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{kernel}: no result (exit {proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")


ROWS = [
    ("perf_attach_ms_per_site", "perf_link attach, ms/site"),
    ("link_close_ms_per_site", "close BPF links, ms/site"),
    ("link_close_64_threads_ms_per_site", "  same from 64 threads"),
    ("link_close_rcu_expedited_ms_per_site", "  same, rcu_expedited=1"),
    ("disable_ms_per_site", "PERF_EVENT_IOC_DISABLE, ms/site"),
    ("perf_close_ms_per_site", "then close perf events, ms/site"),
    ("perf_close_64_threads_ms_per_site", "  same from 64 threads"),
    ("perf_close_rcu_expedited_ms_per_site", "  same, rcu_expedited=1"),
    ("site_by_site_close_ms_per_site", "link+perf event site by site, ms/site"),
    ("gotrace_close_wait_ms_per_site", "gotrace close(wait=True), ms/site"),
    ("gotrace_close_returns_ms", "gotrace close(wait=False) returns, ms"),
    ("gotrace_probes_gone_ms_per_site", "  then probes gone after, ms/site"),
    ("multi_attach_ms_per_site", "uprobe_multi attach, ms/site"),
    ("multi_close_ms_per_site", "uprobe_multi close, ms/site"),
]


def print_table(results: list[dict]) -> None:
    width = 38
    print(f"{'':{width}}" + "".join(f"{r['kernel'][:22]:>24}" for r in results))
    print(f"{'(how it ran)':{width}}" + "".join(f"{r['accel']:>24}" for r in results))
    print(f"{'sites':{width}}" + "".join(f"{r['sites']:>24}" for r in results))
    for key, label in ROWS:
        cells = []
        for r in results:
            v = r.get(key)
            cells.append(f"{v:>24.3f}" if isinstance(v, (int, float)) else f"{'-':>24}")
        print(f"{label:{width}}" + "".join(cells))
    for key in ("int3_while_attached", "int3_after_link_close", "int3_after_disable", "int3_after_perf_close",
                "busy_runs_per_s_attached", "busy_runs_per_s_disabled", "busy_runs_per_s_links_closed"):
        print(f"{key:{width}}" + "".join(f"{r.get(key, '-'):>24}" for r in results))
    for r in results:
        for key, what in (("link_close_waits_in", "BPF links"), ("perf_close_waits_in", "perf events")):
            print(f"\n{r['kernel']}: closing {what}, the closing thread's kernel stack (share of samples):")
            for chain, share in r.get(key, []):
                print(f"  {100 * share:5.1f}%  {chain}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/detach-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=300, help="probe sites to attach (default 300)")
    parser.add_argument("--kernels", default="host,6.1,6.12",
                        help="comma-separated: host (this machine's kernel) and scripts/vmtest kernels (default host,6.1,6.12)")
    parser.add_argument("--here", action="store_true", help="measure the running kernel only (what each VM runs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("detach-bench: run as root (sudo)", file=sys.stderr)
        return 3
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.here:
        results = [measure_here(args.sites)]
    else:
        results = []
        for kernel in args.kernels.split(","):
            kernel = kernel.strip()
            started = time.monotonic()
            results.append(measure_here(args.sites) if kernel == "host" else measure_in_vm(kernel, args.sites))
            print(f"detach-bench: {kernel} measured in {time.monotonic() - started:.0f} s", file=sys.stderr)
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
