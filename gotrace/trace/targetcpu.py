"""CPU time the traced processes have used so far, read from /proc: one pid, or every process running a binary.

Per thread, /proc/PID/task/TID/schedstat gives the time on CPU in ns
(precise; uprobe traps taken by the thread are in it). Without schedstat,
/proc/PID/stat's utime + stime (clock ticks) serve. In every-process mode the
processes are those whose /proc/PID/exe is the binary's file (same device
and inode), looked up again every RESCAN_S.
"""

from __future__ import annotations

import os
import time

RESCAN_S = 2.0
_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def process_cpu_ns(pid: int) -> int | None:
    """CPU time process pid has used (all its live threads), in ns; None when it is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as file:
                total += int(file.read().split()[0])
        except (OSError, ValueError, IndexError):
            break
    else:
        return total
    try:  # no schedstat: clock ticks of the whole process
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * _TICK_NS
    except (OSError, ValueError, IndexError):
        return None


def same_file(path_a: str, stat_b: os.stat_result) -> bool:
    try:
        st = os.stat(path_a)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (stat_b.st_dev, stat_b.st_ino)


class TargetCpu:
    """CPU time used by the traced processes, as a running total that only counts time seen used.

    sample() returns the total in ns: each process contributes what it used
    between two samples in which it was seen (a process that appears
    starts at zero; one that exits keeps what it had used before its last sample).
    """

    def __init__(self, pid: int | None, binary_path: str) -> None:
        self.pid = pid
        self._binary = os.stat(binary_path) if pid is None else None
        self._last: dict[int, int] = {}
        self._total_ns = 0
        self._scanned_at = -RESCAN_S
        self._scan: list[int] = []

    def _pids(self) -> list[int]:
        if self.pid is not None:
            return [self.pid]
        now = time.monotonic()
        if now - self._scanned_at >= RESCAN_S:
            self._scanned_at = now
            found = []
            for name in os.listdir("/proc"):
                if name.isdigit() and same_file(f"/proc/{name}/exe", self._binary):
                    found.append(int(name))
            self._scan = found
        return self._scan

    def sample(self) -> int:
        seen: dict[int, int] = {}
        for pid in self._pids():
            used = process_cpu_ns(pid)
            if used is None:
                continue
            seen[pid] = used
            if pid in self._last:
                self._total_ns += max(0, used - self._last[pid])
        self._last = seen
        return self._total_ns
