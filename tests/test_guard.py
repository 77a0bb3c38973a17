"""The cost guard: what a probe hit costs (the self-test), detaching for real, and the budget's arithmetic.

* The self-test's figure must be what the traced program itself pays: the
  CPU time per call of hotloop's main.hot, traced, minus untraced, measured
  by the kernel for the hotloop process (/proc schedstat), is compared with
  gotrace's estimate for the same calls.
* With default settings, a function called in a tight loop is detached
  within a second: the stderr line and the JSON event name it and say why,
  its probes' int3 bytes are gone from the process's code, and it is marked
  detached in the report.
* Detaching some functions re-creates the links of the others (gotrace.h,
  "Which link counts a hit"): the others' counts stay exactly the service's
  own, through several detachments while the service runs.
* The budget's arithmetic (which functions go, the floor) on numbers given
  directly: no kernel involved, and these tests do not claim to trace.
"""

from __future__ import annotations

import array
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import gobuild
from support.gobuild import REPO_ROOT as REPO
from gotrace.binary.gobinary import GoBinary
from gotrace.trace import cost
from gotrace import header
from gotrace.trace.guard import (CHECK_PERIOD_S, DEFER_RETURNS_MIN_FUNCS, FLOOR_SHARE_OF_CPU, IDLE_PROBATION_MIN_FUNCS,
                                 PROBATION_S,
                                 SURGE_HEADROOM, YOUNG_CHECK_PERIOD_S, YOUNG_S, CostGuard, likely_hot_first)
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.targetcpu import process_cpu_ns
from gotrace.trace.tracer import traced_functions
from test_latency_cli import (HANDLE, SERVE_HTTP, TRY_FAIL, UPROBE_INSN, WORK, file_bytes, parse_service, process_bytes,
                              ret_sites, service, start_waiting_service)

HOT = "main.hot"


def hotloop(tmp_path: Path) -> Path:
    """A private copy of hotloop (its own inode: no other run on this machine probes it)."""
    binary = tmp_path / "hotloop"
    shutil.copy2(gobuild.build("hotloop", "1.23.9", "default"), binary)
    return binary


