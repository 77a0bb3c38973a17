"""gotrace on a machine or target that misbehaves: each situation ends with a clear outcome.

Run through the real command line, as a user would meet them:

* not root, BPF refused by the kernel (seccomp filter as in Docker's default
  profile; a user namespace as in a rootless container): exit 3 and one line
  saying what is missing and what to do;
* no kernel headers and no bcc anywhere: tracing works as usual;
* tracefs unmounted: tracing works and detaches as usual, without noise;
* the -p process is gone before tracing starts: exit 2, one line; it exits
  while traced: final report with the right counts, exit 0;
* two gotraces on the same process at once: both count every call;
* maps flooded (testdata/churn: a million calls that never return, 100000
  goroutines parked inside a traced function): gotrace's memory and its BPF
  maps stay bounded, what could not be paired is counted as `unmatched`,
  and pairing is exact again once the flood is over.

Signals (SIGINT, SIGTERM, SIGKILL) and leftover probes are covered in
test_latency_cli.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import gobuild
from support.cli import gotrace_argv, run_command
from support.processes import Running

SERVICE_VERSION = "1.23.9"
NOBODY = 65534


def service_binary() -> Path:
    return gobuild.build("service", SERVICE_VERSION, "default")


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("gotrace: "), lines[0]
    return lines[0]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GOTRACE_DEBUG",)}
    env.update(extra)
    return env


# -- a service process held at its start -------------------------------------------


class HeldService:
    """testdata/service started with -wait: it runs its requests after SIGUSR1."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([str(service_binary()), "-wait", "-json", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready pid="), line
        self.pid = self.proc.pid

    def go(self) -> dict:
        """Start the requests; the summary it prints (calls per function) once done."""
        os.kill(self.pid, signal.SIGUSR1)
        out, err = self.proc.communicate(timeout=180)
        assert self.proc.returncode == 0, err
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_tracer(spawn, *args: str) -> Running:
    """`gotrace latency ARGS`, running; returns once it printed its "Tracing ..." line (every probe attached),
    which must be its first line."""
    tracer = spawn(gotrace_argv("latency", *args), env=clean_env())
    tracer.wait_line("stderr", r"^Tracing ")
    assert tracer.stderr.startswith("Tracing "), f"unexpected lines before the header: {tracer.stderr!r}"
    return tracer


def function_report(report: dict, name: str) -> dict:
    (found,) = [f for f in report["functions"] if f["name"] == name]
    return found


# -- not root -------------------------------------------------------------------------


