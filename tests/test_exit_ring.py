"""Reading the ring of goroutine exits (gt_exited, probes/gotrace.h gt_exit_rec): LatencyTracer._read_exits over
memory laid out as the kernel writes it.

The probe's side runs for real in test_hardening (goroutines that end with a call unwound); this checks what
the reader does with the ring states a real run makes rarely: a record still being written, a ring that
wrapped between two reads, a record overwritten while it was read.
"""

from __future__ import annotations

import array

from gotrace import header
from gotrace.trace.latency import EXIT_REC, LatencyTracer

N = header.constant("GT_EXITED_ENTRIES")
WORDS = EXIT_REC.size // 8


class Ring:
    """The two maps as the probe leaves them: gt_exited's records and gt_exited_next's count."""

    def __init__(self) -> None:
        self.words = array.array("Q", bytes(N * EXIT_REC.size))
        self.next = array.array("Q", [0])

    def note(self, goid: int, tgid: int, exit_ns: int, *, finished: bool = True) -> None:
        """What gt_goexit does: take a number, write the record, seq last (not yet, if not finished)."""
        number = self.next[0]
        self.next[0] += 1
        at = (number % N) * WORDS
        self.words[at:at + 3] = array.array("Q", [goid, tgid, exit_ns])
        if finished:
            self.words[at + 3] = number + 1

    def finish(self, number: int) -> None:
        self.words[(number % N) * WORDS + 3] = number + 1


def reader(ring: Ring) -> LatencyTracer:
    tracer = object.__new__(LatencyTracer)  # only the reader's state: no binary, no kernel
    tracer._exit_words = memoryview(ring.words)
    tracer._exit_next = memoryview(ring.next)
    tracer._exits_read = 0
    return tracer


def test_each_exit_is_read_once():
    ring = Ring()
    tracer = reader(ring)
    for goid in range(1, 6):
        ring.note(goid, 100, 1000 + goid)
    assert tracer._read_exits() == {(100, goid): 1000 + goid for goid in range(1, 6)}
    ring.note(77, 200, 5000)
    assert tracer._read_exits() == {(200, 77): 5000}
    assert tracer._read_exits() == {}
    assert tracer._exits_read == 6


def test_a_record_being_written_is_read_the_next_time():
    ring = Ring()
    tracer = reader(ring)
    ring.note(1, 100, 10)
    ring.note(2, 100, 20, finished=False)  # taken its number, seq not yet written
    ring.note(3, 100, 30)
    assert tracer._read_exits() == {(100, 1): 10}
    assert tracer._exits_read == 1
    ring.finish(1)
    assert tracer._read_exits() == {(100, 2): 20, (100, 3): 30}


def test_after_a_wrap_only_the_last_ring_full_is_read():
    ring = Ring()
    tracer = reader(ring)
    ring.note(1, 100, 1)
    tracer._read_exits()
    for goid in range(2, N + 12):  # more than the ring holds since the last read
        ring.note(goid, 100, goid)
    exited = tracer._read_exits()
    lost = range(2, 12)  # overwritten before they were read
    assert all((100, goid) not in exited for goid in lost)
    assert all(exited[100, goid] == goid for goid in range(12, N + 12))
    assert tracer._exits_read == N + 11  # every number taken so far


def test_a_record_overwritten_by_a_later_lap_is_skipped():
    ring = Ring()
    tracer = reader(ring)
    for goid in range(N + 1):  # number 0's slot now holds number N
        ring.note(goid, 100, goid)
    tracer._exits_read = 0  # a reader that fell a whole lap behind
    ring.next[0] = N  # ... and saw the count before the last exit's number was taken
    exited = tracer._read_exits()
    assert (100, 0) not in exited  # its slot holds a later exit: not taken for number 0's
    assert exited[100, 1] == 1 and exited[100, N - 1] == N - 1
