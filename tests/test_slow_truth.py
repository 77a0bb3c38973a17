"""`gotrace latency --slow` and `--by caller` / `--by pid` against testdata/slowtruth's own log.

slowtruth calls main.target from two callers with different latency
distributions (main.fastCaller directly; main.slowCaller through main.viaHelper,
which the compiler inlines) and logs every call: its caller and the file:line
of the call as Go's runtime reports them, its own latency (time.Now around
its work), its goroutine and the wall-clock time of its end. gotrace runs it
with -c, so every call happens under the probes.

What must hold, per build (two toolchains at the ends of the matrix, each as
built, stripped and PIE):

* --slow THRESHOLD: every call whose own latency is at least THRESHOLD is one
  slow event (matched to the call by goroutine and time), and every event is
  a call whose caller timed it at THRESHOLD or more. gotrace measures from
  the entry probe to the `ret` probe: the function's own clock reads lie
  inside that, its caller's clock reads around the call outside, so a
  call's measured latency is between its own_ns and its outer_ns (checked
  for every event). A call with own_ns < THRESHOLD <= outer_ns may or may not
  be reported: that is the tolerance band (README, "Slow calls"); it is the
  probes' own cost (the floor) plus any wait for a CPU on the way out of the
  entry probe, which on this shared 2-CPU VM is sometimes milliseconds.
* each event's stack[0] is the call's true caller, with the file:line Go
  reports; the inlined caller is marked inlined and followed by the function
  it is inlined in.
* --by caller: the calls per caller equal the program's counts exactly.
* --by pid: two processes of one binary traced together, the calls per pid
  equal each process's own counts.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import pytest

from support import gobuild

pytestmark = pytest.mark.bpf

REPO = gobuild.REPO_ROOT
THRESHOLD_NS = 3_000_000
CLOCK_SLACK_NS = 10_000  # gotrace's wall clock is its monotonic clock plus an offset read once at start
BUILDS = [(v, m) for v in ("1.19", "1.27.3") for m in ("default", "stripped", "pie")]


def gotrace(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gotrace", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def match_events(events: list[dict], calls: list[dict]) -> dict[int, dict]:
    """index of call -> its slow event: the latest call of the event's goroutine that ended before it."""
    by_goid = collections.defaultdict(list)
    for index, call in enumerate(calls):
        by_goid[call["goid"]].append(index)
    matched: dict[int, dict] = {}
    for event in events:
        ended = [i for i in by_goid[event["goid"]] if calls[i]["end_wall_ns"] <= event["ts_ns"] + CLOCK_SLACK_NS]
        assert ended, f"slow event matches no call of goroutine {event['goid']}: {event}"
        index = max(ended, key=lambda i: calls[i]["end_wall_ns"])
        assert index not in matched, f"two slow events for one call: {event} and {matched[index]}"
        matched[index] = event
    return matched


@pytest.mark.parametrize("version,mode", BUILDS, ids=[f"go{v}-{m}" for v, m in BUILDS])
def test_slow_events_and_callers_match_the_program(version, mode, tmp_path):
    binary = gobuild.build("slowtruth", version, mode, gobuild.NATIVE_ARCH)
    log = tmp_path / "calls.jsonl"
    proc = gotrace("latency", "-c", f"{binary} -n 200 -out {log}", binary, "main.target",
                   "--slow", f"{THRESHOLD_NS}ns", "--slow-rate", "0", "--by", "caller", "--json")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(obj.get("event") in ("slow", "report") for obj in objects)
    events = [obj for obj in objects if obj["event"] == "slow"]
    (report,) = [obj for obj in objects if obj["event"] == "report"]
    calls = read_log(log)
    assert len(calls) == 300

    # --by caller: exact counts per caller
    want = collections.Counter(call["caller"] for call in calls)
    assert want == {"main.fastCaller": 200, "main.viaHelper": 100}
    rows = {row["caller"]: row for row in report["functions"]}
    assert {caller: row["count"] for caller, row in rows.items()} == want
    assert all(row["name"] == "main.target" and row["unmatched"] == 0 for row in rows.values())
    for caller, row in rows.items():
        sites = {f"{call['file']}:{call['line']}" for call in calls if call["caller"] == caller}
        assert set(row["call_sites"]) == sites

    # --slow: exactly the slow calls, within the band
    assert report["slow"] == {"threshold_ns": THRESHOLD_NS, "calls": len(events), "dropped_rate_limit": 0,
                              "dropped_reader_behind": 0}
    matched = match_events(events, calls)
    slow = {i for i, call in enumerate(calls) if call["own_ns"] >= THRESHOLD_NS}
    band = {i for i, call in enumerate(calls) if call["own_ns"] < THRESHOLD_NS <= call["outer_ns"]}
    assert slow and len(slow) < len(calls), "the program's distributions must put calls on both sides"
    missing = slow - set(matched)
    assert not missing, f"slow calls without an event: {[calls[i] for i in sorted(missing)][:5]}"
    outside = set(matched) - slow - band
    assert not outside, f"events for calls faster than the threshold: {[(calls[i], matched[i]) for i in sorted(outside)][:5]}"
    for index, event in matched.items():
        call = calls[index]
        assert event["func"] == "main.target" and event["latency_ns"] >= THRESHOLD_NS
        # the probes lie between the function's own clock reads and its caller's
        assert call["own_ns"] <= event["latency_ns"] <= call["outer_ns"], (event, call)
        first = event["stack"][0]
        assert (first["func"], first["file"], first["line"]) == (call["caller"], call["file"], call["line"])
        assert first["inlined"] == (call["caller"] == "main.viaHelper")
        outer = "main.slowCaller" if first["inlined"] else "main.main.func1"
        assert event["stack"][1]["func"] == outer and event["stack"][-1]["func"] == "runtime.goexit"
        assert len(event["stack"]) <= 16
    margins = sorted(call["outer_ns"] - call["own_ns"] for call in calls)
    print(f"go{version} {mode}: {len(calls)} calls, {len(slow)} at or above {THRESHOLD_NS} ns, "
          f"{len(matched)} events, {len(band)} in the band of which {len(set(matched) & band)} reported; "
          f"outer-own margin median {margins[len(margins) // 2]} ns, max {margins[-1]} ns")


