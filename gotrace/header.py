"""Locates the probes (BPF C sources and the objects built from them) and reads the integer constants of probes/gotrace.h.

The probes live in `gotrace/probes/` of an installed package (the build
copies the top-level probes/ there and adds the compiled objects), and in
probes/ next to the package in a checkout (no objects there: they are
compiled at first use, see gotrace.bpf.cache).

The header is the single definition of constants shared by the BPF programs
and user space; this module parses its `#define GT_NAME <integer>` lines so
that Python never restates them.
"""

import functools
import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
INSTALLED_PROBES_DIR = _PACKAGE / "probes"
CHECKOUT_PROBES_DIR = _PACKAGE.parent / "probes"


def _probes_dir() -> Path:
    """gotrace/probes of an installed package when it has the header, else probes/ of the checkout."""
    if (INSTALLED_PROBES_DIR / "gotrace.h").is_file():
        return INSTALLED_PROBES_DIR
    return CHECKOUT_PROBES_DIR


PROBES_DIR = _probes_dir()
HEADER_PATH = PROBES_DIR / "gotrace.h"

_DEFINE = re.compile(r"^#define\s+(GT_[A-Z0-9_]+)\s+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", re.M)


@functools.cache
def constants() -> dict[str, int]:
    """All `GT_*` integer constants of probes/gotrace.h, by name."""
    try:
        text = HEADER_PATH.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"gotrace's probes are missing ({HEADER_PATH} not found): reinstall gotrace") from None
    return {name: int(value, 0) for name, value in _DEFINE.findall(text)}


def constant(name: str) -> int:
    """One `GT_*` constant; KeyError names the constant when the header lacks it."""
    try:
        return constants()[name]
    except KeyError:
        raise KeyError(f"{name} is not defined in {HEADER_PATH}") from None
