"""`gotrace funcs --json` lists the functions Go's own debug/gosym reads from pclntab: same names, entries, sizes.

testdata/gosymdump (built with the newest toolchain of the matrix) prints
each function of a binary as debug/gosym sees it: Name, Entry and End, End
being the next function's entry. gotrace's size is pclntab's extent too
(End - Entry, alignment padding included). Checked for every binary of the
test matrix (tests/gobuild.py `matrix()`): a build and its stripped twin
must both equal debug/gosym, so they equal each other. Also for caddy, a
stripped Go 1.26 binary gotrace did not build, when scripts/thirdparty has
installed it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import gobuild
from support.cli import run_gotrace

pytestmark = pytest.mark.matrix

REFERENCE_GO = gobuild.TOOLCHAINS[-1]
CADDY = Path("/var/cache/gotrace/thirdparty/caddy/bin/caddy")


def gosym_functions(binary: Path) -> list[tuple[str, int, int]]:
    """(name, entry, size) of every function, in pclntab's order, as debug/gosym reads them."""
    tool = gobuild.build("gosymdump", REFERENCE_GO, "default", "amd64")
    proc = subprocess.run([str(tool), str(binary)], capture_output=True, text=True, check=True)
    out = []
    for line in proc.stdout.splitlines():
        name, entry, end = line.rsplit("\t", 2)
        out.append((name, int(entry), int(end) - int(entry)))
    return out


def gotrace_functions(binary: Path) -> list[tuple[str, int, int]]:
    code, out, err = run_gotrace("funcs", str(binary), "--json")
    assert (code, err) == (0, ""), err
    return [(f["name"], f["entry"], f["size"]) for f in json.loads(out)["functions"]]


def assert_same_as_gosym(binary: Path) -> int:
    ours, theirs = gotrace_functions(binary), gosym_functions(binary)
    assert len(theirs) > 1000
    assert len(ours) == len(theirs)
    differing = [(mine, ref) for mine, ref in zip(ours, theirs) if mine != ref]
    assert differing[:5] == []
    return len(ours)


@pytest.mark.parametrize("version, mode, arch",
                         [pytest.param(v, m, a, id=f"go{v}-{m}-{a}") for v, m, a in gobuild.matrix()])
def test_funcs_equal_debug_gosym(version, mode, arch, record_property):
    count = assert_same_as_gosym(gobuild.build("service", version, mode, arch))
    record_property("functions_compared", count)


def test_caddy_equals_debug_gosym(record_property):
    if not CADDY.is_file():
        pytest.skip("caddy is installed by scripts/thirdparty")
    record_property("functions_compared", assert_same_as_gosym(CADDY))
