"""The names and kinds of a Go binary's runtime types (`runtime._type`), read from its ELF file.

Interface and error values carry a pointer to their concrete type's
`runtime._type` (through an itab for non-empty interfaces). The binary's
moduledata locates the types section, and each type's `str` field is a
nameOff into it: enough to name the type as `%T` prints it without DWARF,
also in stripped binaries.
"""

from __future__ import annotations

import struct

from gotrace.binary.encoding import MAX_UVARINT_BYTES, read_uvarint
from gotrace.binary.pclntab import MODULEDATA_TEXT_WORD, iter_moduledata

# runtime._type (internal/abi.Type) on 64-bit: tflag u8 at 20, kind u8 at 23, str nameOff i32 at 40.
_TYPE_TFLAG, _TYPE_KIND, _TYPE_STR = 20, 23, 40
_TFLAG_EXTRA_STAR = 2
KIND_MASK = 0x1F  # the low bits of _type.kind; higher bits are flags (kindDirectIface, ...)
# moduledata word index of `types`: after text(22), etext, noptrdata..enoptrbss (8 words),
# [covctrs, ecovctrs from Go 1.20], end, gcdata, gcbss (checked against DWARF, Go 1.19-1.27).


class RuntimeTypes:
    """Names and kinds of runtime._type values, read from the ELF file (by ELF vaddr)."""

    def __init__(self, elf, pclntab_vaddr: int, go_version: tuple[int, int, int]):
        self.elf = elf
        self.types_vaddr = self._find_types(pclntab_vaddr, go_version)
        self._cache: dict[int, tuple[str, int] | None] = {}

    @classmethod
    def of(cls, gobin) -> RuntimeTypes:
        return cls(gobin.elf, gobin.pclntab.vaddr, gobin.build.version_tuple)

    def _find_types(self, pclntab_vaddr: int, version) -> int | None:
        elf = self.elf
        types_word = MODULEDATA_TEXT_WORD + (13 if tuple(version[:2]) < (1, 20) else 15)
        for base in iter_moduledata(elf, pclntab_vaddr):
            try:
                types = elf.read_pointer(base + 8 * types_word)
                # etypes follows types directly up to Go 1.26, one word later from 1.27
                ends = [elf.read_pointer(base + 8 * (types_word + k)) for k in (1, 2)]
                elf.read_vaddr(types, 1)
            except Exception:
                continue
            if types and any(end > types for end in ends):
                return types
        return elf.symbol_vaddr("runtime.types")

    def describe(self, type_vaddr: int) -> tuple[str, int] | None:
        """(name as %T prints it, kind byte) of the runtime._type at this ELF vaddr; None if unreadable."""
        if type_vaddr in self._cache:
            return self._cache[type_vaddr]
        result = None
        if self.types_vaddr is not None and type_vaddr:
            try:
                header = bytes(self.elf.read_vaddr(type_vaddr, 48))
                tflag, kind = header[_TYPE_TFLAG], header[_TYPE_KIND]
                (name_off,) = struct.unpack_from("<i", header, _TYPE_STR)
                name = self._name(self.types_vaddr + name_off)
                if tflag & _TFLAG_EXTRA_STAR and name.startswith("*"):
                    name = name[1:]
                result = (name, kind)
            except Exception:  # an address outside the file: a type made at run time (reflect)
                result = None
        self._cache[type_vaddr] = result
        return result

    def _name(self, vaddr: int) -> str:
        raw = bytes(self.elf.read_vaddr(vaddr, 1 + MAX_UVARINT_BYTES))
        length, pos = read_uvarint(raw, 1)  # the length follows the flags byte (Go 1.17+)
        return bytes(self.elf.read_vaddr(vaddr + pos, length)).decode("utf-8", "replace")
