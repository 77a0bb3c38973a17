"""The measurement floor: measured once per host with the real latency program, cached, stated in every report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import gobuild
from gotrace.commands import floor
from gotrace.output.latency import format_duration

pytestmark = pytest.mark.bpf
REPO = gobuild.REPO_ROOT


def gotrace(*args: object, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gotrace", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_floor_is_measured_once_cached_and_in_every_report(tmp_path):
    env = {**os.environ, "GOTRACE_CACHE": str(tmp_path)}
    binary = gobuild.build("slowtruth", "1.23.9", "default")
    first = gotrace("latency", "-c", f"{binary} -n 40", binary, "main.target", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert "measured this host's floor once: an empty Go function measures" in first.stderr
    (cache,) = (tmp_path / "floor").glob("floor-*.json")
    cached = json.loads(cache.read_text())
    assert cached["calls"] == 5000 and cached["function"] == "main.empty" and cached["kernel"] == os.uname().release
    (report,) = [json.loads(line) for line in first.stdout.splitlines()]
    assert report["floor_ns"] == cached["floor_ns"] > 0
    # an empty function's median is far below the 20 us the fastest traced call spins for, plus the floor itself
    assert report["floor_ns"] < report["functions"][0]["p50_ns"]

    second = gotrace("latency", "-c", f"{binary} -n 40", binary, "main.target", env=env)
    assert second.returncode == 0, second.stderr
    assert "floor" not in second.stderr  # not measured again
    assert f"floor: an empty Go function measures {format_duration(cached['floor_ns'])} on this host" in second.stdout

    shown = gotrace("floor", "--cached", "--json", env=env)
    assert json.loads(shown.stdout)["floor_ns"] == cached["floor_ns"]


def test_floor_unknown_is_said_with_the_reason(tmp_path, monkeypatch):
    env = {**os.environ, "GOTRACE_CACHE": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "gotrace", "floor", "--cached"], cwd=REPO, capture_output=True,
                           text=True, timeout=60, env=env)
    assert shown.returncode == 2 and shown.stdout.startswith("floor unknown: not measured yet on this host")
    monkeypatch.setenv("GOTRACE_CACHE", str(tmp_path))
    monkeypatch.setattr(floor, "find_go", lambda: None)  # a production host without Go
    found = floor.host_floor()
    assert found.ns is None and found.reason.startswith("no Go toolchain to build the measuring program")
    assert not list((tmp_path / "floor").glob("floor-*.json"))
