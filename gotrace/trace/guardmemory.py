"""The cost guard's memory: the functions it detached in earlier traces of a binary, left out of the next trace that matches them only through a wide pattern.

Tracing `'*'` on a busy service, every call of a hot function traps until
the guard's first check detaches it (0.1 s, then a second wave): on caddy
under load that first second costs the service most of its throughput, and
the next run on the same binary pays it again for the same 700 functions
(README, "The guard's memory"). What the guard found too costly to
probe is kept per binary (the sha256 of its bytes) and per program
(`latency`, `count`: a count's hit costs less), with the budget it was over
and the probe hits per second it saw. A later trace of the same binary
leaves such a function out from the start when:

* no pattern names it exactly (`gotrace latency -p PID runtime.mallocgc`
  always probes runtime.mallocgc: the user asked for it by name);
* its budget (--max-overhead, not 0) is at most the one it was detached
  over (a larger budget may afford it);
* it was detached less than KEEP_S ago;
* --retry-detached was not given.

The trace says which it left out and why (a skipped reason). At the end of a
trace, what its guard detached is added, and a function it probed, saw
called and never detached is forgotten: it was affordable that time. The
file is checked and written like the kept probe sites (gotrace.keptfile): a
planted file would silence functions.

Directory: $GOTRACE_GUARD_MEMORY, else $GOTRACE_CACHE/guard, else
/var/cache/gotrace/guard; the KEEP_BINARIES most recently used binaries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gotrace import keptfile

FORMAT = 1
KEEP_S = 7 * 24 * 3600.0
KEEP_BINARIES = 64
DEFAULT_DIR = Path("/var/cache/gotrace/guard")
REASON = "left out (detached by the cost guard in an earlier trace of this binary; --retry-detached to probe)"


def memory_dir() -> Path:
    return keptfile.cache_dir("GOTRACE_GUARD_MEMORY", "guard", DEFAULT_DIR)


@dataclass(frozen=True)
class Remembered:
    """A function a guard detached: under which program and budget, how hot it was, when (wall clock, s)."""

    name: str
    program: str
    max_overhead_pct: float
    hits_per_s: float
    detached_at_s: float


class GuardMemory:
    """The remembered detachments of one binary (by its bytes' sha256)."""

    def __init__(self, binary_sha256: str, directory: Path | None = None, *, now_s: float | None = None):
        self.binary_sha256 = binary_sha256
        self.path = (directory or memory_dir()) / f"{binary_sha256}.json"
        self.now_s = time.time() if now_s is None else now_s
        self._entries = self._read()

    def _read(self) -> dict[tuple[str, str], Remembered]:
        doc = keptfile.load(self.path, FORMAT)
        if doc is None or doc.get("binary") != self.binary_sha256:
            return {}
        out = {}
        try:
            for name, program, pct, hits_per_s, at_s in doc["functions"]:
                entry = Remembered(str(name), str(program), float(pct), float(hits_per_s), float(at_s))
                if 0 <= self.now_s - entry.detached_at_s < KEEP_S:
                    out[entry.program, entry.name] = entry
        except (KeyError, TypeError, ValueError):
            return {}
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def left_out(self, program: str, names: Iterable[str], max_overhead_pct: float | None) -> dict[str, Remembered]:
        """Of `names` (the functions only a wide pattern matched), those a trace of `program` with this budget
        leaves out; none without a budget (None or 0: nothing is ever detached)."""
        if not max_overhead_pct:
            return {}
        out = {}
        for name in names:
            entry = self._entries.get((program, name))
            if entry is not None and max_overhead_pct <= entry.max_overhead_pct:
                out[name] = entry
        return out

    def update(self, program: str, detached: Iterable[Remembered], affordable: Iterable[str]) -> None:
        """Remember what a trace of `program` detached, forget what it probed, saw called and kept (affordable),
        and write the file (merged with what another trace wrote meanwhile)."""
        entries = self._read()
        for name in affordable:
            entries.pop((program, name), None)
        for entry in detached:
            entries[entry.program, entry.name] = entry
        self._entries = entries
        rows = [[e.name, e.program, e.max_overhead_pct, round(e.hits_per_s, 1), round(e.detached_at_s, 3)]
                for e in sorted(entries.values(), key=lambda e: (e.program, e.name))]
        if keptfile.save(self.path, keptfile.encode(FORMAT, {"binary": self.binary_sha256, "functions": rows}),
                         ".guard-"):
            keptfile.prune(self.path.parent, KEEP_BINARIES)