class Hotloop:
    """hotloop: calls main.hot N times per request line; its CPU time per request from the kernel."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def run(self, calls: int) -> int:
        """CPU ns the process used for `calls` calls."""
        before = process_cpu_ns(self.pid)
        self.proc.stdin.write(f"{calls}\n")
        self.proc.stdin.flush()
        assert re.match(rf"ns=\d+ calls={calls}$", self.proc.stdout.readline().strip())
        return process_cpu_ns(self.pid) - before

    def start(self, calls: int) -> None:
        self.proc.stdin.write(f"{calls}\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(60)


def gotrace(*args: object) -> list[str]:
    return [sys.executable, "-m", "gotrace", *map(str, args)]


def wait_for(predicate, timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.bpf
@pytest.mark.parametrize("command", ["latency", "count"])
def test_estimate_is_what_the_traced_program_pays(tmp_path, spawn, command):
    """gotrace's estimated CPU time per call (hits x calibrated cost) against the traced process's own extra CPU
    time per call; printed, and within a factor of 1.5 (the README quotes the figures)."""
    calls = 40_000
    prog = Hotloop(hotloop(tmp_path))
    try:
        untraced = min(prog.run(calls) for _ in range(3))
        tracer = spawn(gotrace(command, "-p", prog.pid, HOT, "--max-overhead", "0", "--json"))
        tracer.wait_line("stderr", r"^Tracing 1 function ")
        traced = [prog.run(calls) for _ in range(3)]
        tracer.proc.send_signal(signal.SIGINT)
        assert tracer.finish(60) == 0, tracer.stderr
    finally:
        prog.close()
    report = [json.loads(line) for line in tracer.stdout.splitlines() if line.startswith("{")][-1]
    assert report["functions"][0]["count"] == 3 * calls
    estimated_ns = report["overhead"]["cpu_share_of_one_cpu"] * report["interval_s"] * 1e9 / (3 * calls)
    measured_ns = (min(traced) - untraced) / calls
    print(f"\n{command} {HOT}: estimated {estimated_ns / 1000:.2f} us/call, the process paid "
          f"{measured_ns / 1000:.2f} us/call (untraced {untraced / calls:.1f} ns/call)")
    assert measured_ns / 1.5 <= estimated_ns <= measured_ns * 1.5


@pytest.mark.bpf
def test_goroutine_exits_are_counted_in_the_estimate(tmp_path, spawn):
    """Each goroutine exit is a hit of latency's probe on runtime.goexit1, counted in the estimate even
    though the traced function is never called."""
    binary = tmp_path / "goexits"
    shutil.copy2(gobuild.build("goexits", "1.23.9", "default"), binary)
    prog = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    n = 50_000
    try:
        assert prog.stdout.readline().strip() == "ready"
        tracer = spawn(gotrace("latency", "-p", prog.pid, "main.idle", "--max-overhead", "0", "--json"))
        tracer.wait_line("stderr", r"^Tracing 1 function ")
        prog.stdin.write(f"{n}\n")
        prog.stdin.flush()
        assert re.match(rf"ns=\d+ goroutines={n}$", prog.stdout.readline().strip())
        tracer.proc.send_signal(signal.SIGINT)
        assert tracer.finish(60) == 0, tracer.stderr
    finally:
        prog.stdin.close()
        prog.wait(60)
    report = [json.loads(line) for line in tracer.stdout.splitlines() if line.startswith("{")][-1]
    assert report["functions"][0]["count"] == 0
    hits = report["overhead"]["hits_per_s"] * report["interval_s"]
    print(f"\n{n} goroutines ended: {hits:,.0f} probe hits, {report['overhead']}")
    assert n * 0.995 <= hits <= n * 1.01 + 100  # the JSON rounds hits/s; the runtime's own goroutines end rarely
    assert report["overhead"]["cpu_share_of_one_cpu"] > 0


def detach_hot_for_real(tmp_path, spawn, command: str) -> tuple[list[dict], re.Match]:
    """`gotrace COMMAND -p` with the default guard on main.hot, called 2,000,000 times (~25 us per traced call
    here: far over budget): the header states the budget, the probes are in place, the guard detaches it within
    a second and its int3 bytes go. The JSON objects printed, and the stderr line of the detachment."""
    binary = hotloop(tmp_path)
    sites = ret_sites(binary, [HOT])
    vaddrs = [vaddr for vaddr, _ in sites]
    original = file_bytes(binary, [offset for _, offset in sites])
    prog = Hotloop(binary)
    try:
        tracer = spawn(gotrace(command, "-p", prog.pid, HOT, "--json"))
        tracer.wait_line("stderr", r"^Tracing 1 function ")
        assert re.search(r"^cost guard: budget 5% of the target's CPU \(--max-overhead\); a probe hit costs ",
                         tracer.stderr, re.M), tracer.stderr
        assert process_bytes(prog.pid, vaddrs) == [UPROBE_INSN[gobuild.NATIVE_ARCH]] * len(vaddrs)  # probes in place
        prog.start(2_000_000)
        _, line = tracer.wait_line("stderr", r"^gotrace: detached 1 function in (\d+\.\d+)s \(probes cost ")
        assert HOT in line.string and "over the --max-overhead budget of 5%" in line.string
        wait_for(lambda: process_bytes(prog.pid, vaddrs) == original, 10, "the int3 bytes to go")
        assert re.match(r"ns=\d+ calls=2000000$", prog.proc.stdout.readline().strip())
        tracer.proc.send_signal(signal.SIGINT)
        assert tracer.finish(60) == 0, tracer.stderr
    finally:
        prog.close()
    docs = [json.loads(line) for line in tracer.stdout.splitlines() if line.startswith("{")]
    (event,) = [d for d in docs if d.get("event") == "detached"]
    assert event["func"] == HOT and "budget of 5%" in event["reason"]
    return docs, line


@pytest.mark.bpf
def test_default_guard_detaches_a_hot_function_for_real(tmp_path, spawn):
    docs, line = detach_hot_for_real(tmp_path, spawn, "latency")
    assert float(line.group(1)) < 1.0
    report = docs[-1]
    assert report["event"] == "report" and report["final"] is True
    (fn,) = report["functions"]
    assert fn["detached"] is True and 0 < fn["count"] < 2_000_000


@pytest.mark.bpf
def test_args_is_under_the_cost_guard(tmp_path, spawn):
    """`gotrace args`: --max-rate only bounds what is printed; the guard detaches main.hot for real, and says so
    on stderr and in JSON; the calls before that were shown, each with its argument."""
    docs, _ = detach_hot_for_real(tmp_path, spawn, "args")
    calls = [d for d in docs if d.get("event") == "call"]
    assert 0 < len(calls) < 2_000_000 and all(d["func"] == HOT and "x" in d["args"] for d in calls)


SERVICE_FUNCTIONS = (HANDLE, WORK, TRY_FAIL, "main.count", "main.fib", "main.grow")


def _traced_service(spawn, mode: str):
    """The test service, waiting for SIGUSR1 and then running until SIGINT, and a LatencyTracer (not attached)
    of SERVICE_FUNCTIONS in it (func_id = index): (the service, its pid, the tracer)."""
    binary = service()
    svc, pid = start_waiting_service(spawn, binary, "-forever", "-n", "100")
    with GoBinary(binary) as gobin:
        found = {fn.name: fn for fn in gobin.match(SERVICE_FUNCTIONS)}
        functions = traced_functions(gobin, [gobin.probe_sites(found[name]) for name in SERVICE_FUNCTIONS])
        return svc, pid, LatencyTracer(gobin, functions, pid=pid, mode=mode)


@pytest.mark.bpf
@pytest.mark.parametrize("mode", ["uprobe_multi", "perf_link"])
def test_detaching_some_functions_keeps_the_others_exact(spawn, mode):
    """Three detachments while the service runs, each re-creating the links of the functions that stay
    (uprobe_multi), or closing the detached functions' own (perf-event links, Linux before 6.6): the others
    count exactly the service's calls, none lost, none twice, none unmatched."""
    names = list(SERVICE_FUNCTIONS)
    svc, pid, tracer = _traced_service(spawn, mode)
    with tracer:
        assert tracer.attached_by == mode
        os.kill(pid, signal.SIGUSR1)
        for name in ("main.count", "main.fib", "main.grow"):
            time.sleep(0.4)
            tracer.detach([names.index(name)])
        time.sleep(0.4)
        svc.proc.send_signal(signal.SIGINT)
        assert svc.finish(60) == 0, svc.stderr
        counts = tracer.read(reset=False)
        assert tracer.detached_ids() == {3, 4, 5}
    out = parse_service(svc.stdout)
    for name in (HANDLE, WORK):
        got = counts[names.index(name)]
        assert (sum(got.buckets.values()), got.unmatched, got.in_flight) == (out.calls[name], 0, 0), name
    got = counts[names.index(TRY_FAIL)]
    assert sum(got.buckets.values()) == out.calls["main.fail"]


