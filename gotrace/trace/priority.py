"""The priority (niceness) of gotrace's own threads: its analysis of the binary yields to the traced service, and
the cost guard's checks go ahead of it.

On Linux, nice is per thread (setpriority on the thread's id), and threads started later inherit it. Lowering it
needs no privilege; raising it back needs CAP_SYS_NICE (root has it): a thread that cannot be raised back stays
lower, which only makes gotrace's own work slower.

ANALYSIS_NICE: reading `'*'`'s 62,583 functions of caddy takes 3-4 s of a CPU. On a 2-CPU machine with caddy
under load (1.5 CPUs busy), it took 7-11 s at nice 0, caddy at 71-93% of its throughput meanwhile (3 runs);
at nice 10, 12-15 s, caddy at 106-143% (noise: the same VM's untraced windows vary by 20%). A CPU-bound thread
at nice 0 takes its turn against the service's threads; at nice 10 (a tenth of their weight) it runs in what
they leave idle. The probes are registered at nice 0 again: registering takes the service's mmap lock, and a
thread holding it must not wait behind the service.

On a quiet host, the priority buys less than that suggests: on the same VM idle but for caddy and its load, any
busy thread cost caddy a quarter of its throughput, at nice 19 or SCHED_IDLE alike (73-76%, 6 runs of 4 s); the
analysis took 8 s at nice 0 (caddy at 57-60%), 12-13 s at nice 10 (68%), 18-22 s at SCHED_IDLE (68-74%), 2
runs each. What helps is not doing the work: gotrace.binary.sitecache keeps the answer for the next run.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

ANALYSIS_NICE = 10


def set_thread_nice(nice: int) -> bool:
    """Give the calling thread the niceness `nice`; False when gotrace is not allowed to (raising needs
    CAP_SYS_NICE) or the platform has no per-thread niceness."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        return False
    return True


def thread_nice() -> int:
    """The calling thread's niceness."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@contextlib.contextmanager
def yielding(nice: int = ANALYSIS_NICE) -> Iterator[None]:
    """Run the `with` body at niceness `nice` (when that is lower priority than the thread's own), and give the
    thread its own back after."""
    own = thread_nice()
    lowered = nice > own and set_thread_nice(nice)
    try:
        yield
    finally:
        if lowered:
            set_thread_nice(own)
