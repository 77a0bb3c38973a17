"""Reads a BPF object file compiled by clang (`-target bpfel`) into a ProgramImage: its programs, maps and license.

What it understands is what probes/bpf_abi.h produces, and nothing more:

* programs: the global functions of executable sections, each its own
  program, named by its symbol;
* maps: the legacy `maps` section, one struct of five u32 per symbol (type,
  key_size, value_size, max_entries, map_flags), named by the symbol, in the
  order of their offsets;
* relocations R_BPF_64_64 on an ld_imm64 that refer to a map: the
  instruction becomes a map reference (src_reg BPF_PSEUDO_MAP_FD) whose imm
  is the map's index in the image (ProgramImage's convention);
* the `license` section's string.

Anything else a program would need a loader for (global data in .data,
.rodata or .bss, calls to non-inlined functions, BTF-defined maps) is a
ValueError naming it: the probes inline everything and keep their state in
maps, so an object that needs more was not built from them.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from gotrace.bpf.image import INSN_SIZE, LD_IMM64, PSEUDO_MAP_FD, MapSpec, ProgramImage

MAPS_SECTION = "maps"
LICENSE_SECTION = "license"
MAP_DEF = struct.Struct("<IIIII")  # struct gt_map_def
R_BPF_NONE = 0
R_BPF_64_64 = 1
_CALL = 0x85  # BPF_JMP | BPF_CALL
_PSEUDO_CALL = 1  # src_reg of a call to another function of the object


def read_object_file(path: Path) -> ProgramImage:
    """The ProgramImage of the object file at path (OSError if unreadable, ValueError if not a gotrace object)."""
    return read_object(Path(path).read_bytes())


def read_object(data: bytes) -> ProgramImage:
    """The ProgramImage of a BPF object file's bytes; ValueError when it is not one this module understands."""
    try:
        return _read(ELFFile(io.BytesIO(data)))
    except (ELFError, struct.error, IndexError, KeyError) as exc:
        raise ValueError(f"not a readable BPF object file ({exc})") from None


def _read(elf: ELFFile) -> ProgramImage:
    if elf["e_machine"] != "EM_BPF" or not elf.little_endian or elf.elfclass != 64:
        raise ValueError(f"not a little-endian 64-bit BPF object (machine {elf['e_machine']})")
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise ValueError("no symbol table")
    symbols = list(symtab.iter_symbols())
    maps_index, maps = _maps(elf, symbols)
    license = _license(elf)

    programs: dict[str, bytearray] = {}
    where: dict[int, list[tuple[int, int, str]]] = {}  # section index -> [(start, end, program)]
    for index, section in enumerate(elf.iter_sections()):
        if not section["sh_flags"] & SH_FLAGS.SHF_EXECINSTR or section["sh_size"] == 0:
            continue
        data = section.data()
        functions = [sym for sym in symbols if sym["st_shndx"] == index and sym["st_info"]["type"] == "STT_FUNC"]
        if not functions:
            raise ValueError(f"section {section.name} holds code outside any function")
        for sym in functions:
            if sym["st_info"]["bind"] != "STB_GLOBAL":
                raise ValueError(f"{sym.name} in {section.name} is a non-inlined static function: inline it")
            start, end = sym["st_value"], sym["st_value"] + sym["st_size"]
            if start % INSN_SIZE or end % INSN_SIZE or end > len(data) or start >= end:
                raise ValueError(f"program {sym.name} is not whole instructions")
            if sym.name in programs:
                raise ValueError(f"two programs called {sym.name}")
            programs[sym.name] = bytearray(data[start:end])
            where.setdefault(index, []).append((start, end, sym.name))

    sections = list(elf.iter_sections())
    for section in sections:
        if not isinstance(section, RelocationSection):
            continue
        target = section["sh_info"]
        if target not in where:
            if section["sh_info"] < len(sections) and sections[target]["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                raise ValueError(f"relocations for code outside any program ({section.name})")
            continue  # relocations of debug sections
        for rel in section.iter_relocations():
            kind = rel["r_info_type"]
            if kind == R_BPF_NONE:
                continue
            offset = rel["r_offset"]
            name, start = next(((n, s) for s, e, n in where[target] if s <= offset < e), (None, 0))
            if name is None:
                raise ValueError(f"a relocation at {offset:#x} of {sections[target].name} is outside every program")
            sym = symbols[rel["r_info_sym"]]
            if kind != R_BPF_64_64 or sym["st_shndx"] != maps_index:
                raise ValueError(f"program {name} refers to {sym.name or 'a section'} (relocation type {kind}): only "
                                 "maps in the `maps` section are supported, not global data or function calls")
            insns = programs[name]
            at = offset - start
            code, regs, off, imm = struct.unpack_from("<BBhi", insns, at)
            if code != LD_IMM64 or at + 2 * INSN_SIZE > len(insns):
                raise ValueError(f"program {name}: a map relocation at {at:#x} is not on an ld_imm64 instruction")
            map_offset = sym["st_value"] + (imm if sym["st_info"]["type"] == "STT_SECTION" else 0)
            if map_offset not in maps:
                raise ValueError(f"program {name} refers to offset {map_offset:#x} of `maps`, where no map starts")
            struct.pack_into("<BBhi", insns, at, code, (PSEUDO_MAP_FD << 4) | (regs & 0x0F), off,
                             list(maps).index(map_offset))

    for name, insns in programs.items():
        for at in range(0, len(insns), INSN_SIZE):
            code, regs = insns[at], insns[at + 1]
            if code == _CALL and regs >> 4 == _PSEUDO_CALL:
                raise ValueError(f"program {name} calls another function of the object: inline it")
    if not programs:
        raise ValueError("no programs")
    image = ProgramImage(license, tuple(maps.values()), {name: bytes(insns) for name, insns in programs.items()})
    image.check()
    return image


def _maps(elf: ELFFile, symbols: list) -> tuple[int | None, dict[int, MapSpec]]:
    """(index of the `maps` section, {offset: MapSpec} in offset order)."""
    for index, section in enumerate(elf.iter_sections()):
        if section.name == MAPS_SECTION:
            break
    else:
        return None, {}
    data = section.data()
    found: dict[int, MapSpec] = {}
    for sym in sorted((s for s in symbols if s["st_shndx"] == index and s["st_info"]["type"] == "STT_OBJECT"),
                      key=lambda s: s["st_value"]):
        offset = sym["st_value"]
        if sym["st_size"] < MAP_DEF.size or offset + MAP_DEF.size > len(data):
            raise ValueError(f"map {sym.name} is not a struct gt_map_def")
        map_type, key_size, value_size, max_entries, flags = MAP_DEF.unpack_from(data, offset)
        found[offset] = MapSpec(sym.name, map_type, key_size, value_size, max_entries, flags)
    return index, found


def _license(elf: ELFFile) -> str:
    section = elf.get_section_by_name(LICENSE_SECTION)
    if section is None:
        raise ValueError("no license section (the kernel refuses GPL-only helpers without one)")
    return section.data().split(b"\0", 1)[0].decode("ascii", "replace")