@pytest.mark.bpf
@pytest.mark.parametrize("mode", ["uprobe_multi", "perf_link"])
def test_functions_on_probation_are_counted_then_timed_exactly_once_promoted(spawn, mode):
    """On probation only a function's entry probe is attached: its hits are counted and no call is timed. Once
    promoted (some functions of a chunk, then the rest), every call that enters is timed: none lost, none
    counted twice, none unmatched; a call that entered on probation is never timed, but counted as a probation
    call: timed and probation calls add up to the service's own count."""
    names = list(SERVICE_FUNCTIONS)
    svc, pid, tracer = _traced_service(spawn, mode)
    tracer.probation_for = lambda func_ids: True
    ids = {name: names.index(name) for name in names}
    with tracer:
        assert sorted(tracer.probation_ids()) == list(range(len(names)))
        os.kill(pid, signal.SIGUSR1)
        wait_for(lambda: tracer.hits()[0][ids[WORK]] > 1000, what="main.work's entries on probation")
        time.sleep(0.2)
        assert tracer.hits()[1] == [0] * len(names)  # no return probe
        assert all(sum(c.buckets.values()) == 0 and c.unmatched == 0 for c in tracer.read(reset=False).values())
        before = {}
        for batch in ([ids[HANDLE], ids[WORK]], [ids[TRY_FAIL], ids["main.count"], ids["main.fib"], ids["main.grow"]]):
            low = tracer.hits()[0]
            tracer.promote(batch)
            high = tracer.hits()[0]
            before.update({func_id: (low[func_id], high[func_id]) for func_id in batch})
            time.sleep(0.3)
        assert tracer.probation_ids() == []
        time.sleep(0.3)
        svc.proc.send_signal(signal.SIGINT)
        assert svc.finish(60) == 0, svc.stderr
        counts = tracer.read(reset=False)
    out = parse_service(svc.stdout)
    for name in (HANDLE, WORK):
        got = counts[ids[name]]
        low, high = before[ids[name]]
        timed = sum(got.buckets.values())
        # the calls that entered after the switch, all timed: between (calls - entries by the end of promote())
        # and (calls - entries before it)
        assert out.calls[name] - high <= timed <= out.calls[name] - low, (name, low, high, timed, out.calls[name])
        assert timed > 0 and (got.unmatched, got.in_flight) == (0, 0), name
        assert timed + got.probation_calls == out.calls[name], (name, timed, got.probation_calls)


