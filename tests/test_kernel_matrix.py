"""The kernel matrix: a telling subset of the BPF tests, run inside VMs booted with the kernels production hosts run.

This machine's kernel runs the whole suite. Debian 12's stock 6.1 (the
perf-event path of every pre-6.6 kernel: Amazon Linux 2023, Ubuntu 22.04)
and its 6.12.x+deb12 (uprobe_multi, as Debian 13) each boot in a VM through
scripts/vmtest (virtme-ng on QEMU, this root filesystem read-only, KVM when
it works, else emulation), which installs what it needs. Inside, as root
with CI=true (so a skip is a failure), pytest runs GUEST_TESTS:

* the attach path this kernel must use, exact latency counts and
  percentiles against testdata/latencytruth, and, on a perf-event kernel,
  `gotrace latency -p PID 'runtime.*'` (~3,000 sites, two descriptors each)
  from a shell's file limits (1024, hard 4096) (tests/test_kernel_checks.py);
* SIGKILL of gotrace leaves no probe, no BPF object, the service running;
* the wheel, built and installed into a venv here (the guest has no
  network) and shared read-only: `gotrace doctor` loads every shipped
  program on this kernel's verifier, and `gotrace args` reports every value
  of testdata/argstruth exactly, with no clang, headers or cache in sight.

Go binaries are built here first (the guest cannot build), in
/var/cache/gotrace/builds, which the guest sees read-only. The checkout's
own tests compile the latency program with clang in the guest once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import gobuild
from test_wheel import PREBUILT_VENV_ENV, build_wheel_venv

pytestmark = [pytest.mark.bpf, pytest.mark.vm]

VMTEST = gobuild.REPO_ROOT / "scripts" / "vmtest"
WHEELS_DIR = Path("/var/cache/gotrace/vm/wheels")  # outside /tmp and /var/cache/gotrace/bpf: the guest can see it
# Kernel series -> the attach path gotrace must take on it.
KERNELS = {"6.1": "perf_link", "6.12": "uprobe_multi"}
GUEST_TESTS = [
    "tests/test_kernel_checks.py::test_attach_path_is_the_one_this_kernel_offers",
    "tests/test_kernel_checks.py::test_latency_counts_are_exact",
    "tests/test_latency_cli.py::test_sigkill_of_gotrace_leaves_no_probe_and_service_keeps_running",
    "tests/test_wheel.py::test_doctor_in_the_bare_venv_finds_the_shipped_objects",
    "tests/test_wheel.py::test_args_in_the_bare_venv_reports_every_value_exactly",
]
# Only where there are two descriptors per site (perf-event links), and last: its ~3,000 sites are still being
# detached (by gotrace's helper process) when it ends.
MANY_SITES_TEST = "tests/test_kernel_checks.py::test_many_sites_attach_at_a_shells_file_limit"
VM_TIMEOUT_S = 900  # 6.1 takes about 5 minutes emulated; a guest that hangs at boot must not eat the CI budget


def run_group(argv: list[str], timeout_s: float) -> tuple[int, str]:
    """Run argv in its own process group; on timeout kill the whole group (QEMU included). (exit status, output)."""
    proc = subprocess.Popen(argv, cwd=gobuild.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{argv[:4]} did not finish within {timeout_s} s:\n{output[-6000:]}")
    return proc.returncode, output


@pytest.fixture(scope="module")
def wheel_venv() -> Path:
    """The Go binaries the guest tests trace, built here; and a venv with the wheel, in a directory the guest sees."""
    for program, version in (("latencytruth", "1.23.9"), ("service", "1.23.9"), ("argstruth", gobuild.TOOLCHAINS[-1])):
        gobuild.build(program, version, "default")
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="matrix-", dir=WHEELS_DIR))
    try:
        yield build_wheel_venv(work)["venv"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("series", list(KERNELS))
def test_kernel_matrix(series, wheel_venv):
    tests = GUEST_TESTS + ([MANY_SITES_TEST] if KERNELS[series] == "perf_link" else [])
    started = time.monotonic()
    code, release = run_group([str(VMTEST), "--release", series], 1200)
    assert code == 0, f"scripts/vmtest could not set up a {series} kernel:\n{release[-4000:]}"
    release = release.strip().splitlines()[-1]
    assert re.match(rf"^{re.escape(series)}[.-]", release), release
    installed_s = time.monotonic() - started

    code, output = run_group(
        [str(VMTEST), "--timeout", str(VM_TIMEOUT_S), "--rodir", str(wheel_venv.parent), release, "--",
         "env", "CI=true", "GOTRACE_FORCE_BPF=1", f"GOTRACE_EXPECT_ATTACH={KERNELS[series]}",
         f"{PREBUILT_VENV_ENV}={wheel_venv}",
         sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--durations=0", *tests],
        VM_TIMEOUT_S + 120,
    )
    print(output[-5000:])
    print(f"kernel {release}: set up in {installed_s:.0f} s, VM run in {time.monotonic() - started - installed_s:.0f} s")
    assert code == 0, f"{release}: the guest's tests failed (exit {code}):\n{output[-8000:]}"
    # pytest -q's summary: every guest test passed, none skipped or deselected.
    summary = re.search(r"(?m)^=*\s*(\d+) passed(?:, \d+ warnings?)? in [\d.]+s", output)
    assert summary and int(summary.group(1)) == len(tests), output[-3000:]
