"""Benchmarks gotrace against its targets: per-call overhead, start-up, attach scale, memory.

Run as root through scripts/bench (the project venv). Every figure is taken
in this one run on this machine and reported as a ratio (to the kernel's
floor, or to the target), since raw times on a shared VM say little alone.

* Overhead (scripts/bench_overhead.py): testdata/hotloop calls main.hot in a
  tight loop and times itself, one process per configuration, all pinned to
  one CPU, in rounds shuffled at a fine grain; each configuration's cost is a
  ratio to empty BPF programs on perf-event links (the kernel's floor) with a
  95% confidence interval, and the machine's noise is reported beside it. The
  rows decompose latency's per-call cost (probes/bench.bpf.c's stages) and
  measure the options to cut it.
* Start-up: wall time from invoking `gotrace latency -p PID FUNC` on a running
  caddy (about 50 MB, stripped) to its "Tracing ..." line, which it prints
  once the probes are attached; GOTRACE_TIMINGS=1 gives the phases.
* Scale: 10, 100, 1000 caddy functions attached and detached through the
  library (gotrace.commands.latency.plan_latency's pieces, LatencyTracer), each in a
  fresh worker process so its peak RSS is its own.
* Memory: peak RSS (VmHWM) of every gotrace process above, of the short-lived
  child that compiles on a cache miss (its own VmHWM, which it reports to the
  tracer), and what bcc alone costs.

gotrace caches the compiled BPF program (gotrace.bpf.cache). Start-up and
scale are measured both ways: one cold run with the cache emptied first (a
child process imports bcc and clang compiles), then warm runs that load the cached program. The
bench empties gotrace's cache directory for that (/var/cache/gotrace/bpf, or
$GOTRACE_BPF_CACHE when set); it refills as gotrace runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
# The checkout venv's command when this is its Python; else (the arm64 guest of scripts/vmtest, where gotrace is
# installed from its wheel and the checkout's venv is another arch's) gotrace run by this Python.
GOTRACE = [str(REPO / ".venv" / "bin" / "gotrace")] if Path(sys.executable).parent == REPO / ".venv" / "bin" \
    else [sys.executable, "-m", "gotrace"]
CADDY_DEFAULT = Path("/var/cache/gotrace/thirdparty/caddy/bin/caddy")
HOTLOOP_FUNC = "main.hot"
SLOW_THRESHOLD = "1s"  # latency --slow in the overhead rounds: no call of main.hot is that slow
STARTUP_FUNC = "net/http.(*conn).serve"
SCALE_PATTERN = "net/http.*"
SCALE_SIZES = (10, 100, 1000)
ATTACHED_TIMEOUT_S = 120.0

TARGET_OVERHEAD_RATIO = 1.03  # gotrace latency / the floor, geometric mean over rounds (issue 16)
TARGET_OVERHEAD_CI_HIGH = 1.05  # its 95% confidence interval's upper bound
TARGET_STARTUP_S = 1.0
TARGET_ATTACH_1000_S = 5.0
TARGET_PEAK_RSS_MB = 150.0

sys.path.append(str(REPO))  # after an installed gotrace (the wheel in the arm64 guest), if any
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))  # also under PYTHONSAFEPATH (the arm64 guest), which leaves it out

import bench_overhead  # noqa: E402  (scripts/, beside this file)


BenchError = bench_overhead.BenchError


# -- small helpers -----------------------------------------------------------------------

def clear_bpf_cache() -> None:
    """Empty gotrace's compiled-program cache, so that the next run of each configuration compiles (a cold run)."""
    from gotrace.bpf import cache as bpfcache

    shutil.rmtree(bpfcache.CACHE_DIR, ignore_errors=True)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM: the peak RSS of this process image. (Not ru_maxrss: Linux carries that across fork and exec,
    so a child started by a big parent reports the parent's peak.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_line_until(stream, pattern: re.Pattern, timeout_s: float, seen: list[str]) -> str | None:
    """Lines of `stream` (kept in `seen`) until one matches `pattern`; None at EOF or timeout."""
    deadline = time.monotonic() + timeout_s
    fd = stream.fileno()
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            seen.append(text)
            if pattern.search(text):
                return text
    return None


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(value: float, target: float) -> str:
    return f"{value / target:.2f} of target  {'OK' if value <= target else 'MISSED'}"


def gotrace_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    except OSError:  # no git (the arm64 guest)
        return "unknown"
    return out.stdout.strip()[:72] or "unknown"


# -- the traced programs ----------------------------------------------------------------------

def caddy_path() -> Path:
    """caddy as scripts/thirdparty installs it (when present), else its usual cache path."""
    thirdparty = REPO / "scripts" / "thirdparty"
    if os.access(thirdparty, os.X_OK):
        out = subprocess.run([str(thirdparty)], capture_output=True, text=True, timeout=900)
        lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        for line in reversed(lines):
            if line.endswith("caddy") and Path(line).is_file():
                return Path(line)
    if CADDY_DEFAULT.is_file():
        return CADDY_DEFAULT
    raise BenchError(f"no caddy binary: run scripts/thirdparty (or scripts/test) to install it at {CADDY_DEFAULT}")


class Caddy:
    """A caddy file server on 127.0.0.1, idle, to attach to by pid."""

    def __init__(self, binary: Path):
        self.binary = binary
        self._dir = tempfile.TemporaryDirectory(prefix="gotrace-bench-caddy-")
        env = dict(os.environ, XDG_DATA_HOME=self._dir.name, XDG_CONFIG_HOME=self._dir.name, HOME=self._dir.name)
        self.proc = subprocess.Popen(
            [str(binary), "file-server", "--listen", "127.0.0.1:0", "--root", self._dir.name],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        seen: list[str] = []
        if read_line_until(self.proc.stderr, re.compile(r"serving static files|server running"), 30, seen) is None:
            self.close()
            raise BenchError(f"caddy did not start: {' | '.join(seen[-3:])}")
        self.pid = self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        self._dir.cleanup()


# -- CLI runs ----------------------------------------------------------------------------------

def gotrace_latency(pid: int, func: str, env_extra: dict[str, str] | None = None,
                    command: str = "latency", extra_args: tuple[str, ...] = ()) -> "GotraceRun":
    """`gotrace COMMAND -p PID FUNC --json [EXTRA_ARGS]` (latency, or args), once its probes are attached."""
    env = dict(os.environ, **(env_extra or {}))
    started = time.perf_counter()
    # The bench measures what tracing costs per call: the cost guard must not detach the hot function.
    guard = ["--max-overhead", "0"] if command == "latency" else []
    proc = subprocess.Popen([*GOTRACE, command, "-p", str(pid), func, "--json", *guard, *extra_args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    seen: list[str] = []
    header = read_line_until(proc.stderr, re.compile(r"^Tracing "), ATTACHED_TIMEOUT_S, seen)
    attached_s = time.perf_counter() - started
    if header is None:
        proc.kill()
        proc.wait()
        raise BenchError(f"gotrace {command} -p {pid} {func} did not attach: {' | '.join(seen[-3:]) or 'no output'}")
    return GotraceRun(proc, attached_s, seen)


@dataclass
class GotraceRun:
    proc: subprocess.Popen
    attached_s: float          # from invocation to the "Tracing" line
    stderr_lines: list[str]

    def timings(self) -> dict[str, float]:
        for line in self.stderr_lines:
            if line.startswith("gotrace: timings "):
                return {k[:-2]: float(v) for k, v in (item.split("=") for item in line.split()[2:])}
        return {}

    def stop(self) -> tuple[list[dict], float]:
        """SIGINT, then the JSON reports and the peak RSS (MB) until then."""
        rss_mb = peak_rss_mb(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.stdout.read()
        self.proc.stderr.read()
        status = self.proc.wait(60)
        if status != 0:
            raise BenchError(f"gotrace exited with status {status}")
        self.proc.stdout.close()
        self.proc.stderr.close()
        return [json.loads(line) for line in out.splitlines() if line.strip()], rss_mb


# -- start-up ---------------------------------------------------------------------------------

# `gotrace args` on a method of caddy whose signature only the runtime type data gives (no DWARF, no --sig).
ARGS_STARTUP_FUNC = "net/http.serverHandler.ServeHTTP"

PHASES = (("imports", "imports inside the latency command"), ("elf_analysis", "ELF analysis: pclntab, match, sites, offsets"),
          ("prepare", "BPF prepare: checks, file offsets"), ("bpf_compile", "BPF compile: cached program, no bcc"),
          ("attach", "attach (uprobe_multi links)"))
ARGS_PHASES = (("imports", "imports inside the args command"),
               ("elf_analysis", "ELF analysis, type data, capture plan"),
               ("prepare", "BPF prepare: checks, file offsets"), ("bpf_compile", "BPF compile: cached program, no bcc"),
               ("attach", "maps, verifier, attach (uprobe_multi)"))


def bench_startup(args, caddy: Caddy, command: str = "latency", func: str = STARTUP_FUNC) -> dict:
    def one() -> dict:
        run = gotrace_latency(caddy.pid, func, {"GOTRACE_TIMINGS": "1"}, command)
        timings = run.timings()
        _, rss_mb = run.stop()
        return {"total_s": run.attached_s, "rss_mb": rss_mb, **timings}

    clear_bpf_cache()
    cold = one()
    return {"cold": cold, "runs": [one() for _ in range(args.startup_runs)], "command": command, "func": func}


def print_startup(args, caddy: Caddy, r: dict, go_version: str) -> dict:
    runs = r["runs"]
    total = median([x["total_s"] for x in runs])
    size_mb = caddy.binary.stat().st_size / 1e6
    command = r.get("command", "latency")
    print(f"== Start-up: gotrace {command} -p PID '{r.get('func', STARTUP_FUNC)}' on {caddy.binary} "
          f"({size_mb:.1f} MB, stripped, {go_version}), {len(runs)} warm runs (BPF program cached), median ==")
    known = 0.0
    phases = ARGS_PHASES if command == "args" else PHASES
    for key, label in phases:
        value = median([x.get(key, float('nan')) for x in runs])
        known += value
        print(f"  {label:46s} {value:7.3f} s  {value / total:6.1%}")
    rest = total - known
    print(f"  {'python start-up, click, exit of the clock':46s} {rest:7.3f} s  {rest / total:6.1%}")
    print(f"  {'total: invocation to probes attached':46s} {total:7.3f} s   target <= {TARGET_STARTUP_S} s: "
          f"{verdict(total, TARGET_STARTUP_S)}")
    print("  runs: " + " ".join(f"{x['total_s']:.3f}" for x in runs) + " s")
    cold = r["cold"]
    print(f"  cold run (cache emptied first: a child process imports bcc, clang compiles): total {cold['total_s']:.3f} s, "
          f"of which BPF compile {cold.get('bpf_compile', float('nan')):.3f} s")
    print()
    return {"startup_s": total, "startup_cold_s": cold["total_s"]}


# -- scale ------------------------------------------------------------------------------------

def scale_worker(binary: str, pid: int, n: int) -> None:
    """One scale measurement in this process: prints one JSON line."""
    t0 = time.perf_counter()
    from gotrace.binary.gobinary import GoBinary
    from gotrace.commands.latency import LatencyPlan
    from gotrace.trace.latency import LatencyTracer
    from gotrace.trace.tracer import traced_functions

    with GoBinary.open(binary) as gobin:
        traced = []
        for fn in gobin.match([SCALE_PATTERN]):
            probes = gobin.probe_sites(fn)
            if probes.traceable:
                traced.append(probes)
                if len(traced) == n:
                    break
        if len(traced) < n:
            raise BenchError(f"only {len(traced)} traceable functions match {SCALE_PATTERN}")
        plan = LatencyPlan(traced, [])
        t1 = time.perf_counter()
        rss_before_attach = current_rss_mb()
        tracer = LatencyTracer(gobin, traced_functions(gobin, plan.traced), pid=pid)
        tracer.attach()
        t2 = time.perf_counter()
        tracer.read(reset=True)
        t3 = time.perf_counter()
        tracer.close()
        t4 = time.perf_counter()
    print(json.dumps({"functions": n, "sites": plan.n_sites, "analysis_s": t1 - t0, "attach_total_s": t2 - t1,
                      "read_s": t3 - t2, "detach_s": t4 - t3, "mode": tracer.attached_by, **tracer.timings_s,
                      "rss_before_attach_mb": rss_before_attach,
                      "compiler_rss_mb": None if tracer.bpf_compiler_peak_rss_kb is None
                      else tracer.bpf_compiler_peak_rss_kb / 1024,
                      "rss_mb": peak_rss_mb()}))


def bcc_floor_worker() -> None:
    """Peak RSS of Python importing bcc and compiling an empty program: what any in-process bcc tool pays."""
    from gotrace.bpf import kernel as kernelenv

    kernelenv.use_kernel_headers()
    import bcc

    rss_import = current_rss_mb()
    bcc.BPF(text="int gt_bench_empty(void *ctx) { return 0; }").cleanup()
    print(json.dumps({"rss_import_bcc_mb": rss_import, "rss_mb": peak_rss_mb()}))


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bcc_floor() -> dict:
    proc = subprocess.run([PYTHON, __file__, "--bcc-floor-worker"], capture_output=True, text=True, cwd=REPO, timeout=300)
    if proc.returncode != 0:
        raise BenchError(f"bcc floor worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_scale(args, caddy: Caddy) -> dict:
    def one(n: int) -> dict:
        proc = subprocess.Popen([PYTHON, __file__, "--scale-worker", str(caddy.binary), str(caddy.pid), str(n)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise BenchError(f"scale worker for {n} functions failed: {err.strip().splitlines()[-1:]}")
        return json.loads(out.strip().splitlines()[-1])

    results, cold = [], []
    for n in SCALE_SIZES:
        clear_bpf_cache()
        cold.append(one(n))
        results.append([one(n) for _ in range(args.scale_runs)])
    return {"results": results, "cold": cold}


def print_scale(args, r: dict) -> dict:
    print(f"== Scale: attach and detach N functions of caddy matching '{SCALE_PATTERN}' (library, own process "
          f"each), 1 cold run, then {args.scale_runs} warm run(s), median ==")
    cols = [("analysis_s", "analysis"), ("prepare", "prepare"), ("bpf_compile", "compile"), ("attach", "link"),
            ("attach_total_s", "attach"), ("detach_s", "detach"), ("rss_mb", "peak RSS")]
    print(f"  {'funcs':>5s} {'sites':>5s} " + " ".join(f"{label:>9s}" for _, label in cols) + "  (s; RSS MB)")
    out, cold_rss = {}, []
    for cold, runs in zip(r["cold"], r["results"]):
        n = runs[0]["functions"]
        cold_rss.append(cold["rss_mb"])
        compiler = cold["compiler_rss_mb"]
        cold_label = "cold" if compiler is None else f"cold, compile child {compiler:.1f} MB"
        for label, rows in ((cold_label, [cold]), ("warm", runs)):
            row = {key: median([x[key] for x in rows]) for key, _ in cols}
            print(f"  {n:5d} {runs[0]['sites']:5d} " + " ".join(f"{row[key]:9.3f}" if key != "rss_mb" else f"{row[key]:9.1f}"
                                                              for key, _ in cols) + f"  {label}")
        out[n] = row
    mode = r["results"][-1][0]["mode"]
    print(f"  (attach = prepare + compile + link, mode {mode}; analysis = match + disassembly + runtime offsets; "
          "peak RSS: the worker's own)")
    a = out[max(out)]["attach_total_s"]
    print(f"  attach {max(out)} functions: {a:.3f} s   target <= {TARGET_ATTACH_1000_S} s: {verdict(a, TARGET_ATTACH_1000_S)}")
    print()
    return {"attach_1000_s": a, "scale_rss_mb": max(row["rss_mb"] for row in out.values()),
            "scale_cold_rss_mb": max(cold_rss), "attach_1000_cold_s": r["cold"][-1]["attach_total_s"],
            "compiler_rss_mb": [x["compiler_rss_mb"] for x in r["cold"]],
            "cold_before_attach_mb": [x["rss_before_attach_mb"] for x in r["cold"]],
            "before_attach_mb": median([x["rss_before_attach_mb"] for x in r["results"][-1]])}


# -- main -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one short round of everything (a smoke test, not figures to quote)")
    parser.add_argument("--rounds", type=int, help="overhead rounds (default 200; --quick 3)")
    parser.add_argument("--calls", type=int, help="calls of main.hot per row per round (default 500; --quick 200)")
    parser.add_argument("--rows", help="overhead rows to measure besides untraced and floor, comma-separated "
                        f"(default all: {','.join(r.key for r in bench_overhead.ROWS)})")
    parser.add_argument("--chunk", type=int, default=20, help="calls timed together; a run's figure is its median "
                        "chunk's (default 20)")
    parser.add_argument("--cpu", type=int, help="the CPU the traced processes are pinned to (default the last)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the rounds' shuffled order")
    parser.add_argument("--overhead-only", action="store_true", help="measure the overhead section only")
    parser.add_argument("--verbose", action="store_true", help="print every round's per-call times")
    parser.add_argument("--startup-runs", type=int, help="start-up runs (default 7; --quick 1)")
    parser.add_argument("--scale-runs", type=int, help="runs per scale size (default 3; --quick 1)")
    parser.add_argument("--scale-worker", nargs=3, metavar=("BINARY", "PID", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--bcc-floor-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bcc_floor_worker:
        bcc_floor_worker()
        return 0
    if args.scale_worker:
        binary, pid, n = args.scale_worker
        scale_worker(binary, int(pid), int(n))
        return 0
    defaults = dict(rounds=3, calls=200, startup_runs=1, scale_runs=1) if args.quick else \
        dict(rounds=200, calls=500, startup_runs=7, scale_runs=3)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if os.geteuid() != 0:
        print("scripts/bench: needs root (BPF): run it with sudo", file=sys.stderr)
        return 3
    try:
        return run_all(args)
    except BenchError as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        return 1


def run_all(args) -> int:
    from gotrace.binary.gobinary import GoBinary

    print(f"gotrace benchmark  {time.strftime('%Y-%m-%d %H:%M')}  commit {gotrace_commit()}")
    print(f"machine: Linux {os.uname().release}, {os.cpu_count()} CPUs; load average at start {load_average()}"
          + ("  (--quick: a smoke run, not figures to quote)" if args.quick else ""))
    print()
    summary: dict[str, float] = {}
    rss: list[float] = []  # warm runs: the BPF program came from the cache
    clear_bpf_cache()
    r = bench_overhead.bench_overhead(args, GOTRACE, REPO, ATTACHED_TIMEOUT_S)
    summary.update(bench_overhead.print_overhead(args, r))
    if args.overhead_only:
        print(f"load average at end {load_average()}")
        return 0
    rss_cold = []
    binary = caddy_path()
    with GoBinary.open(binary) as gobin:
        go_version = gobin.go_version
    caddy = Caddy(binary)
    try:
        r = bench_startup(args, caddy)
        summary.update(print_startup(args, caddy, r, go_version))
        startup_rss = [x["rss_mb"] for x in r["runs"]]
        startup_cold_rss = r["cold"]["rss_mb"]
        rss += startup_rss
        rss_cold.append(startup_cold_rss)
        r = bench_startup(args, caddy, "args", ARGS_STARTUP_FUNC)
        args_startup = print_startup(args, caddy, r, go_version)
        summary["args_startup_s"], summary["args_startup_cold_s"] = args_startup["startup_s"], args_startup["startup_cold_s"]
        summary["args_startup_rss_mb"] = median([x["rss_mb"] for x in r["runs"]])
        r = bench_scale(args, caddy)
        s = print_scale(args, r)
        summary["attach_1000_s"] = s["attach_1000_s"]
        rss.append(s["scale_rss_mb"])
        rss_cold.append(s["scale_cold_rss_mb"])
    finally:
        caddy.close()
    peak = max(rss)
    peak_cold = max(rss_cold)
    print("== Memory: peak RSS of gotrace ==")
    print(f"  gotrace latency on caddy, one function (CLI), warm: {median(startup_rss):.1f} MB median, "
          f"{max(startup_rss):.1f} MB max; cold: {startup_cold_rss:.1f} MB")
    print(f"  1000 functions of caddy (library worker), warm:   {s['scale_rss_mb']:.1f} MB, "
          f"of which {s['before_attach_mb']:.1f} MB before attach (Python, gotrace, ELF analysis)")
    floor_rss = bcc_floor()
    print(f"  bcc's own floor: Python + import bcc {floor_rss['rss_import_bcc_mb']:.1f} MB, + compiling an empty "
          f"program {floor_rss['rss_mb']:.1f} MB peak (clang runs inside the process that imports bcc)")
    compilers = [x for x in s["compiler_rss_mb"] if x is not None]
    if len(compilers) != len(s["compiler_rss_mb"]):
        raise BenchError("a cold scale run reported no compile child: the cache was not emptied, or gotrace compiled "
                         "in its own process")
    peak_compiler = max(compilers)
    print(f"  compile child of the cold runs (10/100/1000 functions; its own VmHWM, exits before attach): "
          + " ".join(f"{x:.1f}" for x in compilers) + " MB")
    both = max(w + c for w, c in zip(s["cold_before_attach_mb"], compilers))
    print(f"  both alive while compiling (worker's RSS before attach + child's peak): {both:.1f} MB, for the child's "
          "lifetime only")
    print(f"  highest of the cold runs, gotrace's process:   {peak_cold:.1f} MB   target <= {TARGET_PEAK_RSS_MB:.0f} MB: "
          f"{verdict(peak_cold, TARGET_PEAK_RSS_MB)}")
    print(f"  highest of the cold runs, the compile child:   {peak_compiler:.1f} MB   target <= {TARGET_PEAK_RSS_MB:.0f} MB: "
          f"{verdict(peak_compiler, TARGET_PEAK_RSS_MB)}")
    print(f"  highest of the warm runs (cached):             {peak:.1f} MB   target <= {TARGET_PEAK_RSS_MB:.0f} MB: "
          f"{verdict(peak, TARGET_PEAK_RSS_MB)}")
    print()
    print("== Targets ==")
    rows = [("overhead gotrace/floor", summary["overhead_ratio"], TARGET_OVERHEAD_RATIO, ""),
            ("overhead, 95% CI upper bound", summary["overhead_ratio_high"], TARGET_OVERHEAD_CI_HIGH, ""),
            ("start-up, 1 function on caddy", summary["startup_s"], TARGET_STARTUP_S, " s"),
            ("attach 1000 functions", summary["attach_1000_s"], TARGET_ATTACH_1000_S, " s"),
            ("peak RSS", peak, TARGET_PEAK_RSS_MB, " MB")]
    print("  (warm: the compiled BPF program is in gotrace's cache, as on every run after a configuration's first)")
    for label, value, target, unit in rows:
        print(f"  {label:32s} {value:8.3f}{unit:3s} target {target}{unit:3s} {verdict(value, target)}")
    print(f"  cold, the first run of a configuration (a child compiles with bcc): start-up "
          f"{summary['startup_cold_s']:.3f} s, attach 1000 functions {s['attach_1000_cold_s']:.3f} s, peak RSS "
          f"{peak_cold:.1f} MB gotrace ({peak_cold / TARGET_PEAK_RSS_MB:.2f} x its target), "
          f"{peak_compiler:.1f} MB compile child ({peak_compiler / TARGET_PEAK_RSS_MB:.2f} x)")
    print(f"  gotrace args on a caddy method (its signature from the type data), warm: start-up "
          f"{summary['args_startup_s']:.3f} s ({summary['args_startup_s'] / summary['startup_s']:.2f} x latency's), "
          f"peak RSS {summary['args_startup_rss_mb']:.1f} MB; cold {summary['args_startup_cold_s']:.3f} s")
    print(f"load average at end {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
