"""Compiles a probes/*.bpf.c program with bcc, its configuration given as -D flags.

Configuration is only ever validated integers (`GT_CFG_*` compile-time
constants); no text from the user reaches the C source. Compilation runs with
the process's stderr captured, so bcc's and clang's diagnostics never spill
onto the user's terminal: a failure becomes one CapabilityError line quoting
the first diagnostic.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from gotrace import header as probes_header
from gotrace.errors import CapabilityError, UsageError

ARCH_CONSTANTS = {"amd64": "GT_ARCH_AMD64", "arm64": "GT_ARCH_ARM64"}


def validated_int(label: str, value: object, low: int, high: int) -> int:
    """`value` if it is an int (not a bool) in [low, high]; UsageError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{label} must be an integer in {low}..{high}, not {value!r}")
    return value


def arch_constant(arch: str) -> int:
    """The GT_ARCH_* value of `arch`; UsageError for an architecture gotrace does not trace."""
    if arch not in ARCH_CONSTANTS:
        raise UsageError(f"unsupported architecture {arch!r}: gotrace traces amd64 and arm64 binaries")
    return probes_header.constant(ARCH_CONSTANTS[arch])


def source_text(source_path: Path, config: dict[str, int]) -> str:
    """The C text as compiled: the configuration as #defines, then the program."""
    lines = ["/* configuration passed to the compiler as -D flags */"]
    lines += [f"#define {name} {value}" for name, value in config.items()]
    return "\n".join(lines) + "\n\n" + source_path.read_text()


@contextlib.contextmanager
def _captured_stderr():
    """Redirect fd 2 (where bcc and clang write) to a temporary file; yields a
    function returning what was written."""
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _first_diagnostic(text: str) -> str:
    for line in text.splitlines():
        if "error:" in line or "fatal" in line.lower():
            return " ".join(line.split())[:200]
    return ""


def compile_program(source_path: Path, config: dict[str, int]):
    """A compiled bcc.BPF of `source_path` with `config` as -D constants."""
    try:
        import bcc
    except ImportError as exc:
        raise CapabilityError(f"bcc's Python module cannot be imported ({exc}): reinstall python3-bpfcc") from None

    cflags = [f"-I{probes_header.PROBES_DIR}"] + [f"-D{name}={value}" for name, value in config.items()]
    with _captured_stderr() as diagnostics:
        try:
            return bcc.BPF(src_file=os.fsencode(source_path), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception; clang's messages went to fd 2
            detail = _first_diagnostic(diagnostics()) or str(exc)
    raise CapabilityError(
        f"bcc could not compile the BPF program ({detail}): check the kernel headers (run scripts/kernel-headers)")
