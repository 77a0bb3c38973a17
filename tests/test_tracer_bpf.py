"""gotrace.trace.latency against real uprobes: counts and percentiles equal what the traced Go program measured itself.

testdata/latencytruth times each call of its traced functions itself and
prints its own counts, p50 and p99 as JSON. The tracer must see exactly the
same number of normal returns, the panicked calls as unmatched, and the same
percentiles within 5% + 50 us (a uprobe pair costs ~33 us on this VM; part of
it falls inside the traced interval; more in the emulated arm64 guest, see TOLERANCE).

The bucket index code of probes/gotrace.h is also compiled for the host and
compared with gotrace.output.histogram's formula (no BPF needed for that one).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import gobuild
from gotrace.output import histogram
from gotrace import header as probes_header
from gotrace.binary.gobinary import GoBinary
from gotrace.errors import UsageError
from gotrace.trace.latency import LatencyTracer, TracedFunction
from gotrace.trace.tracer import traced_functions as traced_in

TRUTH_FUNCTIONS = [
    "main.work",
    "main.recurse",
    "main.growStack",
    "main.blockingCall",
    "main.mayPanic",
    "main.safeCall",
]


def traced_functions(binary: Path, names: list[str]) -> list[TracedFunction]:
    with GoBinary(binary) as gobin:
        found = {fn.name: fn for fn in gobin.match(names)}
        probes = [gobin.probe_sites(found[name]) for name in names]
        for p in probes:
            assert p.traceable, f"{p.function.name}: {p.reason}"
        return traced_in(gobin, probes)


def latency_tracer(binary: Path, functions: list[TracedFunction], *, pid: int | None,
                   mode: str = "auto") -> LatencyTracer:
    """A LatencyTracer of functions in binary (runtime offsets and arch read from it)."""
    with GoBinary(binary) as gobin:
        return LatencyTracer(gobin, functions, pid=pid, mode=mode)


def goid_offset(binary: Path) -> int:
    with GoBinary(binary) as gobin:
        return gobin.runtime_offsets.goid


def raise_priority() -> None:
    """Real-time round-robin scheduling for the truth program, or at least a high nice value."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except OSError:
        os.nice(-10)


