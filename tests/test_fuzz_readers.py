"""Fuzzing the binary readers: damaged Go binaries give a one-line GotraceError, never a traceback or a hang.

Real builds of testdata/service (Go 1.19 and 1.27.3, amd64 and arm64,
stripped and not) are damaged the ways files get damaged: truncated at some
offset, bytes flipped, words overwritten with boundary values, ranges zeroed
or overwritten with junk. The damage is aimed at what the readers parse (the
ELF, program and section headers, `.gopclntab`'s header, functab, `_func`
records and names, `.go.buildinfo`, moduledata, the code of the functions
being matched, `.symtab`, the DWARF sections) and also falls anywhere.

Each damaged file goes through the analysis that `gotrace funcs` and
`gotrace latency` run before any BPF (GoBinary.open, match, probe sites, file
offsets, runtime offsets) in this process. The outcome must be success or a
`GotraceError` with exit code 2 and a one-line message; any other exception
fails the test, and so does a call that runs longer than HANG_S (wall clock,
guarded by SIGALRM). A few dozen damaged files also go through the real CLI:
exit 0 or 2, exactly one line on stderr, never "Traceback".

Hypothesis runs derandomized (fixed seeds, no example database), so CI sees
the same few thousand inputs every time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import signal
import struct
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from support import gobuild
from support.cli import run_gotrace_process
from gotrace.binary.dwarfinfo import DwarfInfo
from gotrace.errors import GotraceError
from gotrace.commands.funcs import describe_functions
from gotrace.binary.gobinary import GoBinary
from gotrace.binary.runtime_offsets import runtime_offsets

HANG_S = 2.0
"""Most CPU seconds one analysis of one damaged file may take (undamaged: 0.02 s, 0.7 s with DWARF)."""
DWARF_HANG_S = 6.0
"""The same for reading damaged DWARF: when a function's package CU is unreadable, dwarfinfo
indexes every CU of the binary looking for it, which alone takes 1.5-3 s here."""

BASES = [
    (version, mode, arch)
    for version in ("1.19", "1.27.3")
    for arch in ("amd64", "arm64")
    for mode in ("default", "stripped")
]
"""(version, mode, arch) of the service builds that get damaged."""

PATTERN_SETS = [
    ["main.*"],
    ["main.work", "main.(*Server).handle"],
    ["main.Map[...]", "main.fib"],
    ["runtime.main"],
    ["*ServeHTTP"],
]

INTERESTING_WORDS = [
    0, 1, 2, 7, 8, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
    0xFFFFFFFE, 0xFFFFFFFF, 0x100000000, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
]

SHF_COMPRESSED = 0x800
VERSION_TUPLES = {"1.19": (1, 19, 8), "1.27.3": (1, 27, 3)}


# -- the binaries and where their parts lie ----------------------------------------


class Base:
    """One undamaged binary, copied to a scratch file that examples damage in place and restore.

    A plain class, not a dataclass: Hypothesis prints dataclasses field by field,
    and `data` is megabytes.
    """

    def __init__(self, key: tuple[str, ...], data: bytes, regions: dict[str, tuple[int, int]], scratch: Path):
        self.key = key              # (version, mode, arch[, DWARF form])
        self.data = data
        self.regions = regions      # name -> (file_offset, size)
        self.scratch = scratch

    def __repr__(self) -> str:
        return f"Base({'/'.join(self.key)})"

    def region(self, name: str) -> tuple[int, int]:
        off, size = self.regions.get(name, (0, 0))
        if size <= 0 or off >= len(self.data):
            return 0, len(self.data)
        return off, min(size, len(self.data) - off)


def _section_regions(data: bytes) -> tuple[dict[str, tuple[int, int]], list[tuple[int, str, int, int, int]]]:
    """Regions of the ELF headers and of every section by name, read with struct (not with gotrace).

    Also returns the raw section list: (index, name, flags, file_offset, size).
    """
    (phoff, shoff) = struct.unpack_from("<QQ", data, 32)
    phnum, _, shnum, shstrndx = struct.unpack_from("<HHHH", data, 56)
    regions = {
        "elf_header": (0, 64),
        "program_headers": (phoff, phnum * 56),
        "section_headers": (shoff, shnum * 64),
    }
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * i) for i in range(shnum)]
    names_off, names_size = raw[shstrndx][4], raw[shstrndx][5]
    names = data[names_off:names_off + names_size]
    sections = []
    for index, (name_off, sh_type, flags, _, offset, size, *_rest) in enumerate(raw):
        name = names[name_off:names.index(b"\0", name_off)].decode()
        sections.append((index, name, flags, offset, size))
        if sh_type != 8 and size:  # not NOBITS
            regions.setdefault("section:" + name, (offset, size))
            regions.setdefault("shdr:" + name, (shoff + 64 * index, 64))
    return regions, sections


def _analysis_regions(path: Path, data: bytes) -> dict[str, tuple[int, int]]:
    """Regions inside the Go structures, located with gotrace on the undamaged binary."""
    regions = {}
    with GoBinary(path) as gobin:
        elf, pcln = gobin.elf, gobin.pclntab
        pcln_file = elf.vaddr_to_file_offset(pcln.vaddr)
        regions["pclntab_header"] = (pcln_file, 8 + 8 * 8)
        functab_size = (pcln.nfunc + 1) * 8
        regions["functab"] = (pcln_file + pcln.pcln_off, functab_size)
        main_fns = gobin.match(["main.*"])
        funcoffs = [pcln._funcoffs[fn.index] for fn in main_fns]
        regions["func_records"] = (pcln_file + pcln.pcln_off + min(funcoffs), max(funcoffs) - min(funcoffs) + 64)
        name_offs = [pcln.name_offset(fn.index) for fn in main_fns]
        regions["func_names"] = (pcln_file + min(name_offs), max(name_offs) - min(name_offs) + 64)
        first = min(fn.entry_vaddr for fn in main_fns)
        last = max(fn.entry_vaddr + fn.size for fn in main_fns)
        regions["main_code"] = (elf.vaddr_to_file_offset(first), last - first)
        # moduledata: the word pointing at the pcHeader, in a data section
        want = struct.pack("<Q", pcln.vaddr)
        for name in (".go.module", ".noptrdata", ".data.rel.ro", ".data"):
            section = elf.get_section(name)
            if section is None or section.type == 8:
                continue
            pos = data.find(want, section.file_offset, section.file_offset + section.size)
            if pos >= 0:
                regions["moduledata"] = (pos, 8 * 32)
                break
    return regions


def make_bases(scratch_dir: Path) -> dict[tuple[str, ...], Base]:
    out = {}
    for key in BASES:
        path = gobuild.build("service", *key)
        data = path.read_bytes()
        regions, _ = _section_regions(data)
        regions.update(_analysis_regions(path, data))
        scratch = scratch_dir / f"service-{'-'.join(key)}"
        scratch.write_bytes(data)
        out[key] = Base(key, data, regions, scratch)
    return out


def make_dwarf_bases(scratch_dir: Path) -> dict[tuple[str, ...], Base]:
    """The unstripped builds as linked (DWARF sections zlib-compressed), and rewritten with
    their DWARF sections decompressed, so that damage also reaches the DWARF parser itself
    instead of stopping at zlib's checksum. Keys (version, mode, arch, "zlib" | "plain")."""
    out = {}
    for key in [k for k in BASES if k[1] == "default"]:
        linked = gobuild.build("service", *key).read_bytes()
        for form, data in (("zlib", linked), ("plain", decompress_debug_sections(linked))):
            scratch = scratch_dir / f"service-{'-'.join(key)}-{form}"
            scratch.write_bytes(data)
            regions, _ = _section_regions(data)
            if form == "plain":
                regions.update(_dwarf_regions(scratch, regions))
            out[key + (form,)] = Base(key + (form,), data, regions, scratch)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[tuple[str, ...], Base]:
    return make_bases(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def dwarf_bases(tmp_path_factory) -> dict[tuple[str, ...], Base]:
    return make_dwarf_bases(tmp_path_factory.mktemp("fuzz-dwarf"))


def decompress_debug_sections(data: bytes) -> bytes:
    """The ELF with each SHF_COMPRESSED section's contents inflated and appended at the end,
    its section header pointed there and its compressed flag cleared."""
    out = bytearray(data)
    shoff = struct.unpack_from("<Q", data, 40)[0]
    _, sections = _section_regions(data)
    for index, name, flags, offset, size in sections:
        if not flags & SHF_COMPRESSED:
            continue
        ch_type, _, ch_size, _ = struct.unpack_from("<IIQQ", data, offset)
        assert ch_type == 1, f"{name}: not zlib"
        plain = zlib.decompress(data[offset + 24:offset + size])
        assert len(plain) == ch_size
        out += b"\0" * (-len(out) % 16)
        new_offset = len(out)
        out += plain
        hdr = shoff + 64 * index
        struct.pack_into("<Q", out, hdr + 8, flags & ~SHF_COMPRESSED)
        struct.pack_into("<Q", out, hdr + 24, new_offset)
        struct.pack_into("<Q", out, hdr + 32, len(plain))
    return bytes(out)


def _dwarf_regions(path: Path, regions: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """The runtime CU's header, the runtime.g DIE and main.work's DIE, as file regions."""
    info_off = regions["section:.debug_info"][0]
    out = {}
    with DwarfInfo.open(path) as dwarf:
        dwarf._ensure_units()
        runtime_cu = max(dwarf._units_by_name["runtime"], key=lambda cu: cu.size)
        out["runtime_cu_header"] = (info_off + runtime_cu.cu_offset, 16)
        assert dwarf.struct_member_offset("runtime.g", "goid") is not None
        g_off = dwarf._top_level["runtime.g"][0]
        out["runtime_g_die"] = (info_off + g_off, 512)
        die = dwarf.subprogram_die("main.work")
        out["main_work_die"] = (info_off + die.offset, 256)
        main_cu = dwarf._units_by_name["main"][0]
        out["main_cu_header"] = (info_off + main_cu.cu_offset, 16)
    return out


# -- damage -------------------------------------------------------------------------

KINDS = ["flip", "word", "zero", "junk", "truncate"]
REGIONS = [
    "elf_header", "program_headers", "section_headers", "section:.shstrtab",
    "pclntab_header", "functab", "func_records", "func_names", "section:.gopclntab",
    "section:.go.buildinfo", "moduledata", "main_code",
    "section:.symtab", "section:.strtab",
    "shdr:.gopclntab", "shdr:.go.buildinfo", "shdr:.symtab",
    "whole_file",
]
"""Where test_damaged_binaries_fail_cleanly aims; the DWARF sections are test_damaged_dwarf_fails_cleanly's."""
DWARF_REGIONS = [
    "section:.shstrtab", "shdr:.debug_line", "shdr:.debug_str", "whole_file",
    "runtime_cu_header", "runtime_g_die", "main_work_die", "main_cu_header",
    "section:.debug_abbrev", "section:.debug_info", "section:.debug_str", "section:.debug_line_str",
    "section:.debug_str_offsets", "section:.debug_addr", "section:.debug_ranges", "section:.debug_rnglists",
    "shdr:.debug_info", "shdr:.debug_abbrev", "section_headers", "elf_header",
]


@dataclass(frozen=True)
class Damage:
    kind: str
    region: str
    where: int      # position inside the region (taken modulo its size)
    amount: int     # xor mask, word choice, length
    junk: bytes

    def resolve(self, base: Base) -> tuple[int, bytes | None]:
        """(file_offset, bytes to write) or (file_offset, None) for a truncation there."""
        off, size = base.region(self.region)
        pos = off + self.where % size
        data = base.data
        if self.kind == "truncate":
            return pos, None
        if self.kind == "flip":
            return pos, bytes([data[pos] ^ (1 + self.amount % 255)])
        if self.kind == "word":
            value = INTERESTING_WORDS[self.amount % len(INTERESTING_WORDS)]
            width = 8 if self.amount & 0x100 else 4
            pos -= pos % width
            return pos, (value & (256**width - 1)).to_bytes(width, "little")
        if self.kind == "zero":
            return pos, b"\0" * (1 + self.amount % min(size, 4096))
        return pos, self.junk or b"\xa5"


damages = st.builds(
    Damage,
    kind=st.sampled_from(KINDS),
    region=st.sampled_from(REGIONS),
    where=st.integers(0, 2**32),
    amount=st.integers(0, 2**16),
    junk=st.binary(min_size=1, max_size=32),
)
dwarf_damages = st.builds(
    Damage,
    kind=st.sampled_from(["flip", "flip", "word", "zero", "junk", "truncate"]),
    region=st.sampled_from(DWARF_REGIONS),
    where=st.integers(0, 2**32),
    amount=st.integers(0, 2**16),
    junk=st.binary(min_size=1, max_size=32),
)


@contextlib.contextmanager
def damaged(base: Base, ops: list[Damage]):
    """The base's scratch file with `ops` applied in place; restored afterwards."""
    writes, cut = [], len(base.data)
    for op in ops:
        pos, blob = op.resolve(base)
        if blob is None:
            cut = min(cut, pos)
        else:
            writes.append((pos, blob[:max(0, len(base.data) - pos)]))
    fd = os.open(base.scratch, os.O_RDWR)
    try:
        for pos, blob in writes:
            os.pwrite(fd, blob, pos)
        if cut < len(base.data):
            os.ftruncate(fd, cut)
        yield base.scratch
    finally:
        if cut < len(base.data):
            os.pwrite(fd, base.data[cut:], cut)
        for pos, blob in writes:
            os.pwrite(fd, base.data[pos:pos + len(blob)], pos)
        os.close(fd)


def describe(base: Base, ops: list[Damage]) -> str:
    return f"service {'/'.join(base.key)} damaged by {ops}"


# -- running the analysis with a hang guard ------------------------------------------


class Hang(BaseException):
    """Raised by the time guard; a BaseException so no `except Exception` in the code under test swallows it."""


def _out_of_time(signum, frame):
    # Again in 0.1 s: a raise that lands in a garbage-collector callback is swallowed.
    signal.setitimer(signal.ITIMER_PROF, 0.1)
    raise Hang()


@contextlib.contextmanager
def cpu_time_limit(seconds: float):
    """Raise Hang once this process has used `seconds` of CPU time inside the block.

    CPU time, not wall-clock time, so that a loaded CI machine does not make
    a slow-but-finite call look like a hang; an endless loop burns CPU and is
    caught all the same.
    """
    old = signal.signal(signal.SIGPROF, _out_of_time)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def analyse(path: Path, patterns: list[str], *, runtime_offsets: bool = True) -> None:
    """What `gotrace funcs` and `gotrace latency` read from a binary before touching BPF."""
    with GoBinary.open(path) as gobin:
        listing = describe_functions(gobin, patterns)
        for probes, file_offset in listing.entries:
            assert file_offset >= 0
        if runtime_offsets:
            gobin.runtime_offsets


def open_and_index(path: Path) -> None:
    """The cheap first steps: ELF header, build info, pclntab header and functab, one name."""
    with GoBinary.open(path) as gobin:
        assert gobin.go_version.startswith("go")
        table = gobin.functions
        table.function(len(table) // 2)


def read_dwarf(path: Path, go_version: tuple[int, int, int]) -> None:
    """What `gotrace latency` (runtime offsets, as GoBinary.runtime_offsets does) and
    `gotrace args` (signatures) read from DWARF, sharing one parse of the runtime CU."""
    dwarf = DwarfInfo.open(path)
    if dwarf is None:
        return
    with dwarf:
        runtime_offsets(go_version, dwarf)
        dwarf.struct_member_offset("runtime.g", "goid")
        dwarf.function_signature("main.work")
        dwarf.function_signature("main.(*Server).handle")


OUTCOMES: collections.Counter = collections.Counter()
"""How the analyses ended: "ok", or the error message with paths and numbers blanked."""


def _outcome_kind(message: str) -> str:
    message = re.sub(r"/\S*", "PATH", message)
    return re.sub(r"0x[0-9a-f]+|\d+", "N", message)


def check_outcome(what: str, call, limit_s: float = HANG_S) -> None:
    """`call()` must return or raise a GotraceError (exit 2, one line) within `limit_s` CPU seconds."""
    started = time.process_time()
    try:
        with cpu_time_limit(limit_s):
            call()
    except Hang:
        pytest.fail(f"no answer after {limit_s} s of CPU time (hang?): {what}", pytrace=False)
    except GotraceError as exc:
        message = str(exc)
        assert exc.exit_code == 2, f"{type(exc).__name__} with exit code {exc.exit_code}: {message} ({what})"
        assert message.strip() and "\n" not in message, f"not a one-line message: {message!r} ({what})"
        OUTCOMES[_outcome_kind(message)] += 1
    except Exception:
        pytest.fail(f"{what}: not a GotraceError:\n{traceback.format_exc()}", pytrace=False)
    else:
        OUTCOMES["ok"] += 1
    elapsed = time.process_time() - started
    assert elapsed < limit_s, f"took {elapsed:.2f} s of CPU time: {what}"


FUZZ_SETTINGS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": its tracing slows every call
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


# -- the tests ----------------------------------------------------------------------


def test_undamaged_bases_analyse_cleanly(bases, dwarf_bases):
    """The starting points work, so what the fuzz tests see comes from the damage."""
    for base in list(bases.values()) + list(dwarf_bases.values()):
        with GoBinary.open(base.scratch) as gobin:
            assert gobin.go_version.startswith("go" + base.key[0])
            assert gobin.arch == base.key[2]
            names = {fn.name for fn in gobin.match(["main.*"])}
            assert "main.work" in names
            expected_source = "table" if base.key[1] == "stripped" else "dwarf"
            assert gobin.runtime_offsets.source == expected_source


HEADER_REGIONS = [
    "elf_header", "program_headers", "section_headers", "section:.shstrtab", "section:.go.buildinfo",
    "shdr:.go.buildinfo", "pclntab_header", "shdr:.gopclntab", "moduledata", "whole_file",
]
header_damages = st.builds(
    Damage,
    kind=st.sampled_from(KINDS),
    region=st.sampled_from(HEADER_REGIONS),
    where=st.integers(0, 2**32),
    amount=st.integers(0, 2**16),
    junk=st.binary(min_size=1, max_size=32),
)


@settings(max_examples=1200, **FUZZ_SETTINGS)
@given(data=st.data())
def test_damaged_headers_fail_cleanly(bases, data):
    """Opening: ELF and program/section headers, build info, pclntab header (cheap, so many examples)."""
    base = bases[data.draw(st.sampled_from(BASES), label="base")]
    ops = data.draw(st.lists(header_damages, min_size=1, max_size=3), label="damage")
    with damaged(base, ops) as path:
        check_outcome(describe(base, ops), lambda: open_and_index(path))


@settings(max_examples=1800, **FUZZ_SETTINGS)
@given(data=st.data())
def test_damaged_binaries_fail_cleanly(bases, data):
    """The whole analysis before BPF. Runtime offsets are read here for stripped builds (from
    the version table); reading them from damaged DWARF is test_damaged_dwarf_fails_cleanly's
    job, at 0.5 s per parse of the runtime's DWARF."""
    base = bases[data.draw(st.sampled_from(BASES), label="base")]
    ops = data.draw(st.lists(damages, min_size=1, max_size=3), label="damage")
    patterns = data.draw(st.sampled_from(PATTERN_SETS), label="patterns")
    with damaged(base, ops) as path:
        check_outcome(describe(base, ops) + f", patterns {patterns}",
                      lambda: analyse(path, patterns, runtime_offsets=base.key[1] == "stripped"))


@settings(max_examples=60, **FUZZ_SETTINGS)
@given(data=st.data())
def test_damaged_dwarf_fails_cleanly(dwarf_bases, data):
    """Runtime offsets (as GoBinary.runtime_offsets reads them) and signatures from damaged DWARF,
    compressed as linked or decompressed."""
    base = dwarf_bases[data.draw(st.sampled_from(sorted(dwarf_bases)), label="base")]
    ops = data.draw(st.lists(dwarf_damages, min_size=1, max_size=2), label="damage")
    version = VERSION_TUPLES[base.key[0]]
    with damaged(base, ops) as path:
        check_outcome(describe(base, ops), lambda: read_dwarf(path, version), DWARF_HANG_S)


CLI_CASES = 36


def test_cli_on_damaged_binaries(bases, tmp_path):
    """The real command: exit 0 or 2, one line on stderr, no traceback."""
    rng = random.Random(20260517)
    keys = sorted(bases)
    outcomes = {0: 0, 2: 0}
    for case in range(CLI_CASES):
        base = bases[keys[case % len(keys)]]
        ops = [
            Damage(rng.choice(KINDS), rng.choice(REGIONS), rng.randrange(2**32), rng.randrange(2**16),
                   rng.randbytes(rng.randint(1, 16)))
            for _ in range(rng.randint(1, 2))
        ]
        target = tmp_path / "service"
        with damaged(base, ops) as path:
            target.write_bytes(path.read_bytes())
        proc = run_gotrace_process("funcs", target, "main.*", timeout=60, env={**os.environ, "GOTRACE_DEBUG": ""})
        what = describe(base, ops)
        assert "Traceback" not in proc.stderr, what
        assert proc.returncode in (0, 2), f"exit {proc.returncode}: {proc.stderr!r} ({what})"
        outcomes[proc.returncode] += 1
        if proc.returncode == 0:
            assert proc.stderr == "", what
            assert "main." in proc.stdout, what
        else:
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("gotrace: "), f"{proc.stderr!r} ({what})"
            assert proc.stdout == "", what
    # The damage is real: some files are refused, and some still work.
    assert outcomes[2] >= 5 and outcomes[0] >= 1, outcomes


def test_damage_reached_every_reader():
    """The fuzz tests above got past the ELF magic: damaged files were refused for many
    different reasons by each reader, and many still analysed. Run with them (it reads
    what they recorded)."""
    if not OUTCOMES:
        pytest.skip("run the whole file: this checks what the fuzz tests above recorded")
    kinds = [kind for kind in OUTCOMES if kind != "ok"]
    assert OUTCOMES["ok"] >= 200, OUTCOMES
    assert len(kinds) >= 10, kinds
    for reader in ("ELF", "build info", "function table", "no function matches", "DWARF"):
        assert any(reader in kind for kind in kinds), (reader, kinds)