@pytest.mark.bpf
def test_a_service_traced_with_thousands_of_functions_gets_return_probes_only_where_called(tmp_path, spawn):
    """`'*'` on the test service (over DEFER_RETURNS_MIN_FUNCS functions) with -p: only entry probes are
    registered while attaching; the functions its requests call get their return probes once called, and their
    later calls are timed; main.(*Server).ServeHTTP, never called in -mode loop, never gets its return probes.
    Every call timed is one the service made; none of the service's own is unmatched or left in flight."""
    binary = tmp_path / "service"
    shutil.copy2(service(), binary)  # its own inode: no other run on this machine probes it
    functions = json.loads(subprocess.run(gotrace("funcs", "--json", binary, "*"), capture_output=True, text=True,
                                          check=True).stdout)["functions"]
    assert sum(fn["traceable"] for fn in functions) >= DEFER_RETURNS_MIN_FUNCS
    serve_returns = [vaddr for vaddr, _ in ret_sites(binary, [SERVE_HTTP])]
    work_sites = ret_sites(binary, [WORK])
    work_returns = [vaddr for vaddr, _ in work_sites]
    original = file_bytes(binary, [offset for _, offset in ret_sites(binary, [SERVE_HTTP])])
    int3 = UPROBE_INSN[gobuild.NATIVE_ARCH]
    svc, pid = start_waiting_service(spawn, binary, "-forever", "-n", "100", "-sleep-us", "200")
    tracer = spawn(gotrace("latency", "-p", pid, "*", "--json", "--max-overhead", "100"))
    tracer.wait_line("stderr", r"^Tracing \d+ functions ", timeout=120)
    assert process_bytes(pid, serve_returns + work_returns) == original + file_bytes(
        binary, [offset for _, offset in work_sites])  # no return probe yet: nothing was called
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: process_bytes(pid, work_returns) == [int3] * len(work_returns), 30,
             "main.work's return probes")
    time.sleep(1.0)
    assert process_bytes(pid, serve_returns) == original  # never called: never any return probe
    svc.proc.send_signal(signal.SIGINT)
    assert svc.finish(60) == 0, svc.stderr
    assert tracer.finish(60) == 0, tracer.stderr
    out = parse_service(svc.stdout)
    report = [json.loads(line) for line in tracer.stdout.splitlines() if line.startswith("{")][-1]
    assert report["final"] is True
    by_name = {fn["name"]: fn for fn in report["functions"]}
    for name in (HANDLE, WORK):
        fn = by_name[name]
        assert 0 < fn["count"] <= out.calls[name] and not fn["detached"] and not fn["on_probation"], fn
        assert fn["count"] + fn["probation_calls"] == out.calls[name], fn  # each call timed or counted, once
    assert by_name[SERVE_HTTP]["count"] == 0 and not by_name[SERVE_HTTP]["on_probation"]
    # (the runtime's scheduler functions that switch goroutines and never return, execute, park_m, newstack...,
    # are unmatched with or without this: tracing `'*'` includes them)
    service_own = [fn for fn in report["functions"] if fn["name"].startswith("main.")]
    assert sum(fn["count"] for fn in service_own) > 0
    assert [(fn["name"], fn["unmatched"], fn["in_flight"]) for fn in service_own
            if fn["unmatched"] or fn["in_flight"]] == []


# -- the budget's arithmetic, on numbers given directly (no kernel) -----------------------------------------

class _Fn:
    def __init__(self, func_id: int, name: str, length: int = 0) -> None:
        self.func_id, self.name, self.entry_file_offset = func_id, name, 0
        self.entry_vaddr, self.return_vaddrs = 0x1000, (0x1000 + length,)


class _Counters:
    """What the guard reads of a tracer, given directly: cumulative hits per function, and detach() recording."""

    RETURN_PROGRAM = b"ret"

    def __init__(self, path: Path, n: int) -> None:
        self.binary_path, self.arch = str(path), "amd64"
        self.functions = [_Fn(i, f"main.f{i}") for i in range(n)]
        self.entry, self.ret = [0] * n, [0] * n
        self.detached: set[int] = set()
        self.promoted: list[int] = []
        self.hit_cost_ns = None
        self.fixed_hits, self.fixed_ns = 0, 0  # a probe that is no function's (latency's on runtime.goexit1)

    def add(self, func_id: int, calls: int) -> None:
        self.entry[func_id] += calls
        self.ret[func_id] += calls

    def hits(self):
        return list(self.entry), list(self.ret)

    def hit_counts_bytes(self) -> bytes:
        n = header.constant("GT_FC_N")
        counts = [0] * (n * len(self.functions))
        counts[header.constant("GT_FC_ENTRIES")::n] = self.entry
        counts[header.constant("GT_FC_RETURNS")::n] = self.ret
        return array.array("Q", counts).tobytes()

    def fixed_site_offsets(self):
        return []

    def cost_totals(self):
        entry_ns, return_ns = self.hit_cost_ns
        return (sum(self.entry) + sum(self.ret) + self.fixed_hits,
                sum(e * c for e, c in zip(self.entry, entry_ns)) + sum(self.ret) * return_ns + self.fixed_ns,
                self.fixed_hits, self.fixed_ns)

    def detach(self, func_ids) -> None:
        self.detached |= set(func_ids)

    probation_for = None  # the guard's, when it has a budget

    def promote(self, func_ids) -> None:
        self.promoted += list(func_ids)

    def detached_ids(self):
        return set(self.detached)


