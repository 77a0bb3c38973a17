"""Shared pytest fixtures: Go test binaries, isolation from other runs on the machine, processes, caddy, and the rule that decides when BPF tests skip.

The helpers behind the fixtures live in tests/support/ (see its __init__).

Isolation (support.hermetic): before anything imports gotrace, this file
points GOTRACE_BPF_CACHE at a fresh directory of this session, so the
session compiles and caches its own BPF programs (removed at the end);
GOTRACE_SITES_CACHE likewise, for the probe sites kept per binary.
A test that traces every process of a binary (no pid) copies it first with
the ``private_binary`` fixture and runs the program from the copy.

Go binaries (see tests/support/gobuild.py):

* ``testbin(program, version, mode="default", arch="amd64")`` builds (or
  takes from the cache) one binary and returns its path. It is gobuild.build,
  also importable directly: ``from support.gobuild import build``.
* A test with an argument named ``go_target`` runs once per (version, mode,
  arch) of ``gobuild.matrix()``, ``go_target_amd64`` once per amd64
  combination (binaries that can run here). Both are ``GoTarget`` tuples;
  ``go_target.binary()`` builds the service for it. These tests get the
  ``matrix`` marker, so ``-m 'not matrix'`` leaves them out.
* ``service_matrix`` (session scope) builds the service for the whole
  matrix once, in one process, and maps (version, mode, arch) to its path.
* ``private_binary(path)`` copies a binary into a temporary directory of
  its own (same file name, its own inode) and returns the copy's path.

Processes and third-party programs:

* ``spawn(argv, **popen_kwargs)`` starts a support.processes.Running; the
  processes still running when the test ends are killed.
* ``caddy`` (session scope): the path of the caddy binary scripts/thirdparty
  installs. When it cannot be installed the tests using it skip, or fail
  when env ``CI`` is set.

BPF (the ``bpf`` marker):

* A test marked ``@pytest.mark.bpf`` first checks that BPF works here: root,
  the kernel loads a program through bpf() (gotrace's own system calls, no
  bcc), the kernel has uprobes. Tests may also call ``need_bpf()`` themselves.
* When that check fails the test SKIPS, unless BPF is required: env ``CI``
  set (non-empty) or ``GOTRACE_FORCE_BPF=1``. Then it FAILS with the reason.
* Under that same rule, any other skip of a ``bpf``-marked test (an
  ``importorskip``, a ``pytest.skip`` in the test) is turned into a failure.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from support import hermetic

# First, before any module imports gotrace (which reads the variable once).
SESSION_BPF_CACHE = hermetic.use_private_bpf_cache()
SESSION_SITES_CACHE = hermetic.use_private_sites_cache()

from support import caddy as caddy_support  # noqa: E402
from support import gobuild  # noqa: E402
from support.processes import Spawner  # noqa: E402


@pytest.fixture(autouse=True)
def private_guard_memory(tmp_path_factory, monkeypatch):
    """Each test its own cost-guard memory (gotrace.trace.guardmemory): what one test's guard detached never
    leaves a function out of another test's trace. Child processes inherit the variable."""
    directory = tmp_path_factory.mktemp("guard-memory")
    monkeypatch.setenv(hermetic.GUARD_MEMORY_ENV, str(directory))
    return directory


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_BPF_CACHE, ignore_errors=True)
    shutil.rmtree(SESSION_SITES_CACHE, ignore_errors=True)


class GoTarget(NamedTuple):
    """One combination of the build matrix."""

    version: str
    mode: str
    arch: str

    def binary(self, program: str = "service") -> Path:
        return gobuild.build(program, self.version, self.mode, self.arch)

    @property
    def id(self) -> str:
        return f"go{self.version}-{self.mode}-{self.arch}"


def _target_params(arches) -> list:
    return [
        pytest.param(GoTarget(*combo), id=GoTarget(*combo).id, marks=pytest.mark.matrix)
        for combo in gobuild.matrix(arches)
    ]


def pytest_generate_tests(metafunc):
    if "go_target" in metafunc.fixturenames:
        metafunc.parametrize("go_target", _target_params(("amd64", "arm64")))
    if "go_target_amd64" in metafunc.fixturenames:
        metafunc.parametrize("go_target_amd64", _target_params(("amd64",)))


@pytest.fixture
def testbin():
    """The builder: testbin(program, version, mode="default", arch="amd64") -> Path of the binary."""
    return gobuild.build


@pytest.fixture
def private_binary(tmp_path_factory):
    """private_binary(path) -> a copy of that binary (same file name, its own inode) in a directory of its own,
    to run and to trace by path. (Not in tmp_path, which stays the test's own.)"""
    return lambda binary: hermetic.private_copy(binary, tmp_path_factory.mktemp("private-binary"))


@pytest.fixture
def spawn():
    """spawn(argv, **popen_kwargs) -> support.processes.Running; every process still running at the end of the
    test is killed."""
    spawner = Spawner()
    yield spawner
    spawner.kill_all()


@pytest.fixture(scope="session")
def caddy() -> Path:
    """The caddy binary (scripts/thirdparty installs it once); skips, or fails under CI, when it cannot."""
    try:
        return caddy_support.install()
    except caddy_support.CaddyUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def service_matrix() -> dict[tuple[str, str, str], Path]:
    """The service built for every (version, mode, arch) of the matrix, built once per session."""
    built = gobuild.prebuild(("service",))
    return {(version, mode, arch): path for (_, version, mode, arch), path in built.items()}


# --- BPF availability -------------------------------------------------------

BPF_PROBE_PROGRAM = r"""
import os, struct
from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, Syscalls
sys = Syscalls()
os.close(sys.map_create(2, 4, 4, 1, 0, b"gotrace_probe"))
exit_0 = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit
os.close(sys.prog_load(BPF_PROG_TYPE_KPROBE, exit_0, b"GPL", b"gotrace_probe", 0))
"""


def bpf_required() -> bool:
    """True when BPF tests must run, not skip: env CI is set (non-empty) or GOTRACE_FORCE_BPF=1."""
    return bool(os.environ.get("CI")) or os.environ.get("GOTRACE_FORCE_BPF") == "1"


@functools.lru_cache(maxsize=None)
def bpf_unavailable_reason() -> str | None:
    """Why BPF tests cannot run on this machine, or None when they can (checked once per session)."""
    if os.geteuid() != 0:
        return "BPF tests need root (run pytest as root)"
    if not any(Path(p).exists() for p in ("/sys/bus/event_source/devices/uprobe", "/sys/kernel/tracing/uprobe_events",
                                           "/sys/kernel/debug/tracing/uprobe_events")):
        return "the kernel has no uprobe support (no uprobe event source)"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", BPF_PROBE_PROGRAM],
            cwd=gobuild.REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "loading a trivial BPF program took over 120 s"
    if proc.returncode != 0:
        last = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
        return f"the kernel does not load a BPF program: {last[0]}"
    return None


def need_bpf() -> None:
    """Skip the calling test when BPF is unavailable, or fail it when BPF is required (CI, GOTRACE_FORCE_BPF=1)."""
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if bpf_required():
        pytest.fail(f"BPF is required here (CI or GOTRACE_FORCE_BPF=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def requires_bpf() -> None:
    """Fixture form of need_bpf()."""
    need_bpf()


def pytest_runtest_setup(item):
    if item.get_closest_marker("bpf") is not None:
        need_bpf()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("bpf") is not None
        and bpf_required()
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"bpf test skipped while BPF is required (CI or GOTRACE_FORCE_BPF=1): {reason}"
