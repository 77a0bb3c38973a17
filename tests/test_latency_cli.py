"""Acceptance tests of `gotrace latency` run as a user runs it: `python -m gotrace latency ...` against the service.

The service (testdata/service, built by tests/support/gobuild.py) prints how often it
called each of its functions (`calls <func> <count>`); those counts are the
ground truth the reports must equal. Every target form of the CLI contract
(/work/shared/cli-contract.md) is exercised: `-c COMMAND` (gotrace starts the
service and stops when it exits), `-p PID` (attach to a running service, stop
with SIGINT, SIGTERM or SIGKILL; also a service inside its own mount and pid
namespaces whose binary the host cannot see), and the binary form (probes
apply to processes started after gotrace). The service must never notice:
its output, exit status and progress are checked after each run.

Processes are watched by pid, or run from a private copy of the binary, so
concurrent gotrace runs on this machine cannot change the counts. The helpers
at the top (start_*, parse_*, check_contract) are also used by
tests/test_latency_thirdparty.py and tests/test_latency_stress.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from support import gobuild
from support.cli import gotrace_argv, run_command, run_gotrace_process
from support.hermetic import private_copy
from support.processes import Running

HANDLE = "main.(*Server).handle"
WORK = "main.work"
TRY_FAIL = "main.tryFail"
SERVE_HTTP = "main.(*Server).ServeHTTP"   # only called in -mode http: matched, never called in -mode loop

# (version, mode) of the -c tests: the pinned default and stripped builds, and another toolchain as PIE.
COMMAND_BUILDS = [("1.23.9", "default"), ("1.23.9", "stripped"), ("1.27.3", "pie")]
BUILD = ("1.23.9", "default")             # the build of the single-build tests (static, non-PIE)


def service(version: str = BUILD[0], mode: str = BUILD[1]) -> Path:
    """The service for this machine's arch (arm64 inside `scripts/vmtest arm64`)."""
    return gobuild.build("service", version, mode, gobuild.NATIVE_ARCH)


# -- processes that tests watch while they run -----------------------------------------------

def start_traced_gotrace(spawn, *args: object) -> tuple[Running, float]:
    """Start gotrace latency ARGS; (it, time its probes were in place: when it printed its 'Tracing' header)."""
    gotrace = spawn(gotrace_argv("latency", *args))
    attached_at, _ = gotrace.wait_line("stderr", r"^Tracing \d+ functions? ")
    return gotrace, attached_at


def start_waiting_service(spawn, binary: Path, *flags: str) -> tuple[Running, int]:
    """The service with -wait (it sits before its first request until SIGUSR1); (it, its pid)."""
    svc = spawn([str(binary), "-wait", *flags])
    _, m = svc.wait_line("stdout", r"^ready pid=(\d+)$", timeout=30)
    assert int(m.group(1)) == svc.pid
    return svc, svc.pid


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def assert_running(svc: Running) -> None:
    """The service has not ended; if it has, say how (status, its last output) rather than fail later on /proc."""
    code = svc.proc.poll()
    assert code is None, (f"the traced service (pid {svc.pid}) ended with status {code}; "
                          f"stdout tail={svc.stdout[-1500:]!r} stderr tail={svc.stderr[-3000:]!r}")


def assert_alive_and_progressing(pid: int) -> None:
    """The process exists, is not a zombie, and uses CPU over the next 1.5 s (it still makes progress)."""
    assert process_state(pid) not in (None, "Z", "X"), f"pid {pid} is gone"
    before = cpu_ticks(pid)
    time.sleep(1.5)
    assert process_state(pid) not in (None, "Z", "X"), f"pid {pid} died"
    assert cpu_ticks(pid) > before, f"pid {pid} stopped making progress (no CPU time in 1.5 s)"


# -- what the service prints -----------------------------------------------------------------

@dataclass
class ServiceOutput:
    summary: dict[str, str]        # key=value fields of the "service summary:" line
    calls: dict[str, int]          # "calls <func> <count>" lines

    def stable(self) -> tuple:
        """Everything but the elapsed time: equal for two runs of the same workload."""
        return ({k: v for k, v in self.summary.items() if k != "elapsed_ms"}, self.calls)


