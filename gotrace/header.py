"""Locates probes/ and reads the integer constants of probes/gotrace.h.

The header is the single definition of constants shared by the BPF programs
and user space; this module parses its `#define GT_NAME <integer>` lines so
that Python never restates them.
"""

import functools
import re
from pathlib import Path

PROBES_DIR = Path(__file__).resolve().parent.parent / "probes"
HEADER_PATH = PROBES_DIR / "gotrace.h"

_DEFINE = re.compile(r"^#define\s+(GT_[A-Z0-9_]+)\s+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", re.M)


@functools.cache
def constants() -> dict[str, int]:
    """All `GT_*` integer constants of probes/gotrace.h, by name."""
    text = HEADER_PATH.read_text()
    return {name: int(value, 0) for name, value in _DEFINE.findall(text)}


def constant(name: str) -> int:
    """One `GT_*` constant; KeyError names the constant when the header lacks it."""
    try:
        return constants()[name]
    except KeyError:
        raise KeyError(f"{name} is not defined in {HEADER_PATH}") from None