def start_truth(binary: Path) -> subprocess.Popen:
    """Start latencytruth; it waits for a line on stdin before calling anything traced.

    It runs at real-time priority (its busy phases use at most two threads
    for a fraction of a second). On a busy machine a thread is often
    descheduled right where a uprobe trap returns to user space: inside
    gotrace's interval, outside the program's own. The tails would then
    measure the neighbours' load, not the tracer.
    """
    return subprocess.Popen(
        [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=raise_priority,
    )


def finish_truth(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(b"go\n", timeout=120)
    assert proc.returncode == 0, err.decode()
    truth = json.loads(out)
    assert truth["ok"] is True  # every traced function returned what it returns untraced
    return truth["functions"]


# Part of a uprobe pair's cost falls inside the traced interval: p50 and p99 must be within 5% + 50 us.
# Under emulation (a scripts/vmtest guest on QEMU's TCG: the arm64 guest always) a trap costs tens of
# microseconds, and milliseconds when the host deschedules the guest's vCPU thread inside one: there p50 must be
# within 20% + 500 us and p99 within 30% + 1 ms (measured in the arm64 guest on 6.12: p50 +16..+117 us, p99 up
# to +1.4 ms; on a host loaded by other VMs p99 went up to +3.5 ms, which fails).
# Counts, unmatched calls and the tracer's error counters stay exact everywhere.
EMULATED = os.environ.get("VMTEST_ACCEL") == "tcg"
TOLERANCE = {"p50": (0.20, 500_000), "p99": (0.30, 1_000_000)} if EMULATED else \
    {"p50": (0.05, 50_000), "p99": (0.05, 50_000)}


def assert_close(name: str, what: str, got_ns: int, want_ns: int) -> None:
    share, slack_ns = TOLERANCE[what]
    tolerance_ns = share * want_ns + slack_ns
    assert abs(got_ns - want_ns) <= tolerance_ns, f"{name} {what}: gotrace {got_ns} ns, program {want_ns} ns"


def assert_matches_truth(tracer: LatencyTracer, functions: list[TracedFunction], truth: dict) -> None:
    counts = tracer.read(reset=False)
    for fn in functions:
        want = truth[fn.name]
        got = counts[fn.func_id]
        hist = histogram.LatencyHistogram(got.buckets)
        assert hist.count() == want["count"], fn.name
        assert got.unmatched == want["panicked"], fn.name
        p50, p99 = hist.percentiles([50, 99]).values()
        assert_close(fn.name, "p50", p50, want["p50_ns"])
        assert_close(fn.name, "p99", p99, want["p99_ns"])
    stats = tracer.stats()
    assert stats["returns_without_entry"] == 0
    assert stats["no_goroutine"] == 0
    assert stats["read_faults"] == 0
    # Each panicked mayPanic left its start behind; the next call at that depth replaced it.
    assert stats["stale_starts"] == truth["main.mayPanic"]["panicked"] == 200


@pytest.mark.bpf
@pytest.mark.parametrize(
    "version,mode,by_pid",
    [("1.23.9", "default", True), ("1.25.5", "pie", False)],
    ids=["go1.23-exe-pid", "go1.25-pie-every-process"],
)
def test_latency_matches_program_own_timing(version, mode, by_pid, private_binary):
    binary = private_binary(gobuild.build("latencytruth", version, mode, gobuild.NATIVE_ARCH))  # every process of it: this test's only
    functions = traced_functions(binary, TRUTH_FUNCTIONS)
    proc = start_truth(binary) if by_pid else None
    tracer = latency_tracer(binary, functions, pid=proc.pid if by_pid else None)
    with tracer:
        if proc is None:
            proc = start_truth(binary)  # started after attaching: "every process running ./bin"
        truth = finish_truth(proc)
        # The blocking calls really changed threads, so a thread-keyed tracer would pair them wrongly.
        assert truth["main.blockingCall"]["migrated"] > 0
        assert_matches_truth(tracer, functions, truth)


@pytest.mark.bpf
def test_perf_link_attach_path_counts_the_same():
    """The Linux 5.15-6.5 path (one perf-event link per site) gives the same results."""
    binary = gobuild.build("latencytruth", "1.23.9", "default", gobuild.NATIVE_ARCH)
    functions = traced_functions(binary, TRUTH_FUNCTIONS)
    proc = start_truth(binary)
    tracer = latency_tracer(binary, functions, pid=proc.pid, mode="perf_link")
    with tracer:
        assert tracer.attached_by == "perf_link"
        assert_matches_truth(tracer, functions, finish_truth(proc))


@pytest.mark.bpf
def test_reset_starts_a_new_report():
    binary = gobuild.build("latencytruth", "1.23.9", "default", gobuild.NATIVE_ARCH)
    functions = traced_functions(binary, ["main.work", "main.mayPanic"])
    proc = start_truth(binary)
    with latency_tracer(binary, functions, pid=proc.pid) as tracer:
        truth = finish_truth(proc)
        first = tracer.read(reset=True)
        assert sum(first[0].buckets.values()) == truth["main.work"]["count"]
        assert first[1].unmatched == truth["main.mayPanic"]["panicked"]
        second = tracer.read(reset=True)
        assert all(counts.buckets == {} and counts.unmatched == 0 for counts in second.values())


class _Offsets:
    def __init__(self, goid, stack_hi=8):
        self.goid, self.stack_hi = goid, stack_hi


class _Binary:
    """What a tracer reads of a GoBinary before attaching, given directly (validation needs no real binary)."""

    def __init__(self, goid=152, arch="amd64"):
        self.path, self.arch, self.runtime_offsets = "/bin/true", arch, _Offsets(goid)


def _fn(func_id=0, name="main.work", returns=(0x1010,)):
    return TracedFunction(func_id, name, 0x1000, tuple(returns), 0x1000, tuple(returns))


def test_attach_refuses_bad_input_before_touching_the_kernel():
    with pytest.raises(Exception, match="ids must be 0..n-1"):
        LatencyTracer(_Binary(), [_fn(1)], pid=None)
    with pytest.raises(Exception, match="no return instruction"):
        LatencyTracer(_Binary(), [_fn(0, "main.f", ())], pid=None)
    with pytest.raises(Exception, match="goid_offset must be an integer"):
        LatencyTracer(_Binary(goid="152; evil()"), [_fn()], pid=None)
    with pytest.raises(Exception, match="unsupported architecture"):
        LatencyTracer(_Binary(arch="riscv64"), [_fn()], pid=None)
    with pytest.raises(Exception, match="attach mode must be one of"):
        LatencyTracer(_Binary(), [_fn()], pid=None, mode="kprobe")


def test_a_binary_of_another_architecture_is_refused_before_the_kernel_is_asked():
    other = "arm64" if os.uname().machine == "x86_64" else "amd64"
    tracer = LatencyTracer(_Binary(arch=other), [_fn()], pid=None)
    with pytest.raises(UsageError, match=f"is an {other} binary and this machine is .*: trace it on an {other} machine"):
        tracer.attach()


def test_bpf_source_is_the_same_program_for_every_run_and_numbers_in_its_config():
    source = LatencyTracer(_Binary(goid=160), [_fn(0, 'main.evil"); system("x')], pid=4242).bpf_source()
    assert "evil" not in source
    settings, program = source.split("\n", 1)
    assert "target_tgid=4242" in settings and "goid_offset=160" in settings and "nfuncs=1" in settings
    # Nothing of the run is in the C: one compiled object serves every binary, pid and Go version.
    assert program == (probes_header.PROBES_DIR / "latency.bpf.c").read_text()
    assert "int gt_entry(struct pt_regs *ctx)" in program


# --- many functions ------------------------------------------------------------

MANY = 1000


@pytest.fixture(scope="module")
def many_functions_binary(tmp_path_factory) -> Path:
    """A Go program with MANY small functions, each called 3 times after a line on stdin.

    Built into this session's own temporary directory: the tests below trace every process of it."""
    src = tmp_path_factory.mktemp("manyfuncs")
    funcs = "".join(
        f"//go:noinline\nfunc f{i}(x int) int {{\n\tif x < 0 {{\n\t\treturn -x\n\t}}\n\treturn x + {i}\n}}\n\n" for i in range(MANY)
    )
    table = ", ".join(f"f{i}" for i in range(MANY))
    (src / "go.mod").write_text("module manyfuncs\n\ngo 1.17\n")
    (src / "main.go").write_text(
        'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\n'
        + funcs
        + f"var table = []func(int) int{{{table}}}\n\n"
        + textwrap.dedent(
            """\
            func main() {
            \tbufio.NewReader(os.Stdin).ReadString('\\n')
            \ts := 0
            \tfor r := 0; r < 3; r++ {
            \t\tfor _, f := range table {
            \t\t\ts += f(r)
            \t\t}
            \t}
            \tfmt.Println(s)
            }
            """
        )
    )
    out = src / "manyfuncs"
    subprocess.run(
        [str(gobuild.go_binary("1.23.9")), "build", "-o", str(out), "."],
        cwd=src, env=gobuild.go_env("1.23.9"), check=True, capture_output=True,
    )
    return out


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def tracefs_uprobe_events() -> str:
    path = Path("/sys/kernel/tracing/uprobe_events")
    return path.read_text() if path.exists() else ""


@pytest.mark.bpf
def test_thousand_functions_count_exactly_and_detach_clean(many_functions_binary):
    """How fast 1000 functions attach and detach is scripts/bench's to measure; here: every call counted, and
    nothing left behind."""
    names = [f"main.f{i}" for i in range(MANY)]
    functions = traced_functions(many_functions_binary, names)
    fds_before = open_fd_count()
    tracer = latency_tracer(many_functions_binary, functions, pid=None)
    tracer.attach()
    try:
        proc = subprocess.run([str(many_functions_binary)], input=b"\n", capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == str(3 * sum(range(MANY)) + MANY * 3).encode()
        counts = tracer.read(reset=True)
        events_attached = tracefs_uprobe_events()
    finally:
        tracer.close()
    wrong = [f.name for f in functions if sum(counts[f.func_id].buckets.values()) != 3 or counts[f.func_id].unmatched]
    assert wrong == []
    # Everything was held by file descriptors: all closed, nothing registered through tracefs. (Only this
    # binary's entries are looked for: other programs on the machine may register and remove their own.)
    assert open_fd_count() == fds_before
    assert str(many_functions_binary) not in events_attached
    assert str(many_functions_binary) not in tracefs_uprobe_events()


@pytest.mark.bpf
def test_kernel_without_uprobe_multi_falls_back_to_perf_links(many_functions_binary, monkeypatch):
    from gotrace.bpf import syscalls as bpfsys

    def no_uprobe_multi(*args, **kwargs):
        raise OSError(errno.EINVAL, "bpf(BPF_LINK_CREATE uprobe_multi)")

    monkeypatch.setattr(bpfsys.Syscalls, "link_create_uprobe_multi", no_uprobe_multi)
    functions = traced_functions(many_functions_binary, ["main.f0", "main.f999"])
    with latency_tracer(many_functions_binary, functions, pid=None) as tracer:
        assert tracer.attached_by == "perf_link"
        subprocess.run([str(many_functions_binary)], input=b"\n", capture_output=True, check=True)
        counts = tracer.read(reset=False)
    assert [sum(counts[f.func_id].buckets.values()) for f in functions] == [3, 3]


DETACH_WITHOUT_TRACEFS = r"""
import subprocess, sys
from gotrace.binary.gobinary import GoBinary
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.tracer import traced_functions
binary, *names = sys.argv[1:]
with GoBinary(binary) as gobin:
    tracer = LatencyTracer(gobin, traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(names)]), pid=None)
tracer.attach()
subprocess.run([binary], input=b"\n", capture_output=True, check=True)
assert sum(tracer.read(reset=False)[0].buckets.values()) == 3
tracer.close()
print("closed")
"""


@pytest.mark.bpf
def test_detach_is_clean_and_quiet_without_tracefs(many_functions_binary):
    """In a private mount namespace with tracefs unmounted, attach/detach works and prints nothing on stderr."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to unmount tracefs privately")
    functions = traced_functions(many_functions_binary, ["main.f0", "main.f1"])
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; "
        'test ! -e /sys/kernel/tracing/uprobe_events || { echo "tracefs still mounted" >&2; exit 9; }; '
        'exec "$0" -c "$@"'
    )
    env = dict(os.environ, PYTHONPATH=str(gobuild.REPO_ROOT))
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, DETACH_WITHOUT_TRACEFS,
         str(many_functions_binary), *(f.name for f in functions)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "closed"
    assert proc.stderr == ""


# --- the bucket index code of probes/gotrace.h ----------------------------------

HOST_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <linux/types.h>
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
#include "gotrace.h"
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        printf("%u\n", gt_hist_bucket(strtoull(argv[i], NULL, 10)));
    return 0;
}
"""


@pytest.fixture(scope="module")
def host_bucket_index(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the host")
    work = tmp_path_factory.mktemp("bucket")
    (work / "harness.c").write_text(HOST_HARNESS)
    subprocess.run([cc, "-O2", "-Wall", "-Werror", f"-I{probes_header.PROBES_DIR}", "-o", str(work / "harness"),
                    str(work / "harness.c")], check=True)

    def run(values: list[int]) -> list[int]:
        out = subprocess.run([str(work / "harness"), *map(str, values)], check=True, capture_output=True, text=True)
        return [int(line) for line in out.stdout.split()]

    return run


def test_c_bucket_index_equals_python_formula_at_every_boundary(host_bucket_index):
    sub_bits = probes_header.constant("GT_HIST_SUB_BITS")
    max_exp = probes_header.constant("GT_HIST_MAX_EXP")
    values = list(range(0, 1 << (sub_bits + 2)))
    for exp in range(sub_bits, 64):
        values += [(1 << exp) - 1, 1 << exp, (1 << exp) + 1]
    values += [(1 << max_exp) - 1, 1 << max_exp, (1 << 64) - 1]
    assert host_bucket_index(values) == [histogram.bucket_index(v) for v in values]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=(1 << 64) - 1), min_size=1, max_size=200))
def test_c_bucket_index_equals_python_formula_anywhere(host_bucket_index, values):
    assert host_bucket_index(values) == [histogram.bucket_index(v) for v in values]
