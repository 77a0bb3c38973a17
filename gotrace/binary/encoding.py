"""Go's variable-length integer encoding (encoding/binary uvarint), as its binaries store it.

Build info strings, runtime type names and pclntab's tables prefix lengths
and values with it: 7 bits a byte, least significant group first, the high
bit set on every byte but the last.
"""

from __future__ import annotations

MAX_UVARINT_BYTES = 10  # a uint64 needs at most ten groups of seven bits


def read_uvarint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the uvarint at `data[pos]`; ValueError when it
    runs past `data` or over ten bytes."""
    value = shift = 0
    for _ in range(MAX_UVARINT_BYTES):
        if pos >= len(data):
            break
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("bad uvarint")