def as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_not_root_exit_3_one_line():
    proc = run_command(as_nobody(gotrace_argv("latency", str(service_binary()), "main.work", "-d", "1")), env=clean_env())
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc)
    assert "root" in line and "sudo" in line
    assert proc.stdout == ""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_not_root_funcs_still_works():
    """`gotrace funcs` needs no root (CLI contract)."""
    proc = run_command(as_nobody(gotrace_argv("funcs", service_binary(), "main.work")), env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "main.work" in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_not_root_with_pid_exit_3_one_line():
    """-p PID of another user's process: not being root is the problem, exit 3 like any other."""
    service = HeldService("-n", "1")
    try:
        proc = run_command(as_nobody(gotrace_argv("latency", "-p", str(service.pid), "main.work", "-d", "1")), env=clean_env())
    finally:
        service.kill()
    line = one_line(proc)
    assert "root" in line
    assert proc.returncode == 3, line


# -- BPF refused ------------------------------------------------------------------------

_SECCOMP_LAUNCHER = r"""
import ctypes, os, struct, sys
# Classic-BPF seccomp filter: bpf() fails with EPERM, every other system call is allowed
# (what Docker's default seccomp profile does to bpf()).
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]
NR_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]
LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
ALLOW, ERRNO_EPERM = 0x7FFF0000, 0x00050000 | 1
insns = [
    (LD_ABS_W, 0, 0, 4),            # A = seccomp_data.arch
    (JEQ_K, 1, 0, AUDIT_ARCH),
    (RET_K, 0, 0, ALLOW),
    (LD_ABS_W, 0, 0, 0),            # A = seccomp_data.nr
    (JEQ_K, 0, 1, NR_BPF),
    (RET_K, 0, 0, ERRNO_EPERM),
    (RET_K, 0, 0, ALLOW),
]
filt = ctypes.create_string_buffer(b"".join(struct.pack("<HBBI", *i) for i in insns))
prog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", len(insns), ctypes.addressof(filt)))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) != 0:
    sys.exit("cannot install the seccomp filter: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"""


def bpf_denied_by_seccomp(argv: list[str]) -> list[str]:
    return [sys.executable, "-c", _SECCOMP_LAUNCHER, *argv]


def bpf_denied_by_user_namespace(argv: list[str]) -> list[str]:
    # root inside a new user namespace: uid 0, but no capability over the host kernel's BPF
    return ["unshare", "--user", "--map-root-user", "--", *argv]


@pytest.mark.parametrize("deny", [bpf_denied_by_seccomp, bpf_denied_by_user_namespace],
                         ids=["seccomp", "user-namespace"])
@pytest.mark.bpf
def test_bpf_refused_exit_3_one_line(deny):
    proc = run_command(deny(gotrace_argv("latency", str(service_binary()), "main.work", "-d", "1")), env=clean_env())
    assert proc.returncode == 3, proc.stderr
    line = one_line(proc)
    assert "BPF" in line or "bpf" in line
    assert "kernel headers" not in line, f"blames the headers for a refused bpf(): {line}"


# -- no kernel headers, no bcc ----------------------------------------------------------


@pytest.mark.bpf
def test_traces_without_any_kernel_headers_or_bcc(tmp_path):
    """/usr/src, /lib/modules, gotrace's header tree and bcc's Python module hidden under empty tmpfs mounts,
    BCC_KERNEL_SOURCE pointing at an empty directory, an empty BPF cache: a checkout compiles its programs with
    clang alone, and counts every call."""
    binary = service_binary()
    hide = [d for d in (Path("/usr/src"), Path("/lib/modules"), Path("/var/cache/gotrace/kernel-headers"),
                        Path("/usr/lib/python3/dist-packages/bcc"), Path("/var/cache/gotrace/bpf")) if d.is_dir()]
    script = "".join(f"mount -t tmpfs gotrace-test-empty {d} && " for d in hide)
    argv = gotrace_argv("latency", "-c", f"{binary} -n 300 -json", str(binary), "main.work", "--json")
    empty = tmp_path / "no-headers"
    empty.mkdir()
    proc = run_command(["unshare", "--mount", "--propagation", "private", "sh", "-c", script + 'exec "$@"', "sh", *argv],
                       env=clean_env(BCC_KERNEL_SOURCE=str(empty)), timeout=180)
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    (summary,) = [o for o in objects if "calls" in o]
    (report,) = [o for o in objects if "functions" in o]
    assert function_report(report, "main.work")["count"] == summary["calls"]["main.work"] > 0
    assert "header" not in proc.stderr and "bcc" not in proc.stderr


# -- tracefs unmounted ---------------------------------------------------------------


@pytest.mark.bpf
def test_traces_without_tracefs():
    """tracefs unmounted (in a private mount namespace): gotrace attaches through BPF links,
    counts every call, detaches and ends without a word about tracefs."""
    binary = service_binary()
    unmount = ("umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
               "umount /sys/kernel/debug 2>/dev/null; "
               "if [ -e /sys/kernel/tracing/uprobe_events ]; then echo tracefs still mounted >&2; exit 99; fi; ")
    argv = gotrace_argv("latency", "-c", f"{binary} -n 300 -json", str(binary), "main.work", "--json")
    proc = run_command(["unshare", "--mount", "--propagation", "private", "sh", "-c", unmount + 'exec "$@"', "sh", *argv],
               env=clean_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    (summary,) = [o for o in objects if "calls" in o]
    (report,) = [o for o in objects if "functions" in o]
    assert function_report(report, "main.work")["count"] == summary["calls"]["main.work"] > 0
    noise = [line for line in proc.stderr.splitlines() if not line.startswith(("Tracing ", "gotrace: ", "cost guard: "))]
    assert noise == [], proc.stderr
    assert "tracefs" not in proc.stderr and "Traceback" not in proc.stderr


# -- the target process ---------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not Path(f"/proc/{proc.pid}").exists()
    return proc.pid


def test_pid_gone_before_start():
    pid = dead_pid()
    proc = run_command(gotrace_argv("latency", "-p", str(pid), "main.work", "-d", "1"), env=clean_env())
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert str(pid) in line and "no process" in line


def test_funcs_pid_gone_before_start():
    pid = dead_pid()
    proc = run_command(gotrace_argv("funcs", "-p", pid, "main.work"), env=clean_env())
    assert proc.returncode == 2, proc.stderr
    assert str(pid) in one_line(proc)


def test_pid_of_a_zombie():
    """A process that has exited but is not reaped yet: /proc/PID is there, its executable is not."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        proc = run_command(gotrace_argv("latency", "-p", str(child.pid), "main.work", "-d", "1"), env=clean_env())
    finally:
        child.wait()
    assert proc.returncode == 2, proc.stderr
    assert str(child.pid) in one_line(proc)


def test_pid_not_a_go_program():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        proc = run_command(gotrace_argv("latency", "-p", str(sleeper.pid), "main.work", "-d", "1"), env=clean_env())
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 2, proc.stderr
    assert "not a Go binary" in one_line(proc)


@pytest.mark.bpf
def test_target_exits_mid_trace_final_report(spawn):
    service = HeldService("-n", "500")
    try:
        tracer = start_tracer(spawn, "-p", str(service.pid), "main.work", "main.(*Server).handle", "--json")
        summary = service.go()
        status = tracer.finish(60)
    finally:
        service.kill()
    assert status == 0, tracer.stderr
    assert "Traceback" not in tracer.stderr
    (report,) = [json.loads(line) for line in tracer.stdout.splitlines()]
    assert report["target"]["pid"] == service.pid
    for name in ("main.work", "main.(*Server).handle"):
        assert function_report(report, name)["count"] == summary["calls"][name] > 0, name


@pytest.mark.bpf
def test_two_gotraces_on_one_process(spawn):
    service = HeldService("-n", "400")
    try:
        tracers = [start_tracer(spawn, "-p", str(service.pid), "main.work", "--json") for _ in range(2)]
        summary = service.go()
        statuses = [tracer.finish(60) for tracer in tracers]
    finally:
        service.kill()
    want = summary["calls"]["main.work"]
    assert want > 0
    for tracer, status in zip(tracers, statuses):
        assert status == 0, tracer.stderr
        (report,) = [json.loads(line) for line in tracer.stdout.splitlines()]
        work = function_report(report, "main.work")
        assert work["count"] == want and work["unmatched"] == 0, (work, want)


# -- maps flooded ------------------------------------------------------------------------

CHURN_VERSION = "1.23.9"
CHURN_LOST = 1_000_000
CHURN_LIVE = 100_000
CHURN_STEADY = 10_000
START_MAP_MAX_ENTRIES = 65536      # GT_START_ENTRIES in probes/gotrace.h
BPF_MAP_TYPE_HASH = 1   # the start map (a hash: a start is never dropped without a trace)
START_VALUE_SIZE = 16   # struct gt_start_val

_NR = {"x86_64": {"bpf": 321, "pidfd_open": 434, "pidfd_getfd": 438},
       "aarch64": {"bpf": 280, "pidfd_open": 434, "pidfd_getfd": 438}}[os.uname().machine]
_BPF_MAP_GET_NEXT_KEY = 4


def bpf_maps_of(pid: int) -> dict[int, dict[str, int]]:
    """fd -> fdinfo fields (map_type, key_size, value_size, max_entries, memlock, map_id)
    of every BPF map the process holds."""
    maps = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-map":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        maps[int(fd)] = {k: int(fields[k].strip()) for k in
                         ("map_type", "key_size", "value_size", "max_entries", "memlock", "map_id")}
    return maps


def map_keys(pid: int, fd: int, key_size: int) -> list[bytes]:
    """Every key of process pid's BPF map `fd` (copied here with pidfd_getfd, walked with
    BPF_MAP_GET_NEXT_KEY). Exact only while nothing updates the map."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(ctypes.c_long(_NR["pidfd_open"]), ctypes.c_long(pid), ctypes.c_long(0))
    assert pidfd >= 0, os.strerror(ctypes.get_errno())
    try:
        map_fd = libc.syscall(ctypes.c_long(_NR["pidfd_getfd"]), ctypes.c_long(pidfd), ctypes.c_long(fd),
                              ctypes.c_long(0))
        assert map_fd >= 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(pidfd)
    try:
        key = ctypes.create_string_buffer(key_size)
        next_key = ctypes.create_string_buffer(key_size)
        keys = []
        first = True
        while True:
            attr = ctypes.create_string_buffer(
                struct.pack("<IIQQ", map_fd, 0, 0 if first else ctypes.addressof(key), ctypes.addressof(next_key)), 32)
            if libc.syscall(ctypes.c_long(_NR["bpf"]), ctypes.c_long(_BPF_MAP_GET_NEXT_KEY), attr,
                            ctypes.c_uint(32)) != 0:
                break
            keys.append(next_key.raw)
            ctypes.memmove(key, next_key, key_size)
            first = False
        return keys
    finally:
        os.close(map_fd)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Peak RSS of a process and peak total memlock of its BPF maps, sampled on demand."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rss_at_start = rss_kib(pid)
        self.maps_at_start = bpf_maps_of(pid)
        self.memlock_at_start = sum(m["memlock"] for m in self.maps_at_start.values())
        self.rss_peak = self.rss_at_start
        self.memlock_peak = self.memlock_at_start

    def sample(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.rss_peak = max(self.rss_peak, rss_kib(self.pid))
            self.memlock_peak = max(self.memlock_peak, sum(m["memlock"] for m in bpf_maps_of(self.pid).values()))


def read_line_sampling(stream, sampler: Sampler, timeout: float) -> str:
    """The next line of `stream`, sampling every 0.2 s while waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sampler.sample()
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            return stream.readline()
    pytest.fail(f"no line within {timeout} s")


@pytest.mark.bpf
def test_flooded_maps_stay_bounded_and_count_unmatched(spawn):
    binary = gobuild.build("churn", CHURN_VERSION)
    churn = subprocess.Popen([str(binary), "-wait", "-pause", "-n", str(CHURN_LOST), "-live", str(CHURN_LIVE),
                              "-steady", str(CHURN_STEADY)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert churn.stdout.readline().startswith("ready pid=")
        tracer = start_tracer(spawn, "-p", str(churn.pid), "main.lost", "main.park", "main.steady", "--json")
        sampler = Sampler(tracer.pid)
        churn.stdin.write("go\n")
        churn.stdin.flush()
        # A million lost calls later, with 100000 goroutines still parked inside main.park:
        # nothing calls a traced function now, so the start map can be read exactly.
        assert read_line_sampling(churn.stdout, sampler, timeout=600) == "flooded\n"
        (start_fd, start_map), = [(fd, m) for fd, m in bpf_maps_of(tracer.pid).items()
                                   if m["map_type"] == BPF_MAP_TYPE_HASH and m["value_size"] == START_VALUE_SIZE]
        starts = map_keys(tracer.pid, start_fd, start_map["key_size"])
        churn.stdin.write("go\n")
        churn.stdin.flush()
        churn_out = read_line_sampling(churn.stdout, sampler, timeout=300)
        churn_err = churn.communicate(timeout=60)[1]
        status = tracer.finish(120)
    finally:
        if churn.poll() is None:
            churn.kill()
            churn.wait()

    assert churn.returncode == 0, churn_err
    made = json.loads(churn_out)
    assert made == {"lost_calls": CHURN_LOST, "recovered": CHURN_LOST, "park_calls": CHURN_LIVE,
                    "park_returns": CHURN_LIVE, "steady_calls": CHURN_STEADY}
    assert status == 0, tracer.stderr
    assert "Traceback" not in tracer.stderr
    (report,) = [json.loads(line) for line in tracer.stdout.splitlines()]
    lost = function_report(report, "main.lost")
    park = function_report(report, "main.park")
    steady = function_report(report, "main.steady")
    # Every call is accounted for, in exactly one way: returned (in the histogram), unwound by its panic
    # (unmatched: the goroutine ended, or another call took its key), or not timed because the start map was
    # full when it entered; nothing is in flight once every goroutine has returned or ended.
    assert lost["count"] == 0 and lost["unmatched"] + lost["untimed"] == CHURN_LOST
    assert park["count"] + park["untimed"] == CHURN_LIVE and park["unmatched"] == 0
    assert park["untimed"] > 0            # 100000 parked calls cannot all keep a start in the map
    assert lost["in_flight"] == park["in_flight"] == steady["in_flight"] == 0
    # Once the flood is over, pairing is exact again.
    assert steady["count"] == CHURN_STEADY and steady["unmatched"] == steady["untimed"] == 0

    # Bounded: the start map is a hash of GT_START_ENTRIES; after 1.1 million starts it holds
    # at most that many, and neither the maps' memory nor gotrace's grows with the calls.
    assert start_map["max_entries"] == START_MAP_MAX_ENTRIES
    assert len(set(starts)) == len(starts)
    assert START_MAP_MAX_ENTRIES // 2 < len(starts) <= START_MAP_MAX_ENTRIES
    assert sampler.memlock_peak <= sampler.memlock_at_start + 4 * 2**20, (sampler.memlock_at_start,
                                                                          sampler.memlock_peak)
    assert sampler.memlock_peak < 256 * 2**20
    assert sampler.rss_peak - sampler.rss_at_start < 32 * 1024, (sampler.rss_at_start, sampler.rss_peak)
    print(f"start map {len(starts)}/{START_MAP_MAX_ENTRIES} entries; maps memlock {sampler.memlock_at_start} -> "
          f"{sampler.memlock_peak} B; gotrace RSS {sampler.rss_at_start} -> {sampler.rss_peak} KiB")


@pytest.mark.bpf
def test_calls_unwound_in_goroutines_that_end_are_unmatched_not_in_flight(spawn):
    """Goroutines that panic in main.lost, recover and end leave a start no later call ever takes (goroutine ids
    are not reused): gotrace sees them end (its probe on runtime.goexit1) and counts those calls as unmatched,
    with nothing left in flight; the parked calls that return are counted, the others are in flight."""
    binary = gobuild.build("churn", CHURN_VERSION)
    lost, live, steady = 2000, 50, 100
    churn = subprocess.Popen([str(binary), "-wait", "-pause", "-n", str(lost), "-live", str(live), "-steady",
                              str(steady), "-inflight", "100"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert churn.stdout.readline().startswith("ready pid=")
        tracer = start_tracer(spawn, "-p", str(churn.pid), "main.lost", "main.park", "main.steady", "--json",
                              "-i", "0.5")
        churn.stdin.write("go\n")
        churn.stdin.flush()
        assert churn.stdout.readline() == "flooded\n"
        time.sleep(1.5)   # a report while the crowd is parked
        churn.stdin.write("go\n")
        churn.stdin.flush()
        made = json.loads(churn.stdout.readline())
        churn.wait(60)
        returncode = tracer.finish(timeout=120)   # the target's exit ends the trace
    finally:
        if churn.poll() is None:
            churn.kill()
            churn.wait()
    assert made["lost_calls"] == lost and made["park_returns"] == live
    assert returncode == 0, tracer.stderr
    reports = [json.loads(line) for line in tracer.stdout.splitlines() if '"event": "report"' in line]
    parked = [function_report(r, "main.park")["in_flight"] for r in reports]
    assert live in parked, parked   # while the crowd was parked
    total = {name: {key: sum(function_report(r, name)[key] for r in reports)
                    for key in ("count", "unmatched", "untimed")} for name in ("main.lost", "main.park", "main.steady")}
    assert total["main.lost"] == {"count": 0, "unmatched": lost, "untimed": 0}, total
    assert total["main.park"] == {"count": live, "unmatched": 0, "untimed": 0}, total
    assert total["main.steady"] == {"count": steady, "unmatched": 0, "untimed": 0}, total
    final = reports[-1]
    assert final["final"] is True
    assert [function_report(final, name)["in_flight"] for name in ("main.lost", "main.park", "main.steady")] == [0, 0, 0]
