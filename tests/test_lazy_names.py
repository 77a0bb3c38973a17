"""Exact-name lookup without decoding every pclntab name gives what the full name index gives.

`FunctionTable.indices_named` answers an exact name from the name table's
offsets while the names are not decoded (start-up on large stripped
binaries); once they are, from the full index. Both must agree for every
name and every normalized spelling, on real builds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gotrace.binary.elffile import ElfImage
from gotrace.binary.functab import FunctionTable
from gotrace.binary.gobinary import GoBinary
from gotrace.binary.pclntab import Pclntab

CADDY = Path("/var/cache/gotrace/thirdparty/caddy/bin/caddy")


def _tables(path):
    elf = ElfImage(path)
    pclntab = Pclntab.find(elf)
    return elf, FunctionTable(elf, pclntab), FunctionTable(elf, Pclntab.find(elf))


def _queries(full: FunctionTable, limit: int | None) -> list[str]:
    names = sorted(set(full.names) | set(full.normalized_names))
    exact = [n for n in names if "[" not in n]
    if limit is None or len(exact) <= limit:
        return exact
    tricky = [n for n in exact if any(c in n for c in ("\u00b7", "]")) or n.endswith(".abi0")]
    step = max(1, len(exact) // limit)
    return sorted(set(exact[::step]) | set(tricky))


@pytest.mark.parametrize("version", ["1.19", "1.23.9", "1.27.3"])
def test_lazy_lookup_matches_full_index_on_stripped_service(testbin, version):
    elf, lazy, full = _tables(testbin("service", version, "stripped"))
    with elf:
        queries = _queries(full, 600)
        assert len(queries) > 500
        for name in queries:
            assert lazy.indices_named(name) == full._index_by_name.get(name, []), name
        assert lazy.indices_named("main.noSuchFunction") == []
        assert "names" not in lazy.__dict__  # never decoded all names


@pytest.mark.skipif(not CADDY.is_file(), reason="caddy is installed by scripts/thirdparty (or scripts/test)")
def test_lazy_lookup_matches_full_index_on_caddy():
    elf, lazy, full = _tables(CADDY)
    with elf:
        queries = _queries(full, 150)
        for name in queries:
            assert lazy.indices_named(name) == full._index_by_name.get(name, []), name
        assert any("\u00b7" in full.names[i] for q in queries for i in full._index_by_name.get(q, []))


def test_exact_match_on_stripped_binary_decodes_one_name(testbin):
    with GoBinary.open(testbin("service", "1.27.3", "stripped")) as gobin:
        (fn,) = gobin.match(["main.work"])
        assert fn.name == "main.work"
        assert "names" not in gobin.functions.__dict__
        assert [f.name for f in gobin.match(["main.wor?"])] == ["main.work"]  # globs still see every name

