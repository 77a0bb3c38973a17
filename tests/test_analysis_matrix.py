"""Acceptance tests of binary analysis and `gotrace funcs` over the whole build matrix of testdata/service.

Every toolchain x build mode x arch of tests/gobuild.py is checked against
tools that know nothing of gotrace:

* the functions `gotrace funcs --json` lists equal `go tool nm`'s text
  symbols of the same toolchain, modulo the exclusions documented (and
  themselves checked) in EXCLUSIONS below and the spellings in which
  `.symtab` differs from pclntab (`.abi0`, Go 1.19's generic shapes, `.` for
  `·`), which normalize_name maps onto each other;
* a stripped build (`-ldflags='-s -w'`: no .symtab, no DWARF) lists exactly
  what its unstripped twin lists: the runtime's names, sizes, sites, reasons;
* the `returns` offsets equal the `ret` instructions of binutils `objdump`
  (amd64) or `llvm-objdump` (arm64) for every `main.*` function and a seeded
  random sample of the rest;
* the goid offset of a stripped build (from gotrace's version table) equals
  the one DWARF states in its unstripped twin;
* the service's known cases: traceable functions, the panic-only function,
  the promoted-method wrapper, the two generic instantiations, the function
  inlined everywhere.

The output checked is the CLI's JSON (gotrace.cli.main in-process), as a
user or script would read it.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from support import gobuild
from support.cli import run_gotrace
from gotrace.binary.functab import normalize_name
from gotrace.binary.gobinary import GoBinary

pytestmark = pytest.mark.matrix

PROGRAM = "service"

# --- running the CLI ----------------------------------------------------------------




def funcs_json(binary: Path, *patterns: str) -> dict:
    code, out, err = run_gotrace("funcs", str(binary), *patterns, "--json")
    assert code == 0, err
    assert err == ""
    return json.loads(out)


@lru_cache(maxsize=None)
def listing(binary: Path) -> dict:
    """`gotrace funcs BINARY --json` (every function), parsed; cached per binary."""
    return funcs_json(binary)


def by_name(doc: dict) -> dict[str, dict]:
    return {f["name"]: f for f in doc["functions"]}


# --- independent references ---------------------------------------------------------


@lru_cache(maxsize=None)
def nm_text_symbols(binary: Path, version: str) -> frozenset[tuple[str, int]]:
    """(name, vaddr) of every text symbol (T/t) that toolchain's `go tool nm` lists."""
    return frozenset((name, vaddr) for name, vaddr, kind in gobuild.go_tool_nm(binary, version) if kind in "Tt")