class _Cpu:
    def __init__(self) -> None:
        self.ns = 0

    def sample(self) -> int:
        return self.ns


def _guard(tmp_path, n: int, pct: float | None, *, young_s: float = YOUNG_S, attached: bool = True,
           package: str = "main", service: bool = False):
    code = tmp_path / "code"
    code.write_bytes(b"\x55")  # every entry site a push
    tracer, cpu = _Counters(code, n), _Cpu()
    tracer.functions = [_Fn(i, f"{package}.f{i}") for i in range(n)]
    guard = CostGuard(tracer, cost.HitCosts(1000, 10_000, 10_000, "given"), pct, cpu, young_s=young_s,
                      service=service)
    guard.start()
    if attached:
        guard.attached()
    return guard, tracer, cpu


def test_guard_detaches_the_costliest_until_under_budget(tmp_path):
    guard, tracer, cpu = _guard(tmp_path, 4, 5.0, young_s=0.0)  # settled: checks every CHECK_PERIOD_S
    assert not guard.young() and guard.period_s() == CHECK_PERIOD_S
    time.sleep(0.02)
    # a second of the target's CPU; calls cost 11 us each (push entry 1 us + return 10 us)
    for func_id, calls in enumerate([10_000, 3_000, 100, 10]):   # 110 ms, 33 ms, 1.1 ms, 0.11 ms
        tracer.add(func_id, calls)
    cpu.ns = 1_000_000_000
    found = guard.check(force=True)
    # budget 50 ms; down to 80% of it (40 ms): f0 alone leaves 34.2 ms
    assert [d.name for d in found] == ["main.f0"]
    assert found[0].share_of_target == pytest.approx(0.11, rel=0.05)
    assert found[0].total_share_of_target == pytest.approx(0.1442, rel=0.01)
    assert "over the --max-overhead budget of 5%" in found[0].reason
    assert tracer.detached == {0}


@pytest.mark.parametrize("attached", [False, True])
def test_young_guard_checks_often_and_detaches_deeper(tmp_path, attached):
    """While attaching and in the first YOUNG_S after, the guard checks every YOUNG_CHECK_PERIOD_S and detaches
    down to YOUNG_HEADROOM of the budget (a surge of one phase predicts more); the young period restarts at
    each detachment."""
    guard, tracer, cpu = _guard(tmp_path, 600, 5.0, attached=attached)
    assert guard.young() and guard.period_s() == YOUNG_CHECK_PERIOD_S
    time.sleep(0.02)
    for func_id, calls in [(0, 10_000), (1, 3_000), (2, 100), (599, 10)]:   # 599: in another block of functions
        tracer.add(func_id, calls)
    cpu.ns = 1_000_000_000
    found = guard.check(force=True)
    # budget 50 ms; down to 50% of it (25 ms): f0 leaves 34.2 ms, f1 too leaves 1.2 ms
    assert [d.name for d in found] == ["main.f0", "main.f1"]
    assert found[1].hits_per_s > 0 and tracer.detached == {0, 1}
    # the next window ranks only what was hit in it, wherever its block
    time.sleep(0.02)
    tracer.add(599, 20_000)
    cpu.ns += 1_000_000_000
    assert [d.name for d in guard.check(force=True)] == ["main.f599"]
    assert guard.young()


def test_a_young_surge_detaches_down_to_the_surge_headroom(tmp_path):
    """A young window that costs more than SURGE_FACTOR times the budget (load meeting a wide pattern): the guard
    detaches down to SURGE_HEADROOM of the budget, not YOUNG_HEADROOM, in that one check."""
    guard, tracer, cpu = _guard(tmp_path, 5, 5.0)
    time.sleep(0.02)
    # budget 50 ms of a second; 176 + 33 + 22 + 1.1 + 0.11 ms: 4.6 times the budget
    for func_id, calls in enumerate([16_000, 3_000, 2_000, 100, 10]):
        tracer.add(func_id, calls)
    cpu.ns = 1_000_000_000
    found = guard.check(force=True)
    # down to 5% of the budget (2.5 ms): f0, f1 and f2 go (50% of it, 25 ms, would have left f2)
    assert SURGE_HEADROOM * 50 < 1.1 + 0.11 + 22
    assert [d.name for d in found] == ["main.f0", "main.f1", "main.f2"] and tracer.detached == {0, 1, 2}


