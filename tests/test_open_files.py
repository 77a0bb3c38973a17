"""Open-file limits and detaching on the perf-event attach path (kernels before 6.6: two descriptors per probe site).

A tracer in a child process, with low RLIMIT_NOFILE limits, forced onto the
perf_link path on a program of N_FUNCS small functions (2 * N_FUNCS sites,
twice as many descriptors):

* gotrace raises the soft limit up to the hard one, and, as root with
  CAP_SYS_RESOURCE (the VMs of tests/test_kernel_matrix.py have it; a
  sandboxed root may not), the hard limit too; then it attaches and counts
  every call exactly;
* without CAP_SYS_RESOURCE (setpriv drops it) it cannot raise the hard limit
  and refuses in one line saying what to do, before opening a single perf
  event.

Detaching: with that many sites close() hands the work to a helper process
and returns; the probes (int3s in the running target's memory) are all gone
once the helper has exited, and the target's results are untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from support import gobuild

pytestmark = pytest.mark.bpf

N_FUNCS = 100
N_SITES = 2 * N_FUNCS  # one entry and one ret each
LOW_LIMIT = 256  # under the 2 * N_SITES descriptors the sites need

CHILD = r"""
import json, resource, subprocess, sys
from gotrace.binary.gobinary import GoBinary
from gotrace.bpf import syscalls
from gotrace.errors import CapabilityError
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.tracer import traced_functions

binary, soft, hard = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
opened = []
real_open = syscalls.Syscalls.perf_uprobe_open
def counting_open(self, *args):
    opened.append(1)
    return real_open(self, *args)
syscalls.Syscalls.perf_uprobe_open = counting_open
with GoBinary(binary) as gobin:
    functions = traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(["main.f*"])])
    tracer = LatencyTracer(gobin, functions, pid=None, mode="perf_link")
try:
    tracer.attach()
except CapabilityError as exc:
    print(json.dumps({"error": str(exc), "perf_events_opened": len(opened)}))
    sys.exit(0)
try:
    out = subprocess.run([binary], input=b"\n", capture_output=True, check=True).stdout
    counts = tracer.read(reset=False)
    calls = sorted(sum(counts[f.func_id].buckets.values()) for f in functions)
finally:
    tracer.close()
print(json.dumps({"mode": tracer.attached_by, "limits": resource.getrlimit(resource.RLIMIT_NOFILE),
                  "perf_events_opened": len(opened), "calls": calls, "stdout": out.decode().strip()}))
"""


def expected_sum() -> str:
    return str(sum(r * i + 1 for r in range(2) for i in range(N_FUNCS)))


@pytest.fixture
def small_functions(tmp_path) -> Path:
    """A Go program with N_FUNCS small functions, each called twice after a line on stdin.

    Built into this test's own directory: the tests trace every process of it."""
    src = tmp_path / "src"
    src.mkdir()
    funcs = "".join(f"//go:noinline\nfunc f{i}(x int) int {{\n\treturn x*{i} + 1\n}}\n\n" for i in range(N_FUNCS))
    table = ", ".join(f"f{i}" for i in range(N_FUNCS))
    (src / "go.mod").write_text("module openfiles\n\ngo 1.17\n")
    (src / "main.go").write_text(
        'package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\n' + funcs
        + f"var table = []func(int) int{{{table}}}\n\n"
        + textwrap.dedent("""\
            func main() {
            \tbufio.NewReader(os.Stdin).ReadString('\\n')
            \ts := 0
            \tfor r := 0; r < 2; r++ {
            \t\tfor _, f := range table {
            \t\t\ts += f(r)
            \t\t}
            \t}
            \tfmt.Println(s)
            }
            """)
    )
    out = tmp_path / "openfiles"
    subprocess.run([str(gobuild.go_binary("1.23.9")), "build", "-o", str(out), "."],
                   cwd=src, env=gobuild.go_env("1.23.9"), check=True, capture_output=True)
    return out