def test_by_pid_counts_each_process(tmp_path):
    """The binary form traces every process running it: two runs, each counted under its own pid."""
    binary = gobuild.build("slowtruth", "1.23.9", "stripped", gobuild.NATIVE_ARCH)
    private = tmp_path / "slowtruth"  # a private copy: other tests' runs of the binary are not counted
    private.write_bytes(binary.read_bytes())
    private.chmod(0o755)
    tracer = subprocess.Popen([sys.executable, "-m", "gotrace", "latency", private, "main.target", "--by", "pid",
                               "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "Tracing" not in line and time.monotonic() < deadline:
            line = tracer.stderr.readline()
        assert "Tracing" in line, line
        want = {}
        for n in (40, 80):
            log = tmp_path / f"calls{n}.jsonl"
            program = subprocess.Popen([private, "-n", str(n), "-out", log])
            assert program.wait(timeout=120) == 0
            want[program.pid] = len(read_log(log))
    finally:
        tracer.send_signal(2)
        out, err = tracer.communicate(timeout=120)
    assert tracer.returncode == 0, err
    (report,) = [json.loads(line) for line in out.splitlines()]
    assert {row["pid"]: row["count"] for row in report["functions"]} == want
    assert sorted(want.values()) == [60, 120]


def test_rate_limit_counts_what_it_drops(tmp_path):
    """--slow-rate 10: at most 10 slow calls a second are printed; the others are counted, never lost silently."""
    binary = gobuild.build("slowtruth", "1.23.9", "default", gobuild.NATIVE_ARCH)
    log = tmp_path / "calls.jsonl"
    proc = gotrace("latency", "-c", f"{binary} -n 200 -out {log}", binary, "main.target",
                   "--slow", f"{THRESHOLD_NS}ns", "--slow-rate", "10", "--json")
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    events = [obj for obj in objects if obj["event"] == "slow"]
    (report,) = [obj for obj in objects if obj["event"] == "report"]
    calls = read_log(log)
    own = sum(call["own_ns"] >= THRESHOLD_NS for call in calls)
    outer = sum(call["outer_ns"] >= THRESHOLD_NS for call in calls)
    slow = report["slow"]
    assert slow["calls"] == len(events) and slow["dropped_reader_behind"] == 0
    assert own <= slow["calls"] + slow["dropped_rate_limit"] <= outer
    span_s = (max(e["ts_ns"] for e in events) - min(e["ts_ns"] for e in events)) / 1e9
    assert 0 < len(events) <= 10 * (int(span_s) + 1) and slow["dropped_rate_limit"] > 0
    text = gotrace("latency", "-c", f"{binary} -n 200", binary, "main.target", "--slow", f"{THRESHOLD_NS}ns",
                   "--slow-rate", "10")
    assert text.returncode == 0, text.stderr
    assert "over --slow-rate 10/s" in text.stdout