def test_attaching_is_paced_only_while_the_target_is_busy_and_never_for_likely_hot_functions(tmp_path, monkeypatch):
    """after_chunk: while the target used BUSY_SHARE_OF_CPU or more of a CPU in the last window, a chunk of
    functions unlikely to be hot is followed by a pause of (1 / ATTACH_DUTY - 1) times what attaching it took;
    a chunk of likely hot ones (runtime's) is not, and an idle target is never paused for."""
    from gotrace.trace import guard as guard_module

    code = tmp_path / "code"
    code.write_bytes(b"\x55")
    tracer, cpu = _Counters(code, 4), _Cpu()
    tracer.functions[3].name = "runtime.lock2"
    guard = CostGuard(tracer, cost.HitCosts(1000, 10_000, 10_000, "given"), 5.0, cpu)
    guard.start()
    assert tracer.hot_first == [3]
    real_sleep, slept = time.sleep, []
    monkeypatch.setattr(guard_module.time, "sleep", slept.append)

    def chunk(func_ids, cpu_share: float) -> float:
        """Attach a chunk (taking about 0.06 s), the target using cpu_share of a CPU meanwhile; the pause after."""
        started = time.monotonic()
        real_sleep(0.06)
        cpu.ns += int(cpu_share * (time.monotonic() - started) * 1e9)
        slept.clear()
        guard.after_chunk(func_ids)
        return sum(slept)

    assert chunk([0], 0.0) == 0            # idle target: no pause
    paused = chunk([1], 1.0)                # busy target, a function unlikely to be hot
    assert paused == pytest.approx(0.06 * (1 / guard_module.ATTACH_DUTY - 1), rel=0.5)
    assert chunk([3], 1.0) == 0            # busy, but a likely hot function: at full speed


class _Clock:
    """time for the guard: monotonic() as set, sleep() moves it on."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_probation_detaches_what_would_cost_half_the_budget_and_times_the_rest(tmp_path, monkeypatch):
    """Likely hot functions attached while the target is busy go on probation (entry probes only); PROBATION_S
    later, a check detaches those whose calls, timed, would each cost more than half the budget, times the
    others' calls, and goes on as any check with what is spent."""
    import gotrace.trace.guard as guard_module
    clock = _Clock()
    monkeypatch.setattr(guard_module, "time", clock)
    guard, tracer, cpu = _guard(tmp_path, 5, 5.0, attached=False, package="runtime")
    assert tracer.probation_for is not None
    cpu.ns = 50_000_000  # one CPU busy for the first window (the guard measures it before the first chunk)
    assert tracer.probation_for([0, 1, 2, 3]) is True and clock.now == pytest.approx(100.05)
    # 0.3 s of probation at one busy CPU: 5,000, 1,000, 100 and 0 calls/s, entries only (a push: 1 us each);
    # runtime.f4, timed (not on probation), 2,000 then 4,000 calls/s of 11 us
    calls_per_s = [5_000, 1_000, 100, 0]
    for seconds in (0.1, 0.2):
        clock.now += seconds
        cpu.ns += round(seconds * 1e9)
        for func_id, rate in enumerate(calls_per_s):
            tracer.entry[func_id] += round(rate * seconds)
        tracer.add(4, round((2_000 if seconds == 0.1 else 4_000) * seconds))
        if seconds == 0.1:
            assert guard.check(force=True) == [] and tracer.promoted == []  # not yet PROBATION_S
    assert 0.3 >= PROBATION_S
    found = guard.check(force=True)
    # Timed, f0 would cost 55 ms/s: more than half the 50 ms/s budget; f1 11 and f2 1.1 are timed, f3 (never
    # called) stays on probation. Then the window: 6.1 ms/s of entries and 44 ms/s of f4, over budget: f4 goes
    # (down to 50% of it, young).
    assert [d.name for d in found] == ["runtime.f0", "runtime.f4"] and tracer.detached == {0, 4}
    assert tracer.promoted == [2, 1]  # the cheapest first
    assert found[0].hits_per_s == pytest.approx(10_000) and found[0].share_of_target == pytest.approx(0.055)
    assert ("timing its calls would cost 10,000 probe hits/s (about 5.5% of the target's CPU), more than 50% of "
            "the --max-overhead budget of 5% by itself") in found[0].reason
    assert "over the --max-overhead budget of 5%" in found[1].reason
    clock.now += 0.05
    cpu.ns += 50_000_000
    assert guard.check(force=True) == [] and len(tracer.promoted) == 2  # settled once
    # f3 is called: PROBATION_S after it started over, it is timed
    clock.now += 0.2
    cpu.ns += 200_000_000
    tracer.entry[3] += 10
    assert guard.check(force=True) == [] and tracer.promoted == [2, 1, 3]