def run_child(binary: Path, soft: int, hard: int, prefix: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(binary), str(soft), str(hard)],
                          cwd=gobuild.REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(gobuild.REPO_ROOT)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def has_cap_sys_resource() -> bool:
    """Whether this process may raise its hard limits (root usually may; a sandbox or container may not)."""
    with open("/proc/self/status") as f:
        effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return bool(effective & (1 << 24))  # CAP_SYS_RESOURCE


def assert_attached_every_site(result: dict) -> None:
    assert result.get("mode") == "perf_link", result
    assert result["perf_events_opened"] == N_SITES
    soft, hard = result["limits"]
    assert soft >= 2 * N_SITES and hard >= 2 * N_SITES
    assert result["calls"] == [2] * N_FUNCS
    assert result["stdout"] == expected_sum()


def test_raises_the_soft_limit_up_to_the_hard_one(small_functions):
    assert_attached_every_site(run_child(small_functions, LOW_LIMIT, 4096))


def test_raises_the_hard_limit_when_allowed_else_refuses_before_attaching(small_functions):
    """Root with CAP_SYS_RESOURCE raises the hard limit; without it (e.g. a sandbox's root), a one-line refusal."""
    result = run_child(small_functions, LOW_LIMIT, LOW_LIMIT)
    if has_cap_sys_resource():
        assert_attached_every_site(result)
    else:
        assert result["perf_events_opened"] == 0, result
        assert f"over this process's limit of {LOW_LIMIT}" in result["error"]


def test_refuses_in_one_line_before_attaching_when_the_limit_cannot_be_raised(small_functions):
    result = run_child(small_functions, LOW_LIMIT, LOW_LIMIT, prefix=("setpriv", "--bounding-set", "-sys_resource"))
    assert result["perf_events_opened"] == 0, result
    message = result["error"]
    assert "\n" not in message
    assert f"{N_SITES} probe sites need a perf event and a BPF link each" in message
    assert f"over this process's limit of {LOW_LIMIT}" in message
    assert "ulimit -Hn" in message and "trace fewer functions" in message


def test_many_sites_detach_in_a_helper_that_leaves_nothing(small_functions):
    """close() returns while a helper detaches; when the helper has exited, no int3 is left in the running target."""
    from gotrace.binary.gobinary import GoBinary
    from gotrace.bpf import uprobes
    from gotrace.trace.latency import LatencyTracer
    from gotrace.trace.tracer import traced_functions

    target = subprocess.Popen([str(small_functions)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        with GoBinary(small_functions) as gobin:
            functions = traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(["main.f*"])])
            tracer = LatencyTracer(gobin, functions, pid=target.pid, mode="perf_link")
        vaddrs = [v for f in functions for v in (f.entry_vaddr, *f.return_vaddrs)]
        tracer.attach()
        held = tracer._uprobes
        assert held.n_sites(held.units) == len(vaddrs) == N_SITES >= uprobes.BACKGROUND_DETACH_MIN_SITES
        assert int3s(target.pid, vaddrs) == N_SITES
        tracer.close()
        assert_helper_leaves_nothing(held.detach_helper_pid, target, vaddrs, 300)
    finally:
        target.kill()
        target.wait()


