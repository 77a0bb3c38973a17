"""latency's start slots (gt_start_slots in front of the start hash) keep every count exact, collisions included.

A call's start goes in its key's slot of a direct-mapped array, or in the
start hash when another open call holds that slot (probes/gotrace.h,
"gt_start_slots"). Shrinking the array (start_slots: one slot, a few, the
shipped size) forces that overflow path for real. testdata/churn parks a crowd
inside main.park (holding slots), then runs goroutines that each call
main.lost three times at the same stack depth, recovering its panic each
time, and end: the second and third calls find the start their key left
(wherever it is: its slot or the hash) and the last one is swept when its
goroutine ends, in a slot or in the hash. Then main.steady runs. Whatever the
slot count, the counts must be exactly the program's own.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from support import gobuild
from gotrace import header
from gotrace.binary.gobinary import GoBinary
from gotrace.trace.latency import START_SLOT, LatencyTracer, slot_tag
from gotrace.trace.tracer import traced_functions

CHURN_VERSION = "1.23.9"
LOST, REPEAT, STEADY = 20000, 3, 2000
NAMES = ["main.lost", "main.park", "main.steady"]


def slots_of(tracer: LatencyTracer) -> list[tuple]:
    """gt_start_slots' elements, unpacked (START_SLOT's fields)."""
    _, values, n = tracer._sys.map_lookup_batch(tracer.loaded().map_fd("gt_start_slots"), 4, START_SLOT.size,
                                                tracer.start_slots)
    return list(START_SLOT.iter_unpack(values[:n * START_SLOT.size]))


def sweep_until(tracer: LatencyTracer, done: threading.Event) -> None:
    while not done.wait(0.01):
        tracer.sweep()


def wait_for(read, done, timeout_s: float):
    """read() until done(result), for at most timeout_s (goroutines end a moment after the program says so)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = read()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.mark.bpf
@pytest.mark.parametrize(("start_slots", "LIVE"), [(1, 50), (8, 2), (None, 50)])
def test_counts_stay_exact_whatever_the_slots_hold(start_slots, LIVE):
    binary = gobuild.build("churn", CHURN_VERSION)
    churn = subprocess.Popen([str(binary), "-wait", "-pause", "-n", str(LOST), "-repeat", str(REPEAT), "-live",
                              str(LIVE), "-steady", str(STEADY), "-inflight", "64"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert churn.stdout.readline().startswith("ready pid=")
        with GoBinary(binary) as gobin:
            probes = [gobin.probe_sites(fn) for fn in gobin.match(NAMES)]
            tracer = LatencyTracer(gobin, traced_functions(gobin, probes), pid=churn.pid, start_slots=start_slots)
            ids = {fn.name: fn.func_id for fn in tracer.functions}
            with tracer:  # runtime.goexit1's site is looked up in the open binary when attaching
                # Sweeping all along: slots of goroutines that ended are reaped and taken over during the flood.
                flooding = threading.Event()
                sweeper = threading.Thread(target=sweep_until, args=(tracer, flooding))
                sweeper.start()
                try:
                    churn.stdin.write("go\n")
                    churn.stdin.flush()
                    assert churn.stdout.readline() == "flooded\n"
                finally:
                    flooding.set()
                    sweeper.join()
                parked = wait_for(lambda: tracer.read(reset=False),
                                  lambda r: r[ids["main.lost"]].unmatched == LOST * REPEAT, 30)
                held = slots_of(tracer)
                churn.stdin.write("go\n")
                churn.stdin.flush()
                made = json.loads(churn.stdout.readline())
                churn.wait(60)
                final = tracer.read(reset=False)
                stats = tracer.stats()
    finally:
        if churn.poll() is None:
            churn.kill()
            churn.wait()
    assert churn.returncode == 0
    assert made == {"lost_calls": LOST * REPEAT, "recovered": LOST * REPEAT, "park_calls": LIVE,
                    "park_returns": LIVE, "steady_calls": STEADY}

    # While the crowd is parked: every lost call unwound, every parked call in flight, in a slot or the hash.
    lost, park = parked[ids["main.lost"]], parked[ids["main.park"]]
    assert (sum(lost.buckets.values()), lost.unmatched, lost.in_flight, lost.untimed) == (0, LOST * REPEAT, 0, 0)
    assert (sum(park.buckets.values()), park.in_flight, park.untimed) == (0, LIVE, 0)
    assert park.oldest_in_flight_ns is not None and park.oldest_in_flight_ns > 0
    # The overflow path was taken: with fewer slots than parked calls, the hash holds the others.
    slots = header.constant("GT_START_SLOTS") if start_slots is None else start_slots
    assert len(held) == slots
    occupied = [s for s in held if s[0] != 0]
    assert all(tag == slot_tag(goid, tgid, depth) for tag, goid, tgid, depth, *_ in occupied)
    hashed = sum(s[7] - s[8] for s in held)  # hash_added - hash_deleted, over the slots
    if slots < LIVE:
        assert hashed > 0

    # At the end: every call exactly once, returned, unwound or (none) in flight.
    expect = {"main.lost": (0, LOST * REPEAT), "main.park": (LIVE, 0), "main.steady": (STEADY, 0)}
    got = {name: (sum(final[ids[name]].buckets.values()), final[ids[name]].unmatched) for name in NAMES}
    assert got == expect
    assert [final[ids[name]].in_flight for name in NAMES] == [0, 0, 0]
    assert [final[ids[name]].untimed for name in NAMES] == [0, 0, 0]
    # The later calls of lost at one key found the start the earlier one left; the last ones were swept.
    assert stats["stale_starts"] == LOST * (REPEAT - 1)
    assert stats["returns_without_entry"] == 0