@lru_cache(maxsize=None)
def elf_symbol_sizes(binary: Path) -> dict[str, int]:
    """name -> st_size of .symtab symbols (pyelftools)."""
    from elftools.elf.elffile import ELFFile

    with open(binary, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        return {sym.name: sym["st_size"] for sym in symtab.iter_symbols()}


@lru_cache(maxsize=None)
def pclntab_bytes(binary: Path) -> bytes:
    """The raw bytes of the section holding pclntab (pyelftools; any layout of the matrix)."""
    from elftools.elf.elffile import ELFFile

    with open(binary, "rb") as f:
        elf = ELFFile(f)
        for name in (".gopclntab", ".data.rel.ro.gopclntab", ".data.rel.ro"):
            section = elf.get_section_by_name(name)
            if section is not None:
                return section.data()
    raise AssertionError(f"{binary}: no section holding pclntab")


DISASSEMBLER = {"amd64": ["objdump"], "arm64": ["llvm-objdump", "aarch64-linux-gnu-objdump"]}
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")
_PREFIXES = {"rep", "repz", "repe", "bnd", "notrack", "data16"}


def disassembler(arch: str) -> str:
    for tool in DISASSEMBLER[arch]:
        if shutil.which(tool):
            return tool
    pytest.skip(f"no {arch} disassembler ({' or '.join(DISASSEMBLER[arch])}) to check return sites against")


def objdump_instructions(binary: Path, arch: str, start: int, stop: int) -> list[tuple[int, str]]:
    """(vaddr, mnemonic) of every instruction the disassembler decodes in [start, stop)."""
    proc = subprocess.run(
        [disassembler(arch), "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
         f"--stop-address={stop:#x}", str(binary)],
        capture_output=True, text=True, check=True,
    )
    insns = []
    for line in proc.stdout.splitlines():
        m = _INSN.match(line)
        if not m or not m.group(2).strip():
            continue
        words = m.group(2).split()
        while len(words) > 1 and words[0] in _PREFIXES:
            words = words[1:]
        insns.append((int(m.group(1), 16), words[0]))
    return insns


def objdump_ret_offsets(insns: list[tuple[int, str]], entry: int) -> list[int]:
    return [vaddr - entry for vaddr, mnemonic in insns if mnemonic in ("ret", "retq", "retn")]


# --- the matrix -----------------------------------------------------------------------

def _combos(modes) -> list:
    return [pytest.param(v, m, a, id=f"go{v}-{m}-{a}") for v, m, a in gobuild.matrix() if m in modes]


UNSTRIPPED = _combos([mode for mode in gobuild.MODES if mode not in gobuild.STRIPPED_MODES])
EVERY_BUILD = _combos(gobuild.MODES)
TWINS = [
    pytest.param(version, arch, id=f"go{version}-{arch}")
    for version in gobuild.TOOLCHAINS
    for arch in gobuild.ARCHES
]

# g.goid offset of each toolchain (runtime/runtime2.go; /work/shared/design.md section 4).
EXPECTED_GOID = {"1.19": 152, "1.21.13": 152, "1.22.10": 152, "1.23.9": 160, "1.25.5": 152, "1.27.3": 152}

# --- 1. differential against go tool nm ----------------------------------------------
#
# EXCLUSIONS: text symbols `go tool nm` lists that `gotrace funcs` rightly leaves out.
#
# * MARKERS `runtime.text` and `runtime.etext`: zero-size linker labels for
#   the start and end of Go's text, not functions. runtime.text shares its
#   address with the first Go function, runtime.etext is the end of the last
#   one (pclntab's end-of-table sentinel). Checked: both have st_size 0 and
#   sit exactly there.
# * C symbols of external linking (extlink mode only): gcc's and the C
#   runtime's functions (`_start`, `_init`, `frame_dummy`, `x_cgo_init`,
#   `_cgo_<hash>_Cfunc_*`, `threadentry`, `crosscall*`...). They are not Go
#   functions: pclntab has no entry for them, they lie outside
#   [runtime.text, runtime.etext), and their names are nowhere in pclntab.
#   Checked for each one.
#
# Nothing else: no pclntab-only entry appeared in any build of the matrix
# (the test would show it as listed by gotrace but not by nm).

MARKERS = {"runtime.text", "runtime.etext"}


@pytest.mark.parametrize("version, mode, arch", UNSTRIPPED)
def test_funcs_equal_go_tool_nm_text_symbols(version, mode, arch):
    binary = gobuild.build(PROGRAM, version, mode, arch)
    doc = listing(binary)
    ours = {(normalize_name(f["name"]), f["entry"]) for f in doc["functions"]}
    assert len(ours) == len(doc["functions"]), "a (name, entry) pair is listed twice"
    nm_raw = nm_text_symbols(binary, version)
    nm_by_name = {name: vaddr for name, vaddr in nm_raw}
    # gotrace lists pclntab's names; .symtab spells some of them otherwise.
    abi0 = {(name, vaddr) for name, vaddr in nm_raw if name.endswith(".abi0")}
    assert len(abi0) > 50
    assert not abi0 & {(f["name"], f["entry"]) for f in doc["functions"]}
    nm = frozenset((name if name in MARKERS else normalize_name(name), vaddr) for name, vaddr in nm_raw)

    # The markers: present in nm, zero-size, at the first entry and the end of the last function.
    entries = sorted(f["entry"] for f in doc["functions"])
    last = max(doc["functions"], key=lambda f: f["entry"])
    sizes = elf_symbol_sizes(binary)
    assert {name for name in MARKERS if name in nm_by_name} == MARKERS
    assert sizes["runtime.text"] == 0 and sizes["runtime.etext"] == 0
    text_vaddr, etext_vaddr = nm_by_name["runtime.text"], nm_by_name["runtime.etext"]
    assert text_vaddr == entries[0]
    assert last["entry"] < etext_vaddr <= last["entry"] + last["size"] + 64  # last function + alignment
    markers = {(name, vaddr) for name, vaddr in nm if name in MARKERS}

    # C symbols: outside Go's text, absent from pclntab, only with external linking.
    c_symbols = {(name, vaddr) for name, vaddr in nm - markers if not text_vaddr <= vaddr < etext_vaddr}
    if mode == "extlink":
        assert {"_start", "_init", "x_cgo_init", "threadentry"} <= {n for n, _ in c_symbols}
        assert any(re.fullmatch(r"_cgo_[0-9a-f]+_Cfunc_gotrace_add", n) for n, _ in c_symbols)
    else:
        assert c_symbols == set()
    names_blob = pclntab_bytes(binary)
    entry_set = set(entries)
    for name, vaddr in c_symbols:
        assert vaddr not in entry_set, f"C symbol {name} has a pclntab entry"
        assert b"\0" + name.encode() + b"\0" not in names_blob, f"C symbol {name} is named in pclntab"

    assert ours == nm - markers - c_symbols
    assert any(name.startswith("main.") for name, _ in ours)


# --- 2. stripped twins ----------------------------------------------------------------


@pytest.mark.parametrize("version, arch", TWINS)
def test_stripped_build_lists_the_same_functions(version, arch):
    """One binary, one name per function: the stripped twin lists every function under the
    same (pclntab) name, with the same size, sites and reason."""
    full = listing(gobuild.build(PROGRAM, version, "default", arch))
    stripped_binary = gobuild.build(PROGRAM, version, "stripped", arch)
    stripped = listing(stripped_binary)
    assert GoBinary.open(stripped_binary).elf.has_symtab() is False
    assert stripped["go_version"] == full["go_version"]
    assert full["go_version"].startswith(f"go{version}")
    assert len(stripped["functions"]) == len(full["functions"])
    assert stripped["functions"] == full["functions"]
    assert not any(f["name"].endswith(".abi0") for f in full["functions"])
    # The .symtab spelling finds the same function in both builds.
    dotted = [f["name"] for f in stripped["functions"] if "\u00b7" in f["name"]]
    for binary in (stripped_binary, gobuild.build(PROGRAM, version, "default", arch)):
        if dotted:
            code, out, err = run_gotrace("funcs", str(binary), dotted[0].replace("\u00b7", "."), "--json")
            assert code == 0, err
            assert [f["name"] for f in json.loads(out)["functions"]] == [dotted[0]]


@pytest.mark.parametrize("version, arch", TWINS)
def test_abi0_spelling_finds_the_assembly_function(version, arch):
    """`go tool nm` writes internal/bytealg.CountString.abi0; gotrace lists it as the runtime does,
    internal/bytealg.CountString, and takes the .abi0 spelling as input for the same function."""
    for mode in ("default", "stripped"):
        binary = gobuild.build(PROGRAM, version, mode, arch)
        doc = funcs_json(binary, "internal/bytealg.CountString.abi0")
        [fn] = doc["functions"]
        assert fn["name"] == "internal/bytealg.CountString"
        assert fn["traceable"] is False and fn["reason"].startswith("assembly function")
        assert fn == by_name(listing(binary))["internal/bytealg.CountString"]


@pytest.mark.parametrize("version, arch", TWINS)
def test_stripped_pie_lists_what_its_pie_twin_lists(version, arch):
    """The shape of distro-packaged Go binaries (PIE, no .symtab, no DWARF) lists every function of its
    unstripped PIE twin, at the same vaddrs and file offsets, with the same sites and reasons; its goid
    offset comes from the version table and equals the twin's DWARF."""
    pie_binary = gobuild.build(PROGRAM, version, "pie", arch)
    stripped_binary = gobuild.build(PROGRAM, version, "stripped-pie", arch)
    with GoBinary.open(stripped_binary) as stripped_pie, GoBinary.open(pie_binary) as pie:
        assert stripped_pie.elf.has_symtab() is False
        assert stripped_pie.runtime_offsets.source == "table" and pie.runtime_offsets.source == "dwarf"
        assert stripped_pie.runtime_offsets.goid == pie.runtime_offsets.goid == EXPECTED_GOID[version]
    full, stripped = listing(pie_binary), listing(stripped_binary)
    assert stripped["go_version"] == full["go_version"]
    assert len(stripped["functions"]) > 1000
    assert stripped["functions"] == full["functions"]
    traceable = by_name(stripped)["main.(*Server).handle"]
    assert traceable["traceable"] and traceable["returns"]


# --- 3. return sites against objdump ----------------------------------------------------

SAMPLE_SEED = 20240601
SAMPLE_SIZE = 30


@pytest.mark.parametrize("version, mode, arch", EVERY_BUILD)
def test_return_offsets_match_objdump(version, mode, arch):
    binary = gobuild.build(PROGRAM, version, mode, arch)
    functions = listing(binary)["functions"]
    rng = random.Random(f"{SAMPLE_SEED}-{version}-{mode}-{arch}")
    main_fns = [f for f in functions if f["name"].startswith("main.")]
    others = [f for f in functions if not f["name"].startswith("main.")]
    sample = main_fns + rng.sample(others, SAMPLE_SIZE)
    assert len(main_fns) >= 40
    next_entry = {f["entry"]: g["entry"] for f, g in zip(functions, functions[1:])}

    wrong = []
    rets_seen = 0
    for fn in sample:
        entry, size = fn["entry"], fn["size"]
        assert size > 0, fn["name"]
        assert entry + size <= next_entry.get(entry, entry + size), f"{fn['name']} overlaps the next function"
        insns = objdump_instructions(binary, arch, entry, entry + size)
        assert insns and insns[0][0] == entry, f"objdump does not decode {fn['name']} from its entry"
        expected = objdump_ret_offsets(insns, entry)
        rets_seen += len(expected)
        if fn["returns"] != expected:
            wrong.append((fn["name"], fn["returns"], expected))
        if fn["traceable"]:
            assert fn["returns"], fn["name"]
    assert wrong == []
    assert rets_seen >= len(sample)


# --- 4. goid offset without DWARF ---------------------------------------------------------


@pytest.mark.parametrize("version, arch", TWINS)
def test_goid_offset_from_table_equals_dwarf(version, arch):
    with GoBinary.open(gobuild.build(PROGRAM, version, "default", arch)) as full:
        from_dwarf = full.runtime_offsets
    with GoBinary.open(gobuild.build(PROGRAM, version, "stripped", arch)) as stripped:
        from_table = stripped.runtime_offsets
    assert from_dwarf.source == "dwarf"
    assert from_table.source == "table"
    assert from_table.goid == from_dwarf.goid == EXPECTED_GOID[version]
    assert from_table.stack_hi == from_dwarf.stack_hi == 8


# --- 5. the service's known functions ---------------------------------------------------------

# Go 1.21-1.23 compile the promoted-method wrapper (*Wrapped).Describe as a
# call of (*Base).Describe followed by ret (with a panic-frame check); Go
# 1.19 and 1.25+ as a tail jump with no ret.
TAIL_JUMP_WRAPPER = {"1.19", "1.25.5", "1.27.3"}


def test_tail_jump_wrapper_versions_are_matrix_versions():
    assert TAIL_JUMP_WRAPPER <= set(gobuild.TOOLCHAINS)


def test_known_functions(go_target):
    binary = go_target.binary()
    arch = go_target.arch

    doc = funcs_json(binary, "main.(*Server).handle", "main.work", "main.fib", "main.fail",
                     "main.(*Wrapped).Describe")
    assert doc["arch"] == arch
    found = by_name(doc)
    assert sorted(found) == sorted(["main.(*Server).handle", "main.work", "main.fib", "main.fail",
                                    "main.(*Wrapped).Describe"])
    for name in ("main.(*Server).handle", "main.work", "main.fib"):
        fn = found[name]
        assert fn["traceable"] is True and fn["reason"] is None, name
        assert len(fn["returns"]) >= 1, name
    assert len(found["main.work"]["returns"]) == 2     # `return 0, errNegative` and `return sum, nil`
    assert len(found["main.fib"]["returns"]) == 2      # the base case and the recursive case

    fail = found["main.fail"]
    assert fail["traceable"] is False
    assert fail["returns"] == []
    assert "no return" in fail["reason"]

    wrapper = found["main.(*Wrapped).Describe"]
    insns = objdump_instructions(binary, arch, wrapper["entry"], wrapper["entry"] + wrapper["size"])
    if go_target.version in TAIL_JUMP_WRAPPER:
        assert wrapper["traceable"] is False
        assert wrapper["returns"] == []
        assert "tail jump" in wrapper["reason"]
        assert objdump_ret_offsets(insns, wrapper["entry"]) == []
    else:
        assert wrapper["traceable"] is True
        assert wrapper["returns"] == objdump_ret_offsets(insns, wrapper["entry"])
        assert len(wrapper["returns"]) == 1

    generic = funcs_json(binary, "main.Map[...]")["functions"]
    assert len(generic) == 2
    shapes = sorted(f["name"] for f in generic)
    if go_target.version != "1.19":
        assert shapes == ["main.Map[go.shape.int]", "main.Map[go.shape.string]"]
    else:  # Go 1.19's pclntab writes every type-argument list as [...] (its .symtab: go.shape.int_0)
        assert shapes == ["main.Map[...]", "main.Map[...]"]
    assert all(f["traceable"] and f["returns"] for f in generic)

    code, out, err = run_gotrace("funcs", str(binary), "main.tiny")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("gotrace: ")
    assert "main.tiny is inlined" in err
