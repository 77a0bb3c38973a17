"""The cost guard's memory (gotrace.trace.guardmemory): what it detached in one trace of a binary is left out of the
next trace that matches it only through a wide pattern.

The first tests read and write real files with no kernel involved; the last ones trace hotloop for real (root, BPF)
and look at the traced process's own memory for the probes' int3 bytes.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from gotrace.trace.guardmemory import KEEP_S, REASON, GuardMemory, Remembered
from support import gobuild
from support.cli import run_gotrace_process
from test_guard import HOT, Hotloop, gotrace, hotloop
from test_latency_cli import UPROBE_INSN, process_bytes

DIGEST = "ab" * 32
NOW_S = 1_800_000_000.0


def remembered(name: str, program: str = "latency", pct: float = 5.0, at_s: float = NOW_S) -> Remembered:
    return Remembered(name, program, pct, 123_456.0, at_s)


def test_what_was_detached_is_left_out_of_the_same_program_at_the_same_or_a_smaller_budget(tmp_path):
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("runtime.mallocgc")], [])
    memory = GuardMemory(DIGEST, tmp_path, now_s=NOW_S + 60)
    names = ["runtime.mallocgc", "runtime.newobject"]
    assert list(memory.left_out("latency", names, 5.0)) == ["runtime.mallocgc"]
    assert list(memory.left_out("latency", names, 2.0)) == ["runtime.mallocgc"]
    assert memory.left_out("latency", names, 10.0) == {}  # a larger budget may afford it
    assert memory.left_out("latency", names, None) == {}  # without a budget nothing is ever detached
    assert memory.left_out("latency", names, 0.0) == {}
    assert memory.left_out("count", names, 5.0) == {}  # a count's hit costs less: learnt apart
    assert memory.left_out("latency", ["runtime.newobject"], 5.0) == {}
    entry = memory.left_out("latency", names, 5.0)["runtime.mallocgc"]
    assert (entry.max_overhead_pct, entry.hits_per_s, entry.detached_at_s) == (5.0, 123_456.0, NOW_S)


def test_another_binary_reads_nothing(tmp_path):
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("main.hot")], [])
    assert len(GuardMemory("cd" * 32, tmp_path, now_s=NOW_S)) == 0
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S)) == 1


def test_an_old_detachment_is_forgotten(tmp_path):
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("main.hot")], [])
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S + KEEP_S - 1)) == 1
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S + KEEP_S + 1)) == 0


def test_a_function_called_and_kept_is_forgotten_and_updates_merge_with_other_traces(tmp_path):
    first = GuardMemory(DIGEST, tmp_path, now_s=NOW_S)
    second = GuardMemory(DIGEST, tmp_path, now_s=NOW_S)  # another gotrace on the same binary, opened meanwhile
    first.update("latency", [remembered("a"), remembered("b")], [])
    second.update("latency", [remembered("c")], ["a"])  # it probed `a`, saw it called, kept it
    second.update("count", [remembered("a", "count")], [])
    memory = GuardMemory(DIGEST, tmp_path, now_s=NOW_S)
    assert sorted(memory.left_out("latency", "abc", 5.0)) == ["b", "c"]
    assert sorted(memory.left_out("count", "abc", 5.0)) == ["a"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "not json", "empty", "other binary"])
def test_a_damaged_file_is_nothing_kept(tmp_path, damage):
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("main.hot")], [])
    (path,) = tmp_path.glob("*.json")
    data = path.read_bytes()
    if damage == "flip":
        data = data.replace(b"main.hot", b"main.hoT")  # the checksum no longer matches
    elif damage == "truncate":
        data = data[:-5]
    elif damage == "not json":
        data = b"{not json\n{}"
    elif damage == "empty":
        data = b""
    else:  # a sound file of another binary, in this binary's place
        other = GuardMemory("cd" * 32, tmp_path / "other", now_s=NOW_S)
        other.update("latency", [remembered("main.hot")], [])
        data = next((tmp_path / "other").glob("*.json")).read_bytes()
    path.write_bytes(data)
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S)) == 0
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("main.cold")], [])
    assert list(GuardMemory(DIGEST, tmp_path, now_s=NOW_S).left_out("latency", ["main.cold"], 5.0)) == ["main.cold"]


def test_a_file_or_directory_others_can_write_is_not_read(tmp_path):
    GuardMemory(DIGEST, tmp_path, now_s=NOW_S).update("latency", [remembered("main.hot")], [])
    (path,) = tmp_path.glob("*.json")
    os.chmod(path, 0o622)
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S)) == 0
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o777)
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S)) == 0
    os.chmod(tmp_path, 0o700)
    assert len(GuardMemory(DIGEST, tmp_path, now_s=NOW_S)) == 1


def test_a_directory_that_cannot_be_made_keeps_nothing_and_raises_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    memory = GuardMemory(DIGEST, blocker / "guard", now_s=NOW_S)
    memory.update("latency", [remembered("main.hot")], [])
    assert len(GuardMemory(DIGEST, blocker / "guard", now_s=NOW_S)) == 0


# -- for real ----------------------------------------------------------------------------------------------------------

def hot_sites(binary: Path) -> list[int]:
    """vaddrs of main.hot's entry site and return sites (a non-PIE build: the addresses in the process too)."""
    proc = run_gotrace_process("funcs", "--json", binary, HOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (fn,) = json.loads(proc.stdout)["functions"]
    return [fn["entry"] + fn["entry_site"]] + [fn["entry"] + r for r in fn["returns"]]


def trace(spawn, prog: Hotloop, vaddrs: list[int], *args: object, calls: int = 2_000
          ) -> tuple[str, dict, list[bytes]]:
    """One latency or count run on hotloop: stderr, its final report, and the bytes at `vaddrs` (main.hot's
    sites) while it traced."""
    command, *rest = args
    tracer = spawn(gotrace(command, "-p", prog.pid, *rest, "--json"))
    tracer.wait_line("stderr", r"^Tracing \d+ function")
    sites = process_bytes(prog.pid, vaddrs)
    prog.run(calls)
    tracer.proc.send_signal(signal.SIGINT)
    assert tracer.finish(60) == 0, tracer.stderr
    docs = [json.loads(line) for line in tracer.stdout.splitlines() if line.startswith("{")]
    assert docs[-1]["event"] == "report" and docs[-1]["final"] is True
    return tracer.stderr, docs[-1], sites



@pytest.mark.bpf
def test_a_function_the_guard_detached_is_left_out_of_the_next_wide_trace_and_probed_when_asked(tmp_path, spawn,
                                                                                                 private_guard_memory):
    binary = hotloop(tmp_path)
    vaddrs = hot_sites(binary)
    int3 = UPROBE_INSN[gobuild.NATIVE_ARCH]
    prog = Hotloop(binary)
    original = process_bytes(prog.pid, vaddrs)
    try:
        # 1. 'main.*' with the default budget: main.hot, called 2,000,000 times, is detached.
        tracer = spawn(gotrace("latency", "-p", prog.pid, "main.*", "--json"))
        tracer.wait_line("stderr", r"^Tracing 3 functions ")
        prog.start(2_000_000)
        tracer.wait_line("stderr", r"^gotrace: detached 1 function .*main\.hot")
        assert re.match(r"ns=\d+ calls=2000000$", prog.proc.stdout.readline().strip())
        tracer.proc.send_signal(signal.SIGINT)
        assert tracer.finish(60) == 0, tracer.stderr
        (kept,) = private_guard_memory.glob("*.json")
        learnt = kept.read_bytes()

        # 2. 'main.*' again: main.hot is left out from the start, its sites untouched, and said so.
        stderr, report, sites = trace(spawn, prog, vaddrs, "latency", "main.*")
        assert sites == original
        assert f"gotrace: skipping {HOT}: {REASON}" in stderr
        assert re.search(r"^Tracing 2 functions ", stderr, re.M)
        assert HOT not in [fn["name"] for fn in report["functions"]]
        assert "gotrace: detached" not in stderr

        # 3. Named exactly, with --retry-detached, or with a larger budget, it is probed (each from what the
        # first run learnt: a run that calls it and keeps it forgets it, step 4).
        for args in (("latency", HOT), ("latency", "main.*", "--retry-detached"),
                     ("latency", "main.*", "--max-overhead", "10")):
            kept.write_bytes(learnt)
            stderr, report, sites = trace(spawn, prog, vaddrs, *args)
            assert sites[0] == int3, args
            assert REASON not in stderr, args
            (fn,) = [fn for fn in report["functions"] if fn["name"] == HOT]
            assert fn["count"] == 2_000, args

        # 4. A run that calls it and keeps it (a budget it fits in) forgets it: the next wide trace probes it.
        kept.write_bytes(learnt)
        stderr, report, sites = trace(spawn, prog, vaddrs, "latency", "main.*", "--retry-detached",
                                      "--max-overhead", "1000")
        assert "gotrace: detached" not in stderr
        stderr, report, sites = trace(spawn, prog, vaddrs, "latency", "main.*")
        assert sites[0] == int3 and REASON not in stderr, stderr

        # 5. Memory is per program: what latency detached is not left out of a count.
        kept.write_bytes(learnt)
        stderr, report, sites = trace(spawn, prog, vaddrs, "count", "main.*")
        assert sites[0] == int3 and REASON not in stderr, stderr
    finally:
        prog.close()


@pytest.mark.bpf
def test_top_is_under_the_cost_guard_and_learns_like_latency(tmp_path, private_guard_memory):
    """`gotrace top` on hotloop (the generator the screen reads, no terminal): main.hot, called 2,000,000 times,
    is detached for real, its row says so, the screen's cost line has the budget; the next top over 'main.*'
    leaves it out, as latency would."""
    from gotrace.commands.top import TICK, TopRequest, top
    from gotrace.output.events import Skipped
    from gotrace.output.top import TopSnapshot

    binary = hotloop(tmp_path)
    vaddrs = hot_sites(binary)
    prog = Hotloop(binary)
    original = process_bytes(prog.pid, vaddrs)
    try:
        events = top(TopRequest(("main.*",), pid=prog.pid, duration_s=60, refresh_s=0.2))
        seen: list[TopSnapshot] = []
        started = False
        for event in events:
            if not isinstance(event, TopSnapshot):
                continue
            if not started:
                assert process_bytes(prog.pid, vaddrs)[0] == UPROBE_INSN[gobuild.NATIVE_ARCH]
                prog.start(2_000_000)
                started = True
                continue
            seen.append(event)
            if any(row.name == HOT and row.detached for row in event.rows):
                break
        else:
            pytest.fail("main.hot was never detached")
        assert process_bytes(prog.pid, vaddrs) == original  # its traps are gone while top still runs
        assert seen[-1].n_detached == 1 and seen[-1].cost is not None and seen[-1].cost.max_overhead_pct == 5.0
        events.close()  # as q does: the screen stops reading and closes the generator
        assert re.match(r"ns=\d+ calls=2000000$", prog.proc.stdout.readline().strip())

        again = top(TopRequest(("main.*",), pid=prog.pid, duration_s=0.5, refresh_s=0.2))
        found = list(again)
        assert Skipped(HOT, REASON) in found
        assert all(HOT not in [row.name for row in e.rows] for e in found if isinstance(e, TopSnapshot))
        assert TICK in found
    finally:
        prog.close()
