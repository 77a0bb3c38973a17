"""Slow calls of `gotrace latency --slow` as data (SlowCall, SlowCounts) and their text and JSON.

A slow call is printed when it returns: a line with its time, pid, goroutine,
function and latency, then its goroutine's stack, the caller first, one frame
a line (function, file:line, inlined calls marked). Nothing here knows how
the stack was read or symbolized.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gotrace.binary.symbolize import SourceFrame
from gotrace.output.latency import format_duration

INDENT = "    "


@dataclass(frozen=True)
class SlowCall:
    """One call that took at least the --slow threshold."""

    func: str
    pid: int
    goid: int
    ts_ns: int          # wall clock at the return, ns since the epoch
    latency_ns: int
    stack: tuple[SourceFrame, ...]  # stack[0] is the caller of func

    def json(self) -> dict:
        return {
            "event": "slow",
            "func": self.func,
            "pid": self.pid,
            "goid": self.goid,
            "ts_ns": self.ts_ns,
            "latency_ns": self.latency_ns,
            "stack": [{"func": f.function, "file": f.file, "line": f.line, "inlined": f.inlined} for f in self.stack],
        }

    def text(self, unit: str = "auto") -> str:
        seconds, ns = divmod(self.ts_ns, 1_000_000_000)
        stamp = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{ns // 1000:06d}"
        lines = [f"{stamp} pid={self.pid} goid={self.goid} {self.func} {format_duration(self.latency_ns, unit)}"]
        for frame in self.stack:
            where = f"{frame.file}:{frame.line}" if frame.file is not None else "?"
            lines.append(f"{INDENT}{frame.function}  {where}{'  (inlined)' if frame.inlined else ''}")
        if not self.stack:
            lines.append(f"{INDENT}(no stack: its memory could not be read)")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SlowCounts:
    """Slow calls of one report: sent by the kernel, and dropped before they reached gotrace."""

    threshold_ns: int
    rate_limit: int           # calls per second, 0: none
    calls: int                # slow calls printed
    dropped_rate_limit: int
    dropped_reader_behind: int  # the ring buffer was full

    def json(self) -> dict:
        return {"threshold_ns": self.threshold_ns, "calls": self.calls, "dropped_rate_limit": self.dropped_rate_limit,
                "dropped_reader_behind": self.dropped_reader_behind}

    def text(self, unit: str = "auto") -> str:
        line = f"slow calls (>= {format_duration(self.threshold_ns, unit)}): {self.calls} shown"
        if self.dropped_rate_limit or self.dropped_reader_behind:
            limit = f"{self.rate_limit}/s" if self.rate_limit else "none"
            line += (f", {self.dropped_rate_limit + self.dropped_reader_behind} not shown "
                     f"({self.dropped_rate_limit} over --slow-rate {limit}, "
                     f"{self.dropped_reader_behind} while gotrace's reader was behind)")
        else:
            line += ", none dropped"
        return line
