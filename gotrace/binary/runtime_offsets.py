"""Offsets into the runtime's goroutine struct `runtime.g` that the probes read.

The probes key calls by (goid, g.stack.hi - SP), reading both fields through
the g pointer held in R14 (amd64) / R28 (arm64). DWARF, when the binary has
it, states the offsets of the runtime actually linked in; otherwise they come
from a per-version table checked against Go's runtime/runtime2.go and
against DWARF of binaries built with each toolchain (same on amd64 and
arm64). A version outside the table is refused, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gotrace.errors import BinaryError

if TYPE_CHECKING:
    from gotrace.binary.dwarfinfo import DwarfInfo

# g.stack is g's first member and runtime.stack is {lo, hi uintptr}.
STACK_HI_OFFSET = 8

# (first minor, last minor, goid offset) for Go 1.x. 1.23 added g.syscallbp
# (+8); 1.25 removed gobuf.ret from g.sched (-8).
GOID_OFFSETS = (
    (17, 22, 152),
    (23, 24, 160),
    (25, 27, 152),
)
OLDEST_KNOWN = (1, GOID_OFFSETS[0][0])
NEWEST_KNOWN = (1, GOID_OFFSETS[-1][1])


@dataclass(frozen=True)
class RuntimeOffsets:
    """Byte offsets in runtime.g, and where they came from ("dwarf" or "table")."""

    goid: int
    stack_hi: int
    source: str


def table_goid_offset(go_version: tuple[int, ...]) -> int | None:
    """The goid offset the table gives for this Go version, or None if it has no entry."""
    if len(go_version) < 2 or go_version[0] != 1:
        return None
    minor = go_version[1]
    for first, last, offset in GOID_OFFSETS:
        if first <= minor <= last:
            return offset
    return None


def runtime_offsets(go_version: tuple[int, int, int], dwarf: DwarfInfo | None) -> RuntimeOffsets:
    """Offsets of runtime.g's goid and stack.hi for this binary.

    DWARF wins when it has both members (a modified runtime can differ from
    the table); otherwise (no DWARF, or DWARF that cannot be read) the table
    for `go_version`. Raises BinaryError for
    versions the table does not know when DWARF cannot answer.
    """
    if dwarf is not None:
        try:
            goid = dwarf.struct_member_offset("runtime.g", "goid")
            stack_hi = dwarf.struct_member_offset("runtime.g", "stack.hi")
        except BinaryError:  # damaged DWARF: the table still knows released versions
            goid = stack_hi = None
        if goid is not None and stack_hi is not None:
            return RuntimeOffsets(goid=goid, stack_hi=stack_hi, source="dwarf")

    goid = table_goid_offset(go_version)
    if goid is not None:
        return RuntimeOffsets(goid=goid, stack_hi=STACK_HI_OFFSET, source="table")

    shown = "go" + ".".join(str(part) for part in go_version)
    if tuple(go_version[:2]) < OLDEST_KNOWN:
        raise BinaryError(
            f"{shown} is older than Go 1.17, which introduced the register ABI gotrace needs; "
            "rebuild the program with Go 1.17 or newer")
    raise BinaryError(
        f"{shown} is newer than gotrace knows (goid offsets known up to Go "
        f"{NEWEST_KNOWN[0]}.{NEWEST_KNOWN[1]}); build with DWARF (no -ldflags='-s -w') "
        "or upgrade gotrace")