def parse_service(stdout: str) -> ServiceOutput:
    summaries = re.findall(r"^service summary: (.*)$", stdout, re.M)
    assert len(summaries) == 1, f"expected one service summary line in {stdout!r}"
    summary = dict(field.split("=", 1) for field in summaries[0].split())
    calls = {name: int(n) for name, n in re.findall(r"^calls (\S+) (\d+)$", stdout, re.M)}
    assert calls, f"no 'calls' lines in {stdout!r}"
    return ServiceOutput(summary, calls)


def assert_summary_consistent(out: ServiceOutput, per_round: int) -> None:
    """A -forever run stopped by a signal: whole rounds, every request handled once, counts as the workload defines."""
    s = {k: int(v) for k, v in out.summary.items() if v.isdigit()}
    assert s["rounds"] >= 1
    assert s["requests"] == s["rounds"] * per_round == s["handled"]
    assert out.calls[HANDLE] == out.calls[WORK] == s["handled"]
    assert out.calls["main.fail"] == s["recovered"] == s["requests"] // 10     # kind 2: tryFail recovers fail's panic
    assert s["work_errors"] == s["requests"] // 50                              # i % 50 == 49: work returns an error


@lru_cache(maxsize=None)
def untraced_run(binary: str, *flags: str) -> ServiceOutput:
    """The service's output for a workload when nothing traces it (counts are deterministic per workload)."""
    proc = subprocess.run([binary, *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return parse_service(proc.stdout)


# -- what gotrace prints -------------------------------------------------------------------------

# Go names may hold single spaces: sync.OnceValue[go.shape.interface { Error() string }].func1
_TITLE = re.compile(r"^(\S.*?)  (?:(\d+) calls?|no calls|no timed calls)(?:, (\d+) in flight \(oldest \S+\))?"
                    r"(?:, (\d+) unmatched \(.*?\))?(?:, on probation.*?|, \d+ counted on probation \(not timed\))?"
                    r"(?:, detached by the cost guard)?$")
_IDLE = re.compile(r"^([\d,]+) functions? had no calls(?: \(-v lists them\)|: (.*))$")


def parse_text_reports(stdout: str) -> list[dict[str, tuple[int, int]]]:
    """Text reports ('--- HH:MM:SS  last Ns ---' starts each one with -i): [{function: (count, unmatched)}].

    Functions named on the line "N functions had no calls: a, b" (-v) count as (0, 0)."""
    reports: list[dict[str, tuple[int, int]]] = [{}]
    for line in stdout.splitlines():
        if re.match(r"^--- \d\d:\d\d:\d\d  last \d+\.\ds ---$", line):
            if reports[-1]:
                reports.append({})
            continue
        m = _TITLE.match(line)
        if m:
            name = m.group(1)
            assert name not in reports[-1], f"{name} twice in one report"
            reports[-1][name] = (int(m.group(2) or 0), int(m.group(4) or 0))
    return [r for r in reports if r]


def in_flight_of(stdout: str) -> dict[str, int]:
    """function -> calls in flight, of the last text report."""
    found = {}
    for line in stdout.splitlines():
        m = _TITLE.match(line)
        if m:
            found[m.group(1)] = int(m.group(3) or 0)
    return found


def parse_json_reports(stdout: str) -> list[dict]:
    """The JSON Lines reports among stdout's lines (the -c service's own lines are plain text)."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


_STAT_FIELDS = ("mean_ns", "min_ns", "max_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns")  # null without calls
_INT_FIELDS = ("count", *_STAT_FIELDS, "unmatched", "in_flight", "untimed", "probation_calls")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_contract(doc: dict) -> dict[str, dict]:
    """Validate one `gotrace latency --json` object against the CLI contract, version 2 (keys and types exactly,
    and the statistics' own consistency); its functions by name."""
    # the contract's keys, and gotrace's documented additions (README): the cost estimate, the --slow counts,
    # the floor
    assert set(doc) - {"overhead", "slow", "floor_ns"} == {"event", "target", "interval_s", "ts_start_ns",
                                                           "ts_end_ns", "final", "functions"}, sorted(doc)
    assert doc["event"] == "report" and isinstance(doc["final"], bool)
    assert _is_int(doc["ts_start_ns"]) and _is_int(doc["ts_end_ns"])
    assert 1.7e18 < doc["ts_start_ns"] < doc["ts_end_ns"] < time.time_ns() + 1, doc
    if "overhead" in doc:
        assert set(doc["overhead"]) == {"hits_per_s", "goroutine_exit_hits_per_s", "cpu_share_of_one_cpu",
                                        "cpu_share_of_target", "max_overhead_pct"}, doc["overhead"]
    target = doc["target"]
    assert set(target) == {"binary", "pid", "go_version"}, sorted(target)
    assert isinstance(target["binary"], str) and target["binary"]
    assert target["pid"] is None or (_is_int(target["pid"]) and target["pid"] > 0)
    assert isinstance(target["go_version"], str) and target["go_version"].startswith("go")
    assert isinstance(doc["interval_s"], float) and doc["interval_s"] > 0
    assert isinstance(doc["functions"], list) and doc["functions"]
    by_name = {}
    for fn in doc["functions"]:
        assert set(fn) == {"name", *_INT_FIELDS, "buckets", "oldest_in_flight_ns", "detached", "on_probation"}, \
            sorted(fn)
        assert isinstance(fn["name"], str) and fn["name"] not in by_name
        for key in _INT_FIELDS:
            if key in _STAT_FIELDS and not fn["count"]:
                assert fn[key] is None, (fn["name"], key, fn[key])
            else:
                assert _is_int(fn[key]) and fn[key] >= 0, (fn["name"], key, fn[key])
        assert (fn["oldest_in_flight_ns"] is None) == (fn["in_flight"] == 0), fn
        assert isinstance(fn["detached"], bool)
        assert isinstance(fn["on_probation"], bool) and not (fn["on_probation"] and fn["count"]), fn
        assert isinstance(fn["buckets"], list)
        previous_high = 0
        for bucket in fn["buckets"]:
            assert set(bucket) == {"low_ns", "high_ns", "count"}, sorted(bucket)
            assert all(_is_int(bucket[k]) for k in bucket), bucket
            assert previous_high <= bucket["low_ns"] < bucket["high_ns"] and bucket["count"] > 0, bucket
            previous_high = bucket["high_ns"]
        assert sum(b["count"] for b in fn["buckets"]) == fn["count"], fn["name"]
        if fn["count"]:
            first, last = fn["buckets"][0], fn["buckets"][-1]
            assert first["low_ns"] <= fn["min_ns"] <= first["high_ns"], fn
            assert last["low_ns"] <= fn["max_ns"] <= last["high_ns"], fn
            assert fn["min_ns"] <= fn["p50_ns"] <= fn["p90_ns"] <= fn["p99_ns"] <= fn["p999_ns"] <= fn["max_ns"], fn
            assert fn["min_ns"] <= fn["mean_ns"] <= fn["max_ns"], fn
        else:
            assert fn["buckets"] == [], fn
        by_name[fn["name"]] = fn
    return by_name


# -- probes, as the kernel and the traced process see them -------------------------------------------

def ret_sites(binary: Path, patterns: list[str]) -> list[tuple[int, int]]:
    """(vaddr, file_offset) of every return site gotrace probes for `patterns` (from `gotrace funcs --json`)."""
    from elftools.elf.elffile import ELFFile

    proc = run_gotrace_process("funcs", "--json", binary, *patterns, timeout=120)
    assert proc.returncode == 0, proc.stderr
    vaddrs = [fn["entry"] + ret for fn in json.loads(proc.stdout)["functions"] if fn["traceable"]
              for ret in fn["returns"]]
    with open(binary, "rb") as f:
        loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD" and s["p_flags"] & 1]
    sites = []
    for vaddr in vaddrs:
        seg = next(s for s in loads if s["p_vaddr"] <= vaddr < s["p_vaddr"] + s["p_filesz"])
        sites.append((vaddr, vaddr - seg["p_vaddr"] + seg["p_offset"]))
    return sites


# Per arch: the bytes of a return instruction, and of the breakpoint the kernel writes over a probed one
# (amd64: ret, int3; arm64: ret, `brk #0x5`, the kernel's UPROBE_SWBP_INSN), little-endian.
RET_INSN = {"amd64": b"\xc3", "arm64": (0xD65F03C0).to_bytes(4, "little")}
UPROBE_INSN = {"amd64": b"\xcc", "arm64": (0xD42000A0).to_bytes(4, "little")}


def process_bytes(pid: int, vaddrs: list[int]) -> list[bytes]:
    """The instruction-sized bytes at each vaddr of the process's memory."""
    size = len(RET_INSN[gobuild.NATIVE_ARCH])
    with open(f"/proc/{pid}/mem", "rb") as mem:
        out = []
        for vaddr in vaddrs:
            mem.seek(vaddr)
            out.append(mem.read(size))
        return out


def file_bytes(path: Path, offsets: list[int]) -> list[bytes]:
    size = len(RET_INSN[gobuild.NATIVE_ARCH])
    data = path.read_bytes()
    return [data[o:o + size] for o in offsets]


def bpf_ids(pid: int) -> dict[str, set[int]]:
    """The BPF programs, maps and links a process holds, by kernel id (from /proc/PID/fdinfo)."""
    ids: dict[str, set[int]] = {"prog": set(), "map": set(), "link": set()}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for kind in ids:
            m = re.search(rf"^{kind}_id:\s*(\d+)$", text, re.M)
            if m:
                ids[kind].add(int(m.group(1)))
    return ids


_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
_GET_FD_BY_ID = {"prog": 13, "map": 14, "link": 30}    # BPF_PROG/MAP/LINK_GET_FD_BY_ID


def bpf_object_exists(kind: str, obj_id: int) -> bool:
    """Whether the kernel still has the BPF program/map/link with this id (ids are not reused soon)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.create_string_buffer(struct.pack("<IIII", obj_id, 0, 0, 0), 16)
    fd = libc.syscall(_SYS_BPF, _GET_FD_BY_ID[kind], attr, 16)
    if fd >= 0:
        os.close(fd)
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        return False
    raise OSError(err, f"bpf(GET_FD_BY_ID {kind} {obj_id})")


def tracefs_uprobe_events() -> str:
    for path in ("/sys/kernel/tracing/uprobe_events", "/sys/kernel/debug/tracing/uprobe_events"):
        if os.path.exists(path):
            return Path(path).read_text()
    return ""


# == -c COMMAND ===========================================================================================

def _command_args(binary: Path, *extra: str) -> list[object]:
    return ["-c", f"{binary} -n 200", binary, HANDLE, WORK, TRY_FAIL, "main.fail", SERVE_HTTP, "-v", *extra]


def _check_command_run(proc: subprocess.CompletedProcess, binary: Path) -> ServiceOutput:
    """What every -c run must show: exit 0, the skip notice for main.fail, the service's output intact
    (identical to an untraced run but for elapsed_ms) and its exit status 0."""
    assert proc.returncode == 0, proc.stderr
    assert "gotrace: skipping main.fail: no return instruction" in proc.stderr
    assert re.search(r"^Tracing 4 functions \(\d+ probe sites\) in ", proc.stderr, re.M), proc.stderr
    assert re.search(r"^gotrace: \S+ \(pid \d+\) exited with status 0$", proc.stderr, re.M), proc.stderr
    assert "Traceback" not in proc.stderr
    traced = parse_service(proc.stdout)
    assert traced.stable() == untraced_run(str(binary), "-n", "200").stable()
    return traced


@pytest.mark.bpf
@pytest.mark.parametrize("version,mode", COMMAND_BUILDS, ids=[f"go{v}-{m}" for v, m in COMMAND_BUILDS])
def test_command_text_counts_equal_service_counts(version, mode):
    """`-c 'service -n 200'`: per function, the text report's count is the service's own count.

    main.tryFail calls main.fail, which panics; tryFail's deferred recover makes
    it return normally, so its calls are all matched (0 unmatched), while
    main.fail itself has no ret and is skipped with a message. The service has
    no traceable function whose frame a panic unwinds, so a report with
    unmatched > 0 is not exercised here (tests/test_tracer_bpf.py owns that).
    """
    binary = service(version, mode)
    proc = run_gotrace_process("latency", *_command_args(binary))
    out = _check_command_run(proc, binary)
    reports = parse_text_reports(proc.stdout)
    assert len(reports) == 1, proc.stdout
    assert reports[0] == {
        HANDLE: (out.calls[HANDLE], 0),
        WORK: (out.calls[WORK], 0),
        TRY_FAIL: (out.calls["main.fail"], 0),
        SERVE_HTTP: (0, 0),
    }
    assert out.calls[HANDLE] == 200 and out.calls["main.fail"] == 20
    # The report comes after the service's last line: the service had ended.
    assert proc.stdout.index("calls main.work") < proc.stdout.index(f"{HANDLE}  200 calls")


@pytest.mark.bpf
@pytest.mark.parametrize("version,mode", COMMAND_BUILDS, ids=[f"go{v}-{m}" for v, m in COMMAND_BUILDS])
def test_command_json_follows_contract_and_counts_equal_service_counts(version, mode):
    """`-c ... --json`: one JSON object, exactly the contract's keys and types, counts equal the service's."""
    binary = service(version, mode)
    proc = run_gotrace_process("latency", *_command_args(binary, "--json"))
    out = _check_command_run(proc, binary)
    docs = parse_json_reports(proc.stdout)
    assert len(docs) == 1, proc.stdout
    functions = check_contract(docs[0])
    child_pid = int(re.search(r"\(pid (\d+)\) exited", proc.stderr).group(1))
    assert docs[0]["target"] == {"binary": str(binary), "pid": child_pid, "go_version": f"go{version}"}
    assert {name: (fn["count"], fn["unmatched"]) for name, fn in functions.items()} == {
        HANDLE: (out.calls[HANDLE], 0),
        WORK: (out.calls[WORK], 0),
        TRY_FAIL: (out.calls["main.fail"], 0),
        SERVE_HTTP: (0, 0),
    }
    # handle calls work: it cannot be faster than work, and work's mean is far below handle's.
    assert functions[HANDLE]["min_ns"] > functions[WORK]["min_ns"]
    assert functions[HANDLE]["mean_ns"] > functions[WORK]["mean_ns"]


@pytest.mark.bpf
def test_unit_us_formats_every_duration_in_microseconds():
    """`--unit us`: every statistic and every histogram range label is in us, even for handle, whose
    slow calls take milliseconds (auto would say ms)."""
    binary = service()
    proc = run_gotrace_process("latency", "-c", f"{binary} -n 100", binary, HANDLE, WORK, "--unit", "us")
    assert proc.returncode == 0, proc.stderr
    # per function: its title, then its statistics (one line, or more when long), then the histogram
    blocks = re.findall(r"^(\S+)  100 calls\n((?:  (?!\s*latency ).*\n)+)", proc.stdout, re.M)
    assert sorted(name for name, _ in blocks) == sorted([HANDLE, WORK]), proc.stdout
    for name, stats in blocks:
        values = dict(re.findall(r"(mean|p50|p90|p99|p99\.9|max) (\S+)", stats))
        assert set(values) == {"mean", "p50", "p90", "p99", "p99.9", "max"}, stats
        for text in values.values():
            assert re.fullmatch(r"\d+(\.\d+)?us", text), (name, text)
        assert float(values["p50"][:-2]) <= float(values["p99"][:-2]) <= float(values["max"][:-2]), stats
    labels = re.findall(r"^\s+(\S+) -\s+(\S+)\s+\d+\s+\d+\.\d%", proc.stdout, re.M)
    assert labels, proc.stdout
    for low, high in labels:
        assert low.endswith("us") and high.endswith("us") and not low.endswith(("ns", "ms")), (low, high)
    # handle takes tens of microseconds or more: with auto units the same run would not say "us" everywhere.
    handle_max = re.search(r"max (\d+(?:\.\d+)?)us", dict(blocks)[HANDLE])
    assert handle_max and float(handle_max.group(1)) >= 10, proc.stdout


@pytest.mark.bpf
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_interval_reports_reset_and_add_up_to_the_total(as_json):
    """`-i 1`: several reports while the service runs, each saying how long it covers; each starts from zero,
    so their counts add up to the service's total (a report that did not reset would make the sum larger).

    No wall-clock bound on a single interval (a loaded machine delays a report and shortens the next one):
    the reports together cover the service's own run time, and a run of at least 4 s gives at least three."""
    binary = service()
    # One worker; kinds 4 and 6 wait 100 ms each: 200 requests take at least 4 s.
    command = f"{binary} -n 200 -workers 1 -sleep-us 100000"
    proc = run_gotrace_process("latency", "-c", command, binary, HANDLE, "-i", "1", *(["--json"] if as_json else []))
    assert proc.returncode == 0, proc.stderr
    out = parse_service(proc.stdout)
    total = out.calls[HANDLE]
    assert total == 200
    if as_json:
        docs = parse_json_reports(proc.stdout)
        counts = [check_contract(doc)[HANDLE]["count"] for doc in docs]
        intervals = [doc["interval_s"] for doc in docs]
        rounding_s = 0.0
    else:
        counts = [report[HANDLE][0] for report in parse_text_reports(proc.stdout)]
        stamps = re.findall(r"^--- \d\d:\d\d:\d\d  last (\d+\.\d)s ---$", proc.stdout, re.M)
        assert len(stamps) == len(counts), proc.stdout
        intervals = [float(s) for s in stamps]
        rounding_s = 0.05 * len(intervals)     # printed with one decimal
    print(f"interval counts of {HANDLE}: {counts} (total {total}); intervals {intervals} s")
    assert all(s > 0 for s in intervals[:-1]), intervals
    # gotrace's reports span the service's run (released after the probes were in place, reported after its exit;
    # 0.5 s for the instants between the release and gotrace's first clock reading on a loaded machine)
    assert sum(intervals) + rounding_s + 0.5 >= int(out.summary["elapsed_ms"]) / 1000, (intervals, out.summary)
    assert len(counts) >= 3, counts
    assert sum(counts) == total, counts
    assert sum(1 for c in counts if c) >= 2 and max(counts) < total, counts


# == -p PID ================================================================================================

@pytest.mark.bpf
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pid_mode_stops_on_signal_with_final_report_and_service_keeps_running(spawn, stop_signal):
    """`-p PID`, stopped by SIGINT or SIGTERM: the final report is printed, gotrace exits 0, and the service
    goes on as if nothing happened (alive, still working; stopped later, its summary is whole and exit 0)."""
    binary = service()
    svc, pid = start_waiting_service(spawn, binary, "-forever", "-n", "100")
    gotrace, _ = start_traced_gotrace(spawn, "-p", pid, HANDLE, WORK, "--json")
    assert f"in {binary} pid {pid} (go1.23.9)" in gotrace.stderr
    os.kill(pid, signal.SIGUSR1)
    time.sleep(2.5)
    gotrace.proc.send_signal(stop_signal)
    assert gotrace.finish(60) == 0, gotrace.stderr
    docs = parse_json_reports(gotrace.stdout)
    assert len(docs) == 1, gotrace.stdout
    functions = check_contract(docs[0])
    assert docs[0]["target"] == {"binary": str(binary), "pid": pid, "go_version": "go1.23.9"}
    seen = functions[HANDLE]["count"]
    # work runs inside handle: equal but for the calls in flight while the final report was read
    assert seen > 0 and abs(functions[WORK]["count"] - seen) <= 8, (seen, functions[WORK]["count"])

    assert_alive_and_progressing(pid)
    svc.proc.send_signal(signal.SIGINT)
    assert svc.finish(60) == 0, svc.stderr
    out = parse_service(svc.stdout)
    assert_summary_consistent(out, per_round=100)
    assert out.calls[HANDLE] > seen, "the service handled nothing after gotrace stopped"
    print(f"{stop_signal.name}: gotrace saw {seen} calls of {HANDLE}; the service made {out.calls[HANDLE]}")


@pytest.mark.bpf
def test_sigkill_of_gotrace_leaves_no_probe_and_service_keeps_running(spawn, private_binary):
    """SIGKILL of gotrace: the service keeps running and nothing of ours stays attached to it.

    "No probe remains" is checked three ways, each with a reading taken while
    gotrace runs to show that the check sees a probe when there is one:

    1. The traced process's own code: while a uprobe is registered on an
       instruction, the kernel has replaced it with a breakpoint (amd64 int3,
       arm64 brk #0x5) in the process's copy of the page, visible in
       /proc/PID/mem; when the last uprobe on it goes, the original
       instruction is put back. Every ret site of the traced functions must
       read the breakpoint while attached and the file's ret after the kill. The binary is a private copy (its own inode), so
       another gotrace tracing the cached build cannot hold probes on it.
    2. The BPF objects: the ids of the programs, maps and links gotrace held
       (from /proc/<gotrace>/fdinfo) must no longer exist in the kernel
       (BPF_*_GET_FD_BY_ID gives ENOENT); ids are not reused soon.
    3. tracefs: /sys/kernel/tracing/uprobe_events has no entry for the binary
       (gotrace attaches by file descriptors, never through tracefs, so this
       must hold before and after).
    """
    binary = private_binary(service())
    sites = ret_sites(binary, [HANDLE, WORK])
    vaddrs = [v for v, _ in sites]
    original = file_bytes(binary, [o for _, o in sites])
    assert set(original) == {RET_INSN[gobuild.NATIVE_ARCH]}, original

    svc, pid = start_waiting_service(spawn, binary, "-forever", "-n", "100")
    assert process_bytes(pid, vaddrs) == original
    gotrace, _ = start_traced_gotrace(spawn, "-p", pid, HANDLE, WORK)
    os.kill(pid, signal.SIGUSR1)
    time.sleep(1.0)
    held = bpf_ids(gotrace.pid)
    assert held["prog"] and held["link"] and held["map"], held
    assert all(bpf_object_exists(kind, i) for kind, ids in held.items() for i in ids)
    assert_running(svc)
    assert process_bytes(pid, vaddrs) == [UPROBE_INSN[gobuild.NATIVE_ARCH]] * len(vaddrs), \
        "probes not visible while attached"
    assert str(binary) not in tracefs_uprobe_events()

    gotrace.proc.kill()
    gotrace.finish(30)
    deadline = time.monotonic() + 10
    while True:
        left = {kind: {i for i in ids if bpf_object_exists(kind, i)} for kind, ids in held.items()}
        restored = process_bytes(pid, vaddrs) == original
        if (restored and not any(left.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert restored, f"probe breakpoints remain in pid {pid}: {process_bytes(pid, vaddrs)}"
    assert not any(left.values()), f"BPF objects of the killed gotrace remain: {left}"
    events = tracefs_uprobe_events()
    assert str(binary) not in events, events

    assert_alive_and_progressing(pid)
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.finish(60) == 0, svc.stderr
    assert_summary_consistent(parse_service(svc.stdout), per_round=100)


@pytest.mark.bpf
def test_pid_in_container_namespace_counts_equal_service_counts(spawn, tmp_path):
    """A service in its own mount and pid namespaces, run from a tmpfs the host cannot see (as in a container):
    `-p HOSTPID` reads the binary through /proc/PID/exe, and the counts equal the service's."""
    root = tmp_path / "root"
    root.mkdir()
    binary = service()   # static (CGO_ENABLED=0): runs in an empty root
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    inner = (f"mount -t tmpfs gotrace-test {root} && cp {binary} {root}/service && "
             f"exec {chroot} {root} /service -wait -n 300")
    box = spawn(["unshare", "--mount", "--pid", "--fork", "sh", "-c", inner])
    box.wait_line("stdout", r"^ready pid=1$", timeout=30)        # pid 1 of its own pid namespace
    children = Path(f"/proc/{box.pid}/task/{box.pid}/children").read_text().split()
    assert len(children) == 1, children
    pid = int(children[0])
    assert os.readlink(f"/proc/{pid}/exe") == f"{root}/service"   # a path inside the namespace only
    assert not (root / "service").exists()                           # the host sees an empty directory

    gotrace, _ = start_traced_gotrace(spawn, "-p", pid, HANDLE, WORK, TRY_FAIL)
    os.kill(pid, signal.SIGUSR1)
    assert gotrace.finish(120) == 0, gotrace.stderr          # the service's exit ends tracing
    assert box.finish(30) == 0, box.stderr
    out = parse_service(box.stdout)
    assert out.calls[HANDLE] == 300
    reports = parse_text_reports(gotrace.stdout)
    assert reports == [{HANDLE: (out.calls[HANDLE], 0), WORK: (out.calls[WORK], 0),
                        TRY_FAIL: (out.calls["main.fail"], 0)}]


# == the binary form: every process, started later ===================================================

@pytest.mark.bpf
def test_binary_form_counts_processes_started_later_and_duration_ends_it(spawn, private_binary):
    """`gotrace latency ./bin PATTERN -d 3`, the service started after gotrace attached: its calls are counted
    exactly, and gotrace ends by itself (-d), though nothing it traces is running then and no signal is sent.

    The binary is a private copy: its probes fire only in the processes this test starts."""
    binary = private_binary(service())
    gotrace, _ = start_traced_gotrace(spawn, binary, HANDLE, WORK, TRY_FAIL, "-d", 3)
    assert f"in {binary}, every process (go1.23.9)" in gotrace.stderr
    first = subprocess.run([str(binary), "-n", "150"], capture_output=True, text=True, timeout=60)
    second = subprocess.run([str(binary), "-n", "50"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert gotrace.finish(60) == 0, gotrace.stderr
    a, b = parse_service(first.stdout), parse_service(second.stdout)
    reports = parse_text_reports(gotrace.stdout)
    assert reports == [{HANDLE: (a.calls[HANDLE] + b.calls[HANDLE], 0), WORK: (a.calls[WORK] + b.calls[WORK], 0),
                        TRY_FAIL: (a.calls["main.fail"] + b.calls["main.fail"], 0)}]
    assert reports[0][HANDLE][0] == 200


# == refusals ===========================================================================================

def _free_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 1, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


BAD_USAGE = {
    "no-pattern": (lambda b: [b], "missing PATTERN"),
    "pid-no-pattern": (lambda b: ["-p", os.getpid()], "missing PATTERN"),
    "pattern-matches-nothing": (lambda b: [b, "nosuchpkg.*"], "no function matches 'nosuchpkg.*'"),
    "pid-and-command": (lambda b: ["-p", os.getpid(), "-c", f"{b} -n 1", b, WORK], "-p and -c exclude each other"),
    "no-such-pid": (lambda b: ["-p", _free_pid(), WORK], "no process with pid"),
    "untraceable-only": (lambda b: [b, "main.fail"], "main.fail cannot be traced for latency"),
}


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_bad_usage_is_one_line_and_exit_2(case):
    make_args, message = BAD_USAGE[case]
    proc = run_gotrace_process("latency", *make_args(service()))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotrace: ") and message in lines[0], proc.stderr


@pytest.mark.bpf
def test_command_running_another_binary_is_one_line_exit_2_and_is_stopped(tmp_path):
    """`-c './other' ./bin`: the command's /proc/PID/exe is not ./bin, so the probes could never fire: one line,
    exit 2, and the command (started for this trace, now pointless) does not keep running."""
    binary = service()
    other = private_copy(service("1.27.3", "default"), tmp_path)
    proc = run_gotrace_process("latency", "-c", f"{other} -wait", binary, WORK)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == (f"gotrace: -c: the command runs {other}, not {binary}, the binary the probes are on: "
                         f"give -c a command that runs {binary} (or trace {other})"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout.startswith("ready pid=")
    pid = int(re.match(r"ready pid=(\d+)", proc.stdout).group(1))
    assert process_state(pid) is None, "the -c command was left running"


@pytest.mark.bpf
def test_pid_target_exit_is_reported(spawn):
    """`-p PID`: when the process exits, gotrace says so (as it does for -c) after the final report."""
    binary = service()
    svc, pid = start_waiting_service(spawn, binary, "-n", "50")
    gotrace, _ = start_traced_gotrace(spawn, "-p", pid, HANDLE)
    os.kill(pid, signal.SIGUSR1)
    assert svc.finish(60) == 0
    assert gotrace.finish(60) == 0, gotrace.stderr
    assert gotrace.stderr.splitlines()[-1] == f"gotrace: process {pid} ({binary}) exited", gotrace.stderr
    assert parse_text_reports(gotrace.stdout) == [{HANDLE: (50, 0)}]


def test_unreadable_pid_as_root_does_not_say_run_as_root():
    """As root, a process whose /proc/PID/exe cannot be read (pid 1 here: not dumpable, or another user
    namespace) or that is not a Go program gets one line that does not tell root to become root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = run_gotrace_process("latency", "-p", 1, WORK)
    assert proc.returncode in (2, 3), proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotrace: "), proc.stderr
    assert "as root" not in lines[0] and "sudo" not in lines[0], lines[0]


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.bpf
@pytest.mark.parametrize("form", ["command", "binary", "pid"])
def test_non_root_is_one_line_and_exit_3(spawn, form):
    """As user nobody, every target form ends with one line saying root is needed, exit 3; a -c command
    never starts."""
    binary = service()
    if form == "pid":
        svc, pid = start_waiting_service(spawn, binary)     # root's process: nobody may not inspect it
        args = ["-p", pid, WORK]
    else:
        args = (["-c", f"{binary} -n 5"] if form == "command" else []) + [binary, WORK]
    proc = run_command(NOBODY + gotrace_argv("latency", *args), timeout=120)
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotrace: ") and "root" in lines[0], proc.stderr
    assert "service summary" not in proc.stdout and proc.stdout == ""
