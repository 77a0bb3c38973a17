"""gotrace.bpf.kernel: each missing capability gives the one-line fix a user needs, and tracing needs neither bcc nor kernel headers; scripts/kernel-headers builds a tree bcc can use (for scripts/bench's bcc floor)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gotrace.bpf import kernel as kernelenv
from gotrace.errors import CapabilityError

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "kernel-headers"


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(kernelenv.os, "geteuid", lambda: 0)


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """A machine with no headers anywhere, an empty gotrace cache, and a uprobe PMU."""
    pmu = tmp_path / "uprobe_type"
    pmu.write_text("8\n")
    monkeypatch.setattr(kernelenv, "UPROBE_PMU_TYPE", pmu)
    monkeypatch.setattr(kernelenv, "MODULES_DIR", tmp_path / "modules")
    monkeypatch.setattr(kernelenv, "HEADERS_CACHE", tmp_path / "cache")
    # setenv first so that teardown also removes a value kernelenv sets itself.
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "placeholder")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    return tmp_path


def headers_tree(path: Path) -> Path:
    (path / "include").mkdir(parents=True)
    return path


def fake_status(tmp_path: Path, cap_eff: int) -> Path:
    status = tmp_path / "status"
    status.write_text(f"Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff:016x}\n")
    return status


def test_not_root_says_run_as_root_or_which_capabilities(monkeypatch, tmp_path):
    monkeypatch.setattr(kernelenv.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(kernelenv, "PROC_STATUS", fake_status(tmp_path, 1 << kernelenv.CAP_BPF))
    with pytest.raises(CapabilityError, match=r"run as root \(sudo\), or give gotrace CAP_PERFMON$") as err:
        kernelenv.check_can_trace()
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value)
    monkeypatch.setattr(kernelenv, "PROC_STATUS", fake_status(tmp_path, 0))
    with pytest.raises(CapabilityError, match=r"give gotrace CAP_BPF and CAP_PERFMON$"):
        kernelenv.check_can_trace()


def test_capabilities_without_root_are_enough(monkeypatch, tmp_path):
    monkeypatch.setattr(kernelenv.os, "geteuid", lambda: 1000)
    both = (1 << kernelenv.CAP_BPF) | (1 << kernelenv.CAP_PERFMON)
    found = kernelenv.privileges(fake_status(tmp_path, both))
    assert found.can_trace and found.capabilities == {"CAP_BPF", "CAP_PERFMON"} and found.missing == []
    assert kernelenv.privileges(fake_status(tmp_path, 1 << kernelenv.CAP_SYS_ADMIN)).can_trace
    assert not kernelenv.privileges(fake_status(tmp_path, 1 << kernelenv.CAP_PERFMON)).can_trace


@pytest.mark.skipif(os.geteuid() != 0, reason="bpf() needs root")
def test_tracing_needs_neither_bcc_nor_kernel_headers(as_root, fake_system, monkeypatch):
    """No headers anywhere, bcc not importable: the checks pass and point bcc nowhere."""
    monkeypatch.setitem(sys.modules, "bcc", None)  # import bcc raises ImportError
    kernelenv.check_can_trace()
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_missing_headers_for_bcc_says_run_the_script(as_root, fake_system):
    with pytest.raises(CapabilityError) as err:
        kernelenv.use_kernel_headers()
    message = str(err.value)
    assert "run scripts/kernel-headers (or: apt-get install linux-headers-amd64" in message
    assert os.uname().release in message
    assert "BCC_KERNEL_SOURCE" not in os.environ


def test_cached_tree_is_used_when_the_kernel_has_no_headers(as_root, fake_system):
    cached = headers_tree(fake_system / "cache" / os.uname().release)
    kernelenv.use_kernel_headers()
    assert os.environ["BCC_KERNEL_SOURCE"] == str(cached)


def test_lib_modules_build_wins_over_the_cache(as_root, fake_system):
    headers_tree(fake_system / "cache" / os.uname().release)
    build = headers_tree(fake_system / "modules" / os.uname().release / "build")
    assert kernelenv.use_kernel_headers() == build
    assert "BCC_KERNEL_SOURCE" not in os.environ  # bcc finds /lib/modules itself


def test_explicit_bcc_kernel_source_is_respected_or_refused(as_root, fake_system, monkeypatch):
    mine = headers_tree(fake_system / "mine")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(mine))
    assert kernelenv.use_kernel_headers() == mine
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(fake_system / "nowhere"))
    with pytest.raises(CapabilityError, match="unset it or run scripts/kernel-headers"):
        kernelenv.use_kernel_headers()


def test_kernel_without_uprobes_is_named(fake_system, monkeypatch):
    monkeypatch.setattr(kernelenv, "UPROBE_PMU_TYPE", fake_system / "no-such-pmu")
    with pytest.raises(CapabilityError, match="cannot attach uprobes"):
        kernelenv.uprobe_pmu_type()


def test_unmounted_tracefs_without_root_says_how_to_mount(fake_system, monkeypatch):
    monkeypatch.setattr(kernelenv, "TRACEFS_DIR", fake_system / "tracing")
    monkeypatch.setattr(kernelenv.os, "geteuid", lambda: 1000)
    with pytest.raises(CapabilityError, match=r"mount -t tracefs nodev .*/tracing"):
        kernelenv.ensure_tracefs()


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/kernel-headers needs root")
def test_kernel_headers_script_is_idempotent_and_bcc_compiles_with_its_tree():
    first = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    tree = Path(first.stdout.strip())
    assert tree == kernelenv.HEADERS_CACHE / os.uname().release
    assert (tree / "include" / "generated" / "autoconf.h").resolve().is_file()
    second = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout == first.stdout
    # bcc compiles a program that includes kernel headers with this tree.
    program = (
        "from bcc import BPF\n"
        "b = BPF(text='#include <uapi/linux/ptrace.h>\\nint f(struct pt_regs *ctx) { return ctx->sp != 0; }')\n"
        "b.load_func(b'f', BPF.KPROBE)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BCC_KERNEL_SOURCE=str(tree))
    compiled = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert compiled.stdout.strip() == "ok", compiled.stderr
