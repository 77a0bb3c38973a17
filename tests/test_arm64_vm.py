"""arm64 traced for real: a telling subset of the BPF tests, run inside an emulated arm64 Debian 12 guest.

This machine is amd64; `scripts/vmtest arm64` boots Debian's arm64 6.12
kernel (uprobe_multi) under `qemu-system-aarch64 -M virt -cpu max` (TCG
emulation) on an arm64 Debian 12 root filesystem it builds once, with
gotrace installed as its wheel installs (BPF objects for arm64 compiled
here by clang). The Go binaries are the matrix's own arm64 cross-builds,
built here first (the guest has no Go) in /var/cache/gotrace/builds, which
the guest sees read-only. Inside, as root with CI=true (a skip is a
failure), pytest runs on arm64 binaries (gobuild.NATIVE_ARCH is arm64 there):

* the latency ground truth (testdata/latencytruth): exact counts, p50 and
  p99 within tolerance, recursion, goroutines whose stacks move, panics
  recovered (unmatched = panicked), by pid and for every process of a PIE;
  and the same on the perf-event attach path (one link per site, Linux
  5.15-6.5);
* `args` values against testdata/argstruth, on one toolchain, default and
  stripped PIE (R0-R15 arguments from regs[], g from R28);
* `latency --slow --by caller` against testdata/slowtruth (a stripped
  go1.27 build): every slow call's event, its stack walked by frame pointer
  (R29) from the `ret` probe, its caller's file:line and inlining from
  pclntab, exact counts per caller;
* SIGKILL of gotrace leaves no probe (the `brk #0x5` the kernel writes over
  each probed `ret` is gone), no BPF object, and the service running.

Emulation makes everything 10-50x slower: the guest's pytest is given a
generous timeout and the figures (guest kernel, Go version, run time) are
printed.
"""

from __future__ import annotations

import re
import time

import pytest

from support import gobuild
from test_kernel_matrix import run_group

pytestmark = [pytest.mark.bpf, pytest.mark.vm]

VMTEST = gobuild.REPO_ROOT / "scripts" / "vmtest"
GO_VERSION = "1.23.9"
# (program, Go version, mode) of every binary the guest's tests run, all for arm64.
GUEST_BUILDS = [("latencytruth", "1.23.9", "default"), ("latencytruth", "1.25.5", "pie"),
                ("argstruth", GO_VERSION, "default"), ("argstruth", GO_VERSION, "stripped-pie"),
                ("service", GO_VERSION, "default"), ("slowtruth", "1.27.3", "stripped")]
GUEST_TESTS = [
    "tests/test_tracer_bpf.py::test_latency_matches_program_own_timing",
    "tests/test_tracer_bpf.py::test_perf_link_attach_path_counts_the_same",
    f"tests/test_args_truth.py::test_every_value_equals_ground_truth[default-{GO_VERSION}]",
    f"tests/test_args_truth.py::test_every_value_equals_ground_truth[stripped-pie-{GO_VERSION}]",
    "tests/test_latency_cli.py::test_sigkill_of_gotrace_leaves_no_probe_and_service_keeps_running",
    "tests/test_slow_truth.py::test_slow_events_and_callers_match_the_program[go1.27.3-stripped]",
]
GUEST_TEST_COUNT = 7  # test_latency_matches_program_own_timing has two cases
VM_TIMEOUT_S = 1800


def test_arm64_guest_traces_arm64_binaries():
    for program, version, mode in GUEST_BUILDS:
        gobuild.build(program, version, mode, "arm64")
    started = time.monotonic()
    code, release = run_group([str(VMTEST), "--release", "arm64"], 3600)
    assert code == 0, f"scripts/vmtest could not build the arm64 guest:\n{release[-4000:]}"
    release = release.strip().splitlines()[-1]
    assert re.match(r"^6\.12\.\d+\+deb12-arm64$", release), release
    set_up_s = time.monotonic() - started

    started = time.monotonic()
    code, output = run_group(
        [str(VMTEST), "--timeout", str(VM_TIMEOUT_S), "arm64", "--",
         "env", "CI=true", "GOTRACE_FORCE_BPF=1",
         "python3", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--durations=0", *GUEST_TESTS],
        VM_TIMEOUT_S + 120,
    )
    print(output[-6000:])
    print(f"arm64 guest, kernel {release}, Go {GO_VERSION} arm64 binaries: set up in {set_up_s:.0f} s, "
          f"guest run in {time.monotonic() - started:.0f} s")
    assert code == 0, f"the arm64 guest's tests failed (exit {code}):\n{output[-8000:]}"
    # pytest -q's last line: every guest test passed, none skipped or deselected.
    summary = re.search(r"(?m)^=*\s*(\d+) passed(?:, \d+ warnings?)? in [\d.]+s", output)
    assert summary and int(summary.group(1)) == GUEST_TEST_COUNT, output[-3000:]
