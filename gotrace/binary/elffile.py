"""A small, lazy, mmap-backed reader of 64-bit little-endian ELF files.

Only what gotrace needs: section and program headers, bytes by section, by
vaddr or by file offset, the `.symtab` function symbols in bulk, and RELATIVE
relocation addends for pointers a PIE leaves zero on disk. Bounds are checked
everywhere: a truncated or corrupt file raises BinaryError, never IndexError.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass

from gotrace.errors import BinaryError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
ET_EXEC = 2
ET_DYN = 3
EM_X86_64 = 62
EM_AARCH64 = 183
ARCH_BY_MACHINE = {EM_X86_64: "amd64", EM_AARCH64: "arm64"}

PT_LOAD = 1
PF_X = 1
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_NOBITS = 8
STT_FUNC = 2
R_X86_64_RELATIVE = 8
R_AARCH64_RELATIVE = 1027
RELATIVE_TYPES = {"amd64": R_X86_64_RELATIVE, "arm64": R_AARCH64_RELATIVE}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_PHDR = struct.Struct("<IIQQQQQQ")
_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")


@dataclass(frozen=True)
class Section:
    name: str
    index: int
    type: int
    flags: int
    vaddr: int
    file_offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    file_offset: int
    vaddr: int
    file_size: int
    mem_size: int


class ElfImage:
    """An ELF64 LE file mapped read-only. Construction reads only the file header."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _EHDR.size:
                    self._data = f.read()
                else:
                    self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise BinaryError(f"{self.path}: no such file; give the path of a Go executable") from None
        except IsADirectoryError:
            raise BinaryError(f"{self.path}: is a directory; give the path of a Go executable") from None
        except PermissionError:
            raise BinaryError(f"{self.path}: permission denied; run as a user who can read it") from None
        except OSError as e:
            raise BinaryError(f"{self.path}: cannot read: {e.strerror}") from None
        self._view = memoryview(self._data)
        self._parse_header()

    # -- header --------------------------------------------------------------

    def _parse_header(self) -> None:
        data = self._data
        if len(data) < 4 or data[:4] != ELF_MAGIC:
            raise BinaryError(f"{self.path}: not an ELF executable; gotrace traces Linux Go binaries")
        if len(data) < _EHDR.size:
            raise BinaryError(f"{self.path}: truncated ELF header; the file is damaged or incomplete")
        ident, e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx = (
            _EHDR.unpack_from(data, 0))
        if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB:
            raise BinaryError(f"{self.path}: not a 64-bit little-endian ELF; gotrace supports amd64 and arm64")
        if machine not in ARCH_BY_MACHINE:
            raise BinaryError(f"{self.path}: ELF machine {machine} is not supported; gotrace supports amd64 and arm64")
        if e_type not in (ET_EXEC, ET_DYN):
            raise BinaryError(f"{self.path}: not an executable (ELF type {e_type}); give a Go program, not an object file")
        self.arch = ARCH_BY_MACHINE[machine]
        self.is_pie = e_type == ET_DYN
        self._phoff, self._phnum, self._phentsize = phoff, phnum, phentsize
        self._shoff, self._shnum, self._shentsize, self._shstrndx = shoff, shnum, shentsize, shstrndx

    def close(self) -> None:
        self._view.release()
        if isinstance(self._data, mmap.mmap):
            try:
                self._data.close()
            except BufferError:
                pass  # a memoryview slice handed out is still alive; the GC unmaps later

    def __enter__(self) -> "ElfImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def file_size(self) -> int:
        return len(self._data)

    # -- raw access ----------------------------------------------------------

    def read(self, file_offset: int, size: int) -> memoryview:
        """`size` bytes at `file_offset`; BinaryError when the file ends first."""
        if file_offset < 0 or size < 0 or file_offset + size > len(self._data):
            raise BinaryError(f"{self.path}: truncated: data at file offset {file_offset:#x} is missing; the file is damaged or was not copied completely")
        return self._view[file_offset:file_offset + size]

    # -- sections and segments -------------------------------------------------

    @functools.cached_property
    def sections(self) -> tuple[Section, ...]:
        if self._shnum == 0 or self._shoff == 0:
            return ()
        if self._shentsize != _SHDR.size:
            raise BinaryError(f"{self.path}: corrupt ELF section headers")
        table = self.read(self._shoff, self._shnum * _SHDR.size)
        raw = list(_SHDR.iter_unpack(table))
        if self._shstrndx >= len(raw):
            raise BinaryError(f"{self.path}: corrupt ELF section name table")
        strtab_hdr = raw[self._shstrndx]
        names = bytes(self.read(strtab_hdr[4], strtab_hdr[5]))
        out = []
        for index, (name_off, sh_type, flags, vaddr, offset, size, link, _, _, entsize) in enumerate(raw):
            end = names.find(b"\0", name_off)
            name = names[name_off:end if end >= 0 else len(names)].decode("utf-8", "replace")
            out.append(Section(name, index, sh_type, flags, vaddr, offset, size, link, entsize))
        return tuple(out)

    @functools.cached_property
    def _sections_by_name(self) -> dict[str, Section]:
        by_name: dict[str, Section] = {}
        for section in self.sections:
            by_name.setdefault(section.name, section)
        return by_name

    def get_section(self, name: str) -> Section | None:
        return self._sections_by_name.get(name)

    def section_bytes(self, section: Section) -> memoryview:
        if section.type == SHT_NOBITS:
            return memoryview(b"")
        return self.read(section.file_offset, section.size)

    @functools.cached_property
    def segments(self) -> tuple[Segment, ...]:
        if self._phnum == 0:
            return ()
        if self._phentsize != _PHDR.size:
            raise BinaryError(f"{self.path}: corrupt ELF program headers")
        table = self.read(self._phoff, self._phnum * _PHDR.size)
        return tuple(Segment(p_type, flags, offset, vaddr, filesz, memsz)
                     for p_type, flags, offset, vaddr, _, filesz, memsz, _ in _PHDR.iter_unpack(table))

    def vaddr_to_file_offset(self, vaddr: int) -> int:
        """File offset of `vaddr`: `vaddr - p_vaddr + p_offset` of the PT_LOAD holding it."""
        for seg in self.segments:
            if seg.type == PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.file_size:
                return vaddr - seg.vaddr + seg.file_offset
        raise BinaryError(f"{self.path}: address {vaddr:#x} is not in any loaded segment of the file")

    def vaddrs_to_file_offsets(self, vaddrs) -> list[int]:
        """`vaddr_to_file_offset` of each of `vaddrs`, in order, with one look at the segments."""
        loads = [(seg.vaddr, seg.vaddr + seg.file_size, seg.file_offset)
                 for seg in self.segments if seg.type == PT_LOAD]
        out = []
        last = None
        for vaddr in vaddrs:
            if last is None or not last[0] <= vaddr < last[1]:
                last = next((load for load in loads if load[0] <= vaddr < load[1]), None)
                if last is None:
                    raise BinaryError(f"{self.path}: address {vaddr:#x} is not in any loaded segment of the file")
            out.append(vaddr - last[0] + last[2])
        return out

    def read_vaddr(self, vaddr: int, size: int) -> memoryview:
        return self.read(self.vaddr_to_file_offset(vaddr), size)

    # -- symbols and relocations -------------------------------------------------

    def has_symtab(self) -> bool:
        section = self.get_section(".symtab")
        return section is not None and section.type == SHT_SYMTAB and section.size > 0

    def iter_function_symbols(self):
        """(name_bytes, vaddr, size) of every STT_FUNC symbol in `.symtab`."""
        symtab = self.get_section(".symtab")
        if symtab is None or symtab.type != SHT_SYMTAB:
            return
        if symtab.link >= len(self.sections):
            raise BinaryError(f"{self.path}: corrupt .symtab (bad string table link)")
        strtab = bytes(self.section_bytes(self.sections[symtab.link]))
        table = self.section_bytes(symtab)
        usable = len(table) - len(table) % _SYM.size
        find = strtab.find
        for name_off, info, _, shndx, value, size in _SYM.iter_unpack(table[:usable]):
            if info & 0xF != STT_FUNC or shndx == 0:
                continue
            end = find(b"\0", name_off)
            if end < 0:
                continue
            yield strtab[name_off:end], value, size

    def symbol_vaddr(self, name: str) -> int | None:
        """vaddr of a `.symtab` symbol of any type, or None."""
        symtab = self.get_section(".symtab")
        if symtab is None or symtab.type != SHT_SYMTAB or symtab.link >= len(self.sections):
            return None
        strtab = bytes(self.section_bytes(self.sections[symtab.link]))
        wanted = name.encode() + b"\0"
        pos = strtab.find(b"\0" + wanted) + 1
        if pos <= 0:
            return None
        table = self.section_bytes(symtab)
        usable = len(table) - len(table) % _SYM.size
        for name_off, _, _, shndx, value, _ in _SYM.iter_unpack(table[:usable]):
            if name_off == pos and shndx != 0:
                return value
        return None

    @functools.cached_property
    def _relative_relocations(self) -> dict[int, int]:
        """vaddr -> addend of every RELATIVE relocation (the pointer a PIE loader writes)."""
        wanted = RELATIVE_TYPES[self.arch]
        out: dict[int, int] = {}
        for section in self.sections:
            if section.type != SHT_RELA:
                continue
            table = self.section_bytes(section)
            usable = len(table) - len(table) % _RELA.size
            for offset, info, addend in _RELA.iter_unpack(table[:usable]):
                if info & 0xFFFFFFFF == wanted:
                    out[offset] = addend
        return out

    def read_pointer(self, vaddr: int) -> int:
        """The 8-byte pointer at `vaddr` as linked: a zero on disk that a RELATIVE
        relocation fills at load time yields the relocation's addend."""
        (value,) = struct.unpack("<Q", self.read_vaddr(vaddr, 8))
        if value == 0 and self.is_pie:
            return self._relative_relocations.get(vaddr, 0)
        return value