def test_probation_lasts_until_the_target_has_been_busy_and_starts_over_while_it_is_not(tmp_path, monkeypatch):
    """No probation for a command gotrace starts while it is not busy, nor for functions not likely to be hot. A
    function on probation is settled only once the target has been busy (BUSY_SHARE_OF_CPU) for PROBATION_S;
    after PROBATION_RESTART_S of a quieter target its probation starts over, its calls counted from then on."""
    import gotrace.trace.guard as guard_module
    clock = _Clock()
    monkeypatch.setattr(guard_module, "time", clock)
    guard, tracer, cpu = _guard(tmp_path, 3, 5.0, attached=False, package="runtime")
    cpu.ns = 2_000_000  # 4% of one CPU: not busy
    assert tracer.probation_for([0]) is False
    _, other, other_cpu = _guard(tmp_path, 3, 5.0, attached=False)
    other_cpu.ns = 50_000_000
    assert other.probation_for([0]) is False  # main.f0: not likely hot
    cpu.ns += 50_000_000
    clock.now += 0.05
    guard.check(force=True)
    assert tracer.probation_for([1, 2]) is True
    # it goes quiet: 2,000 calls of runtime.f1 in 1.1 s (their entries under FLOOR_SHARE_OF_CPU of one CPU), the
    # target at 0.1% of a CPU: no settling, then a restart
    for seconds in (0.3, 0.8):
        clock.now += seconds
        cpu.ns += 1_000_000
        tracer.entry[1] += 1_000
        assert guard.check(force=True) == [] and tracer.promoted == [] and not tracer.detached
    assert 0.3 + 0.8 >= guard_module.PROBATION_RESTART_S
    # then busy for 0.3 s, 30 calls: 100 calls/s, 1.1 ms/s timed (counted from 2,030 calls: 74 ms/s, over half
    # of the 50 ms/s budget: detached); runtime.f2, never called, stays on probation
    clock.now += 0.3
    cpu.ns += 300_000_000
    tracer.entry[1] += 30
    assert guard.check(force=True) == [] and tracer.promoted == [1] and not tracer.detached


def test_promotions_go_in_batches_the_cheapest_first(tmp_path, monkeypatch):
    """At most PROMOTE_MAX_PER_CHECK functions are promoted per check, the cheapest to time first; the others stay
    on probation and go at the next checks."""
    import gotrace.trace.guard as guard_module
    clock = _Clock()
    monkeypatch.setattr(guard_module, "time", clock)
    monkeypatch.setattr(guard_module, "PROMOTE_MAX_PER_CHECK", 2)
    guard, tracer, cpu = _guard(tmp_path, 5, 5.0, attached=False, package="runtime")
    cpu.ns = 50_000_000
    assert tracer.probation_for([0, 1, 2, 3, 4]) is True
    clock.now += 0.3
    cpu.ns += 300_000_000
    for func_id, calls in enumerate([40, 10, 30, 20, 50]):
        tracer.entry[func_id] += calls
    rounds = []
    for _ in range(3):
        guard.check(force=True)
        rounds.append(list(tracer.promoted))
        clock.now += YOUNG_CHECK_PERIOD_S
        cpu.ns += round(YOUNG_CHECK_PERIOD_S * 1e9)
    assert rounds == [[1, 3], [1, 3, 2, 0], [1, 3, 2, 0, 4]] and not tracer.detached


@pytest.mark.parametrize("n_hot", [IDLE_PROBATION_MIN_FUNCS - 1, IDLE_PROBATION_MIN_FUNCS])
def test_a_service_goes_on_probation_while_idle_with_many_likely_hot_functions(tmp_path, monkeypatch, n_hot):
    """In a service (-p, or every process of a binary), IDLE_PROBATION_MIN_FUNCS likely hot functions or more go
    on probation while it is idle too: load may come at any time. Fewer are timed at once."""
    import gotrace.trace.guard as guard_module
    monkeypatch.setattr(guard_module, "time", _Clock())
    guard, tracer, cpu = _guard(tmp_path, n_hot, 5.0, attached=False, package="runtime", service=True)
    cpu.ns = 1_000_000  # idle
    assert tracer.probation_for([0]) is (n_hot >= IDLE_PROBATION_MIN_FUNCS)


@pytest.mark.parametrize("service, n", [(True, DEFER_RETURNS_MIN_FUNCS), (True, DEFER_RETURNS_MIN_FUNCS - 1),
                                        (False, DEFER_RETURNS_MIN_FUNCS)])
