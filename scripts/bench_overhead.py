"""scripts/bench's overhead section: what tracing one call costs, as a ratio to the kernel's floor, with a 95% CI.

testdata/hotloop calls main.hot (a few instructions) in a loop and times
itself. Every configuration measured gets its own copy of the binary and its
own hotloop process, with its probes attached for the whole section (so no
uprobe is shared between configurations and nothing attaches between runs);
all of those processes are pinned to one CPU, and the bench itself and the
gotrace processes it starts to another. A round runs each process once, for
--calls calls, in an order shuffled per round, so the runs that are compared
are a fraction of a second apart and drift of a busy machine hits all alike.

The floor is empty BPF programs on perf-event links (gotrace's own attach
path of old kernels, bpf.uprobes' perf_link mode): what the kernel's two
uprobe traps per call cost with nothing to do. Each round gives every row a
ratio (row - untraced) / (floor - untraced); a row's figure is the geometric
mean of its rounds' ratios, with the Student-t 95% confidence interval of
their logarithms' mean. (The arithmetic mean of ratios with a noisy
denominator is biased upwards: on a busy 2-CPU machine, floor CV 16% per
round, it gave the A/A row 1.014 [1.003, 1.025].) A second, identical floor
process (the A/A row) measures the bench's own error: its ratio should be
1.000, and its interval is what noise alone gives.

The rows decompose latency's cost: empty programs on uprobe_multi links with
cookies (gotrace's attach path), then probes/bench.bpf.c's stages (g; the
goroutine key; the start map; latency's whole work) and variants of that
whole work (the options to make it cheaper), then the shipped programs
through the CLI (`gotrace latency -p`, `gotrace args -p`).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOTLOOP_FUNC = "main.hot"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    program: str | None = None  # a bench build of gotrace.bpf.compiler (probes/bench.bpf.c)
    mode: str = "uprobe_multi"  # how the program is attached (gotrace.bpf.uprobes)
    command: str | None = None  # a gotrace CLI command attached instead
    options: tuple[str, ...] = ()  # the command's options besides -p PID main.hot --json
    stage: str = ""  # the decomposition's row number, "" for a variant
    entry_only: bool = False  # the program at the entry site only (count's way), not at the `ret` too


ROWS = (
    Row("untraced", "untraced"),
    Row("floor", "empty programs, perf-event links (the floor)", "bench_empty", "perf_link", stage="1"),
    Row("floor_aa", "the same again (A/A: the bench's own error)", "bench_empty", "perf_link"),
    Row("empty", "empty programs, uprobe_multi links + cookies", "bench_empty", stage="2"),
    Row("g", "+ cookie, gt_config, pid filter, read g", "bench_g", stage="3"),
    Row("key", "+ goid and stack.hi from g (2 reads)", "bench_key", stage="4"),
    Row("start", "+ start map (LRU), 2 bpf_ktime_get_ns", "bench_start", stage="5"),
    Row("full", "latency's work before issue 16 (bench copy)", "bench_full", stage="6"),
    Row("latency", "gotrace latency -p (this checkout's program)", command="latency", stage="6"),
    Row("slow", "gotrace latency -p --slow 1s (the stack build)", command="latency", options=("--slow", "1s"),
        stage="6"),
    Row("entry_floor", "empty program, entry site only (count's floor)", "bench_empty", "perf_link",
        stage="count", entry_only=True),
    Row("count", "gotrace count -p (entry probe only)", command="count", stage="count"),
    Row("args", "gotrace args -p", command="args", stage="args"),
    Row("guard", "6 with the cost guard's step (latency's)", "bench_guard"),
    Row("guard_nocost", "6 with the guard, no per-CPU cost totals", "bench_guard_nocost"),
    Row("guard_slots", "6 with the guard + a slot array", "bench_guard_slots"),
    Row("guard_slots_pair", "6 with the guard + slots + 1 gt_hist update", "bench_guard_slots_pair"),
    Row("guard_slots_read", "6 with the guard + slots + 1 read", "bench_guard_slots_read"),
    Row("guard_slots_pair_read", "6 with guard, slots, 1 read, 1 gt_hist update", "bench_guard_slots_pair_read"),
    Row("one_read", "6 with goid+stack.hi in 1 read", "bench_one_read"),
    Row("start_hash", "6 with start map a plain hash", "bench_start_hash"),
    Row("hist_pair", "6 with 1 gt_hist update {count,sum}", "bench_hist_pair"),
    Row("hist_array", "6 with gt_hist a per-CPU array", "bench_hist_array"),
    Row("no_func_counts", "6 without per-function counters", "bench_no_func_counts"),
    Row("start_array", "6 with start map a direct-mapped array*", "bench_start_array"),
    Row("no_ktime", "6 without bpf_ktime_get_ns*", "bench_no_ktime"),
    Row("slots", "6 with a slot array before the start map", "bench_slots"),
    Row("slots_pair", "6 with slots + 1 gt_hist update", "bench_slots_pair"),
    Row("slots_pair_read", "6 with slots + 1 gt_hist update + 1 read", "bench_slots_pair_read"),
    Row("noexist", "6 with 1 start map op at entry (NOEXIST)", "bench_noexist"),
    Row("lean", "6 with NOEXIST + 1 gt_hist update", "bench_lean"),
    Row("pair_hash", "6 with 1 gt_hist update + plain hash", "bench_pair_hash"),
    Row("pair_hash_read", "6 with those two + 1 read", "bench_pair_hash_read"),
)
VARIANT_KEYS = {row.key for row in ROWS if row.program and not row.stage and row.key != "floor_aa"}
QUICK_ROWS = ("untraced", "floor", "floor_aa", "empty", "key", "full", "latency", "count", "args")


class BenchError(RuntimeError):
    """A benchmark could not run; the message says why."""


# -- statistics -------------------------------------------------------------------------------

def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile for df degrees of freedom (Cornish-Fisher from the normal's; exact to 0.002 at df 3)."""
    if df <= 0:
        return float("nan")
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
    if df in table:
        return table[df]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # 95% confidence interval of the mean
    high: float
    median: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Estimate:
        n = len(values)
        if n == 0:
            return cls(*(float("nan"),) * 4, 0)
        mean = statistics.fmean(values)
        half = t_quantile_975(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
        return cls(mean, mean - half, mean + half, statistics.median(values), n)

    @classmethod
    def of_ratios(cls, ratios: list[float]) -> Estimate:
        """A ratio's estimate from per-round ratios: their geometric mean, with the t interval of the mean of their
        logarithms. The arithmetic mean of ratios is biased upwards when the denominator is noisy (Jensen's
        inequality: E[1/X] > 1/E[X]); the mean of log ratios is not, since log(A/B) = -log(B/A): two identical
        configurations give 1 in expectation whatever the noise. Non-positive ratios (noise larger than the
        cost) fall back to the arithmetic mean."""
        if not ratios or min(ratios) <= 0:
            return cls.of(ratios)
        logs = cls.of([math.log(r) for r in ratios])
        return cls(math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high), statistics.median(ratios), logs.n)

    def text(self) -> str:
        return f"{self.mean:6.3f} [{self.low:6.3f}, {self.high:6.3f}]"


