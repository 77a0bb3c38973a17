"""`gotrace doctor`: what it says this host can do is what tracing then does, and a host that cannot trace exits 3 naming what is missing.

Live: doctor's verdict on uprobe_multi is checked against how a real tracer
then attaches; its BPF programs line against where the tracer got them.
Refused bpf() (a seccomp filter as in Docker's default profile, a user
namespace as in a rootless container) must give exit 3 and say bpf() is
what is missing. The features are tried by making them, so a helper this
kernel does not have must come back unavailable with the verifier's reason.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from support import gobuild
from gotrace.bpf import features
from gotrace.bpf.syscalls import Syscalls
from gotrace.output.doctor import CommandLine, DoctorReport, FeatureLine, ProgramLine, render_doctor_text
from test_hardening import as_nobody, bpf_denied_by_seccomp, bpf_denied_by_user_namespace
from test_tracer_bpf import finish_truth, latency_tracer, start_truth, traced_functions

GOTRACE = [sys.executable, "-m", "gotrace"]


def doctor(*wrap, args=("--json",)) -> subprocess.CompletedProcess:
    argv = GOTRACE + ["doctor", *args]
    for wrapper in wrap:
        argv = wrapper(argv)
    return subprocess.run(argv, cwd=gobuild.REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.bpf
def test_doctor_says_what_the_tracer_then_does():
    proc = doctor()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["can_trace"] is True
    assert report["kernel_release"] == os.uname().release
    commands = {c["command"]: c for c in report["commands"]}
    assert commands["latency"]["ok"] and commands["args"]["ok"] and commands["funcs"]["ok"]
    assert {p["program"]: p["loads"] for p in report["programs"]} == {"latency": True, "args128": True}
    features_by_name = {f["name"]: f["available"] for f in report["features"]}

    binary = gobuild.build("latencytruth", "1.23.9", "default")
    functions = traced_functions(binary, ["main.work"])
    proc = start_truth(binary)
    with latency_tracer(binary, functions, pid=proc.pid) as tracer:
        finish_truth(proc)
        attached_by, origin = tracer.attached_by, tracer.bpf_origin
    assert attached_by == ("uprobe_multi" if features_by_name["uprobe_multi links"] else "perf_link")
    assert ("uprobe_multi links" in commands["latency"]["mechanism"]) == (attached_by == "uprobe_multi")
    (latency_program,) = [p for p in report["programs"] if p["program"] == "latency"]
    assert latency_program["origin"] in ("shipped", "cached", "compiled")
    assert origin in ("shipped", "cached")  # doctor's load left the program where the tracer finds it
    text = doctor(args=()).stdout
    assert text.startswith("gotrace doctor: this host can trace (latency, args)")


@pytest.mark.bpf
@pytest.mark.parametrize("deny", [bpf_denied_by_seccomp, bpf_denied_by_user_namespace],
                         ids=["seccomp", "user-namespace"])
def test_refused_bpf_exits_3_and_names_it(deny):
    proc = doctor(deny)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["can_trace"] is False
    commands = {c["command"]: c for c in report["commands"]}
    assert commands["funcs"]["ok"] is True
    for name in ("latency", "args"):
        assert not commands[name]["ok"]
        assert any(m.startswith("bpf() (Operation not permitted") for m in commands[name]["missing"])
    (bpf,) = [f for f in report["features"] if f["name"] == "bpf() system call"]
    assert bpf["available"] is False
    assert all(f["available"] is None for f in report["features"] if f is not bpf)  # not tried, not guessed
    text = doctor(deny, args=())
    assert text.returncode == 3 and "this host cannot trace" in text.stdout and "Traceback" not in text.stderr


@pytest.mark.bpf
def test_a_helper_the_kernel_lacks_is_unavailable_with_the_verifiers_reason():
    call_unknown = struct.pack("<BBhi", 0x85, 0, 0, 99999) + struct.pack("<BBhi", 0xB7, 0, 0, 0) + \
        struct.pack("<BBhi", 0x95, 0, 0, 0)
    check = features._check_program(Syscalls(), "helper 99999", "no kernel", call_unknown)
    assert check.available is False
    assert "99999" in check.detail


def test_text_report_names_what_is_missing_per_command():
    report = DoctorReport(
        "5.10.0", "x86_64", "amd64", "uid 1000", (), False, "confidentiality",
        (FeatureLine("BPF cookies", False, "Linux 5.15", "invalid func unknown#174"),),
        (ProgramLine("latency", "shipped", "/x/latency.amd64.o", None, ""),),
        (CommandLine("funcs", True, "reads the binary only (no BPF, no root)", ()),
         CommandLine("latency", False, "", ("root or CAP_BPF and CAP_PERFMON (run as root: sudo)",
                                            "BPF cookies (Linux 5.15+)"))))
    text = render_doctor_text(report)
    assert report.can_trace is False
    assert text.startswith("gotrace doctor: this host cannot trace")
    assert "NO   BPF cookies" in text and "invalid func unknown#174" in text
    assert "latency   NO  missing: root or CAP_BPF and CAP_PERFMON (run as root: sudo); BPF cookies (Linux 5.15+)" \
        in text
    assert "lockdown    confidentiality" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another user")
def test_not_root_exits_3_and_says_run_as_root():
    proc = doctor(as_nobody)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["privileges_ok"] is False and report["capabilities"] == []
    commands = {c["command"]: c for c in report["commands"]}
    assert commands["latency"]["missing"] == ["root or CAP_BPF and CAP_PERFMON (run as root: sudo)"]
    assert commands["funcs"]["ok"] is True