def test_many_uprobe_multi_links_detach_in_a_paced_helper_that_leaves_nothing(small_functions, monkeypatch):
    """uprobe_multi: from BACKGROUND_CLOSE_MIN_LINKS links on (here lowered to 100), close() returns while a helper
    removes them, its CPU time kept to DETACH_CPU_SHARE; once it has exited, no int3 is left in the target, and
    the target's results are right."""
    from gotrace.binary.gobinary import GoBinary
    from gotrace.bpf import uprobes
    from gotrace.trace.latency import LatencyTracer
    from gotrace.trace.tracer import traced_functions

    monkeypatch.setattr(uprobes, "BACKGROUND_CLOSE_MIN_LINKS", 100)
    target = subprocess.Popen([str(small_functions)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        with GoBinary(small_functions) as gobin:
            functions = traced_functions(gobin, [gobin.probe_sites(fn) for fn in gobin.match(["main.f*"])])
            tracer = LatencyTracer(gobin, functions, pid=target.pid, mode="uprobe_multi")
        tracer.hot_first = [fn.func_id for fn in functions]  # a chunk each: two links per function
        vaddrs = [v for f in functions for v in (f.entry_vaddr, *f.return_vaddrs)]
        tracer.attach()
        held = tracer._uprobes
        assert tracer.attached_by == "uprobe_multi"
        assert int3s(target.pid, vaddrs) == N_SITES
        tracer.close()
        assert_helper_leaves_nothing(held.detach_helper_pid, target, vaddrs, 120)
    finally:
        target.kill()
        target.wait()


def test_close_paced_closes_every_fd_and_keeps_to_its_share():
    """close_paced closes every fd given; while this process uses more CPU than its share (here a thread that
    burns 0.6 s of it), it waits: at a share of half a CPU, closing 600 pipes (microseconds of CPU) takes at
    least (0.6 - slack) / 0.5 seconds."""
    import threading

    from gotrace.bpf import uprobes

    fds = [fd for _ in range(300) for fd in os.pipe()]
    uprobes.close_paced(fds, 0.25)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)

    def burn() -> None:
        until = time.thread_time() + 0.6
        while time.thread_time() < until:
            pass

    fds = [fd for _ in range(300) for fd in os.pipe()]
    burner = threading.Thread(target=burn)
    started = time.monotonic()
    burner.start()
    uprobes.close_paced(fds, 0.5)
    took_s = time.monotonic() - started
    burner.join()
    assert took_s >= (0.6 - uprobes._PACE_SLACK_S) / 0.5 * 0.9
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def assert_helper_leaves_nothing(helper: int | None, target: subprocess.Popen, vaddrs: list[int],
                                 timeout_s: int) -> None:
    """The detach helper exits within timeout_s, leaving no int3 in the target, whose results are then right."""
    assert helper is not None
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{helper}").exists(), f"the detach helper did not finish within {timeout_s} s"
    assert int3s(target.pid, vaddrs) == 0
    out, _ = target.communicate(b"\n", timeout=60)
    assert target.returncode == 0 and out.decode().strip() == expected_sum()


def int3s(pid: int, vaddrs: list[int]) -> int:
    """How many of vaddrs hold an int3 (a uprobe) in process pid's memory (a non-PIE binary: vaddr = address)."""
    with open(f"/proc/{pid}/mem", "rb") as mem:
        n = 0
        for vaddr in vaddrs:
            mem.seek(vaddr)
            n += mem.read(1) == b"\xcc"
        return n


def test_the_helper_closes_only_after_gotrace_has_closed_its_own_copies():
    """The close that drops a link's last reference is the slow one (it removes the probes and waits for a grace
    period): _detach_in_background closes gotrace's copies of the fds before it returns, and the helper starts
    its work only after that, so that its closes are the last ones. Pipes stand in for the links; the helper
    reports which of them gotrace still held when its work began."""
    from gotrace.bpf import uprobes

    report_r, report_w = os.pipe()
    stand_ins = [fd for _ in range(50) for fd in os.pipe()]
    parent = os.getpid()

    def work() -> None:
        held = []
        for fd in stand_ins:
            try:
                if os.stat(f"/proc/{parent}/fd/{fd}").st_ino == os.fstat(fd).st_ino:
                    held.append(fd)
            except FileNotFoundError:
                pass
        os.write(report_w, json.dumps({"held": held, "mine": len([fd for fd in stand_ins if os.fstat(fd)])}).encode())

    helper = uprobes._detach_in_background([(report_w, -1), *((fd, -1) for fd in stand_ins)], work)
    assert helper > 0
    for fd in (report_w, *stand_ins):  # closed here before it returned
        with pytest.raises(OSError):
            os.fstat(fd)
    chunks = []
    while chunk := os.read(report_r, 65536):  # EOF once the helper has exited
        chunks.append(chunk)
    os.close(report_r)
    report = json.loads(b"".join(chunks))
    assert report == {"held": [], "mine": len(stand_ins)}