# -- the traced processes ---------------------------------------------------------------------

def pin_to(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


def thread_switches(pid: int) -> int:
    """Involuntary context switches of every thread of pid so far (being preempted: noise)."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Hotloop:
    """testdata/hotloop running (pinned to `cpu`), waiting for call counts on stdin."""

    def __init__(self, binary: Path, cpu: int | None):
        self.binary = binary
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                     preexec_fn=None if cpu is None else pin_to(cpu))
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchError("testdata/hotloop did not start")
        self.pid = self.proc.pid

    def run(self, calls: int, chunk: int) -> tuple[float, float, int]:
        """`calls` calls of main.hot timed in chunks of `chunk`: (ns per call in the median chunk, ns per call
        over the whole run, involuntary context switches meanwhile)."""
        before = thread_switches(self.pid)
        self.proc.stdin.write(f"{calls} {chunk}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        m = re.match(r"ns=(\d+) calls=(\d+) chunk_ns=(\d+)", line)
        if not m:
            raise BenchError(f"testdata/hotloop answered {line!r}")
        return int(m.group(3)) / chunk, int(m.group(1)) / calls, thread_switches(self.pid) - before

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class CliTrace:
    """`gotrace COMMAND -p PID main.hot --json`, its output in a file, attached until stop()."""

    def __init__(self, gotrace: list[str], command: str, pid: int, cwd: Path, timeout_s: float,
                 options: tuple[str, ...] = ()):
        self.command = command
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        # The bench measures what tracing costs per call: the cost guard must not detach the hot function.
        guard = ("--max-overhead", "0") if command in ("latency", "count") else ()
        self.proc = subprocess.Popen([*gotrace, command, "-p", str(pid), HOTLOOP_FUNC, "--json", *guard, *options],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, cwd=cwd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.err.seek(0)
            text = self.err.read()
            if re.search(r"^Tracing ", text, re.M):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(check=False)
        raise BenchError(f"gotrace {command} -p {pid} {HOTLOOP_FUNC} did not attach: "
                         f"{' | '.join(text.strip().splitlines()[-3:]) or 'no output'}")

    def stop(self, check: bool = True) -> int:
        """SIGINT; the calls of main.hot that gotrace reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        status = self.proc.wait(60)
        self.out.seek(0)
        lines = [json.loads(line) for line in self.out if line.strip()]
        self.out.close()
        self.err.close()
        if check and status != 0:
            raise BenchError(f"gotrace {self.command} exited with status {status}")
        if self.command in ("latency", "count"):
            return sum(f["count"] for r in lines if r.get("event") == "report"
                       for f in r.get("functions", ()) if f["name"] == HOTLOOP_FUNC)
        return sum(1 for r in lines if r.get("func") == HOTLOOP_FUNC and "latency_ns" in r)


def bench_probes(program: str, binary: Path, pid: int, mode: str, entry_only: bool = False):
    """The bench build `program` attached at main.hot's sites in `binary` for pid, through gotrace's own loader."""
    from gotrace.binary.gobinary import GoBinary
    from gotrace.trace.tracer import Tracer, traced_functions

    class BenchTracer(Tracer):
        PROGRAM = program
        DETACHABLE = program.startswith("bench_guard")  # the cost guard's maps (probes/guard.h)
        ENTRY_PROGRAM = b"gt_entry"
        RETURN_PROGRAM = None if entry_only else b"gt_return"

    with GoBinary.open(binary) as gobin:
        (fn,) = gobin.match([HOTLOOP_FUNC])
        tracer = BenchTracer(gobin, traced_functions(gobin, [gobin.probe_sites(fn)]), pid=pid, mode=mode)
    from gotrace.errors import GotraceError

    try:
        tracer.attach()
    except GotraceError as exc:
        raise BenchError(f"{program}: {exc}") from None
    if tracer.attached_by != mode:
        tracer.close()
        raise BenchError(f"{program} attached by {tracer.attached_by}, not {mode}")
    return tracer


@dataclass
class Slot:
    row: Row
    hot: Hotloop
    attached: object = None  # a Tracer or a CliTrace
    per_call_ns: list[float] = field(default_factory=list)  # per round: the median chunk's, per call
    whole_ns: list[float] = field(default_factory=list)  # per round: the whole run's, per call
    switches: list[int] = field(default_factory=list)


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's per-CPU jiffies: cpuN -> [user nice system idle iowait irq softirq steal]."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            out[name] = [int(v) for v in values[:8]]
    return out


def bench_overhead(args, gotrace: list[str], repo: Path, attached_timeout_s: float) -> dict:
    from support import gobuild
    from gotrace.binary.gobinary import GoBinary

    rows = [row for row in ROWS if row.key in (QUICK_ROWS if args.quick else [r.key for r in ROWS])]
    if args.rows:
        wanted = {"untraced", "floor", *args.rows.split(",")}
        unknown = wanted - {row.key for row in ROWS}
        if unknown:
            raise BenchError(f"no overhead row {', '.join(sorted(unknown))}: rows are {', '.join(r.key for r in ROWS)}")
        rows = [row for row in ROWS if row.key in wanted]
    chunk = args.chunk
    if chunk <= 0 or args.calls % chunk:
        raise BenchError(f"--calls ({args.calls}) must be a multiple of --chunk ({chunk})")
    built = gobuild.build("hotloop", gobuild.SYSTEM_GO_VERSION, "default", gobuild.NATIVE_ARCH)
    with GoBinary.open(built) as gobin:
        (fn,) = gobin.match([HOTLOOP_FUNC])
        n_sites = 1 + len(gobin.probe_sites(fn).sites.return_vaddrs)
        go_version = gobin.go_version
    ncpu = os.cpu_count() or 1
    cpu = args.cpu if args.cpu is not None else ncpu - 1
    others = set(range(ncpu)) - {cpu}
    if others:
        os.sched_setaffinity(0, others)  # the bench and the gotrace processes it starts stay off the traced CPU
    work = Path(tempfile.mkdtemp(prefix="gotrace-bench-hotloop-"))
    slots: list[Slot] = []
    try:
        for row in rows:
            copy = work / row.key / "hotloop"
            copy.parent.mkdir()
            shutil.copy2(built, copy)
            slots.append(Slot(row, Hotloop(copy, cpu)))
        for slot in slots:
            row = slot.row
            if row.program:
                slot.attached = bench_probes(row.program, slot.hot.binary, slot.hot.pid, row.mode, row.entry_only)
            elif row.command:
                slot.attached = CliTrace(gotrace, row.command, slot.hot.pid, repo, attached_timeout_s, row.options)
        for slot in slots:
            slot.hot.run(args.calls, chunk)  # warm up, also what the CLI rows count
        rng = random.Random(args.seed)
        load_start = load_average()
        stat_start = cpu_times()
        started = time.monotonic()
        for _ in range(args.rounds):
            order = slots[:]
            rng.shuffle(order)
            for slot in order:
                ns, whole_ns, switches = slot.hot.run(args.calls, chunk)
                slot.per_call_ns.append(ns)
                slot.whole_ns.append(whole_ns)
                slot.switches.append(switches)
        elapsed_s = time.monotonic() - started
        stat_end = cpu_times()
        load_end = load_average()
        counted = {}
        for slot in slots:
            if isinstance(slot.attached, CliTrace):
                counted[slot.row.key] = slot.attached.stop()
                slot.attached = None
    finally:
        for slot in slots:
            if slot.attached is not None:
                slot.attached.stop(check=False) if isinstance(slot.attached, CliTrace) else slot.attached.close()
            slot.hot.close()
        shutil.rmtree(work, ignore_errors=True)
    return {"go_version": go_version, "sites": n_sites, "cpu": cpu, "slots": slots, "counted": counted,
            "expected_calls": (args.rounds + 1) * args.calls, "elapsed_s": elapsed_s,
            "load": (load_start, load_end), "stat": (stat_start, stat_end)}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_overhead(args, r: dict) -> dict:
    slots = {slot.row.key: slot for slot in r["slots"]}
    untraced = slots["untraced"].per_call_ns
    floor = slots["floor"].per_call_ns
    floor_cost = [f - u for f, u in zip(floor, untraced)]
    print(f"== Overhead per traced call: testdata/hotloop {HOTLOOP_FUNC} ({r['go_version']}, {r['sites']} probe sites: "
          f"entry + {r['sites'] - 1} ret), {args.calls} calls x {args.rounds} rounds, one process per row "
          f"pinned to CPU {r['cpu']}, rows shuffled each round, timed in chunks of {args.chunk} calls ==")
    print(f"  {'':5s} {'row':46s} {'per call':>10s} {'added':>10s}   ratio to floor, geo. mean [95% CI] median"
          + ("   variant - row 6, paired [95% CI]" if any(k in VARIANT_KEYS for k in slots) else ""))
    estimates = {}
    for key, slot in slots.items():
        row = slot.row
        per_call = statistics.median(slot.per_call_ns)
        added = statistics.median([t - u for t, u in zip(slot.per_call_ns, untraced)])
        if key == "untraced":
            ratio = ""
        else:
            est = Estimate.of_ratios([(t - u) / f for t, u, f in zip(slot.per_call_ns, untraced, floor_cost)])
            estimates[key] = est
            ratio = f"{est.text()}   {est.median:6.3f}"
        if key in VARIANT_KEYS and "full" in slots:
            full = slots["full"].per_call_ns
            diff = Estimate.of([(t - g) / f for t, g, f in zip(slot.per_call_ns, full, floor_cost)])
            ratio += f"   {diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
        print(f"  {row.stage:>5s} {row.label:46s} {per_call / 1000:7.3f} us {added / 1000:7.3f} us   {ratio}")
    if any(row.label.endswith("*") for row in ROWS if row.key in slots):
        print("  (*: not a correct program, a measure of what the part left out costs)")
    print(f"  (per call: the median chunk's of a run; per call and added: medians over rounds; added = row - untraced, "
          f"in the same round; ratio: geometric mean over rounds of (row - untraced) / (floor - untraced), "
          f"its CI from the logarithms' t interval)")
    aa = estimates.get("floor_aa")
    if aa:
        arith = Estimate.of([(t - u) / f for t, u, f in zip(slots["floor_aa"].per_call_ns, untraced, floor_cost)])
        print(f"  bench's own error (A/A, identical floors): {aa.text()}: half-width {(aa.high - aa.low) / 2:.3f} "
              f"(arithmetic mean of the ratios, biased by the floor's noise: {arith.text()})")
    if "latency" in estimates:
        lat = estimates["latency"]
        arith = Estimate.of([(t - u) / f for t, u, f in zip(slots["latency"].per_call_ns, untraced, floor_cost)])
        print(f"  gotrace/floor = {lat.mean:.3f} (95% CI {lat.low:.3f}-{lat.high:.3f}; median of per-round ratios "
              f"{lat.median:.3f}; arithmetic mean {arith.text()})")
        u, f, g = slots["untraced"].whole_ns, slots["floor"].whole_ns, slots["latency"].whole_ns
        whole = Estimate.of_ratios([(gi - ui) / (fi - ui) for ui, fi, gi in zip(u, f, g)])
        print(f"  the same from whole runs' times (preemptions included): {whole.text()}, median {whole.median:.3f}")
    if "count" in slots and "entry_floor" in slots:
        u, f, c = slots["untraced"].per_call_ns, slots["entry_floor"].per_call_ns, slots["count"].per_call_ns
        own = Estimate.of_ratios([(ci - ui) / (fi - ui) for ui, fi, ci in zip(u, f, c)])
        print(f"  gotrace count / its own floor (an empty program at the entry site only) = {own.text()}")
    if "count" in estimates and "latency" in estimates:
        print(f"  gotrace count / gotrace latency = {estimates['count'].mean / estimates['latency'].mean:.3f}")
    # Noise: how much the machine moved the floor, and how often the traced CPU was taken away.
    floor_us = [x / 1000 for x in floor]
    cv = statistics.stdev(floor_us) / statistics.fmean(floor_us) if len(floor_us) > 1 else float("nan")
    runs = sum(len(s.switches) for s in slots.values())
    preempted = sum(1 for s in slots.values() for x in s.switches if x)
    (s0, s1), cpu = r["stat"], f"cpu{r['cpu']}"
    delta = [b - a for a, b in zip(s0.get(cpu, [0] * 8), s1.get(cpu, [0] * 8))]
    total = sum(delta) or 1
    busy_all = sum(b - a for a, b in zip(s0["cpu"][:3] + s0["cpu"][5:8], s1["cpu"][:3] + s1["cpu"][5:8]))
    all_total = sum(b - a for a, b in zip(s0["cpu"], s1["cpu"])) or 1
    print(f"  noise: floor {min(floor_us):.3f}-{max(floor_us):.3f} us per call (round-to-round CV {cv:.1%}); "
          f"{preempted} of {runs} runs preempted on CPU {r['cpu']}; CPU {r['cpu']} steal {delta[7] / total:.1%}; "
          f"whole machine busy {busy_all / all_total:.0%} over {r['elapsed_s']:.0f} s; "
          f"load average {r['load'][0]} -> {r['load'][1]}")
    for key, count in r["counted"].items():
        ok = count == r["expected_calls"]
        print(f"  gotrace {key} counted {count} calls of {r['expected_calls']} ({'all' if ok else 'NOT all'} calls seen)")
    if args.verbose:
        for key, slot in slots.items():
            print(f"  rounds {key:14s} " + " ".join(f"{v / 1000:.2f}" for v in slot.per_call_ns) + " us")
    print()
    lat = estimates.get("latency")
    return {"overhead_ratio": lat.mean if lat else float("nan"), "overhead_ratio_high": lat.high if lat else float("nan")}