def test_tracing_thousands_of_functions_in_a_service_times_each_once_it_has_been_called(tmp_path, monkeypatch,
                                                                                      service, n):
    """In a service traced with DEFER_RETURNS_MIN_FUNCS functions or more, those not likely hot go on probation
    until they are called, idle or not: PROBATION_S after its first call a function is timed, or detached when
    timing it would cost more than half the budget, its calls per second counted from the check before that
    call (not from when it was attached). A function never called is never timed (its return probes never
    registered). Fewer functions, or a command: no probation for them."""
    import gotrace.trace.guard as guard_module
    clock = _Clock()
    monkeypatch.setattr(guard_module, "time", clock)
    guard, tracer, cpu = _guard(tmp_path, n, 5.0, attached=False, service=service)
    cpu.ns = 1_000_000  # idle
    deferred = service and n >= DEFER_RETURNS_MIN_FUNCS
    assert tracer.probation_for([0, 1, 2]) is deferred
    if not deferred:
        return
    guard.attached()

    def tick(seconds: float) -> list:
        clock.now += seconds
        cpu.ns += round(seconds * 10e6)  # 1% of a CPU
        return guard.check(force=True)

    assert tick(5.0) == [] and tracer.promoted == []  # nothing called
    # main.f0 called 10 times, main.f2 200 (their entries 2 ms/s, under the floor of half a percent of one CPU on
    # an idle service): not timed at once
    tracer.entry[0] += 10
    tracer.entry[2] += 200
    assert tick(0.1) == [] and tracer.promoted == [] and not tracer.detached
    # no more calls; PROBATION_S after the check before them: main.f0 (40 calls/s, 0.44 ms/s timed) is timed;
    # main.f2 (800 calls/s, 8.8 ms/s timed, over the floor) is detached (counted from its attaching, 5.25 s
    # before, it would have been 0.4 ms/s); main.f1 stays on probation
    found = tick(PROBATION_S - 0.1)
    assert tracer.promoted == [0] and tracer.detached == {2}
    assert [d.name for d in found] == ["main.f2"] and found[0].hits_per_s == pytest.approx(2 * 200 / PROBATION_S)
    for _ in range(3):
        tick(1.0)
    assert tracer.promoted == [0] and tracer.detached == {2}  # main.f1, never called, never timed


def test_likely_hot_functions_come_first():
    """The runtime's packages first, then the rest of the standard library, the shortest first within each;
    the module's own functions and other modules' are not listed."""
    functions = [_Fn(0, "main.handler", 40), _Fn(1, "net/http.(*conn).serve", 4000), _Fn(2, "runtime.mallocgc", 900),
                 _Fn(3, "github.com/x/y.F", 10), _Fn(4, "sync.(*Mutex).Lock", 60), _Fn(5, "strings.Index", 200),
                 _Fn(6, "internal/runtime/maps.(*Map).getWithKey", 300), _Fn(7, "time.Now", 120),
                 _Fn(8, "golang.org/x/net/http2.(*Framer).ReadFrame", 50)]
    assert likely_hot_first(functions) == [4, 7, 6, 2, 5, 1]


def test_a_fixed_probe_counts_in_the_estimate_but_never_makes_the_guard_detach(tmp_path):
    """latency's probe on runtime.goexit1 is no traced function's: its hits and their cost are in every
    estimate, but the budget is for what detaching can take back, the functions' probes."""
    guard, tracer, cpu = _guard(tmp_path, 2, 5.0, young_s=0.0)
    time.sleep(0.02)
    tracer.add(0, 2_000)                                      # 22 ms: within the 50 ms budget
    tracer.fixed_hits, tracer.fixed_ns = 60_000, 60_000_000   # 60 ms of goroutine exits
    cpu.ns = 1_000_000_000
    assert guard.check(force=True) == [] and tracer.detached == set()
    assert guard.last_window.hits == 2 * 2_000 + 60_000
    assert guard.last_window.share_of_target == pytest.approx(0.082, rel=0.01)
    time.sleep(0.02)
    tracer.add(1, 10_000)                                     # 110 ms: over the budget by itself
    tracer.fixed_hits, tracer.fixed_ns = tracer.fixed_hits + 60_000, tracer.fixed_ns + 60_000_000
    cpu.ns += 1_000_000_000
    found = guard.check(force=True)
    assert [d.name for d in found] == ["main.f1"] and tracer.detached == {1}
    assert found[0].total_share_of_target == pytest.approx(0.17, rel=0.01)  # what the service paid, all of it


def test_guard_leaves_a_nearly_idle_target_alone_and_never_acts_without_budget(tmp_path):
    guard, tracer, cpu = _guard(tmp_path, 1, 5.0)
    time.sleep(0.05)
    tracer.add(0, 10)               # 110 us over >= 50 ms: under the floor (0.5% of a CPU)
    cpu.ns = 150_000                # ... though 73% of the target's tiny CPU time
    assert guard.check(force=True) == [] and guard.last_window.share_of_cpu < FLOOR_SHARE_OF_CPU
    guard, tracer, cpu = _guard(tmp_path, 1, None)
    time.sleep(0.02)
    tracer.add(0, 100_000)
    cpu.ns = 1_000_000_000
    assert guard.check(force=True) == [] and tracer.detached == set()
    assert guard.last_window.share_of_target == pytest.approx(1.1, rel=0.01)
