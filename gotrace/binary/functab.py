"""The Go functions of a binary: names, entry vaddrs, sizes, assembly flag.

The set of functions and their entries come from pclntab, which every Go
binary keeps; when `.symtab` is present its names (`.abi0` suffixes, exact
generic shapes) and sizes take precedence, since `go tool nm` and debuggers
show those. Non-Go text symbols of external linking (C code) are not Go
functions and are left out.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass

from gotrace.binary.elffile import ElfImage
from gotrace.binary.pclntab import Pclntab

FUNCFLAG_ASM = 4
ABI0_SUFFIX = ".abi0"
# Offset of the `flag` byte inside `_func`: after entry, name, args,
# deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset, [startLine], funcID.
_FLAG_OFFSET = {"1.16": 41, "1.18": 37, "1.20": 41}


@dataclass(frozen=True)
class GoFunction:
    index: int            # position in the function table (entry order)
    name: str             # as Go writes it (".symtab" spelling when present)
    entry_vaddr: int
    size: int             # bytes; without .symtab, up to the next function (padding included)
    is_asm: bool          # written in assembly (no Go prologue; may not hold g)


def normalize_name(name: str) -> str:
    """The spelling that patterns also match: `.abi0` dropped and each generic
    type-argument list written `[...]`, as pclntab does in Go 1.18-1.19; `·` written
    `.`, as Go's linker rewrites it in .symtab (pclntab keeps `type:.eq.T·1`)."""
    name = name.replace("\u00b7", ".")
    if name.endswith(ABI0_SUFFIX):
        name = name[:-len(ABI0_SUFFIX)]
    if "[" not in name:
        return name
    out, depth = [], 0
    for ch in name:
        if ch == "[":
            if depth == 0:
                out.append("[...]")
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


class FunctionTable:
    """All Go functions of one binary, in entry order. Names decode on first use."""

    def __init__(self, elf: ElfImage, pclntab: Pclntab):
        self.elf = elf
        self.pclntab = pclntab
        self.entries = pclntab.entries          # nfunc entries + end of text
        self.source = "symtab" if elf.has_symtab() else "pclntab"

    def __len__(self) -> int:
        return self.pclntab.nfunc

    @functools.cached_property
    def _symbols(self) -> dict[int, tuple[bytes, int]]:
        """vaddr -> (name, size) from .symtab, first Go-looking name per address."""
        out: dict[int, tuple[bytes, int]] = {}
        for name, vaddr, size in self.elf.iter_function_symbols():
            if vaddr not in out or out[vaddr][1] == 0:
                out[vaddr] = (name, size)
        return out

    @functools.cached_property
    def names(self) -> list[str]:
        names = self.pclntab.names()
        if self.source == "symtab":
            symbols = self._symbols
            for i, vaddr in enumerate(self.entries[:len(names)]):
                sym = symbols.get(vaddr)
                if sym is not None and sym[0]:
                    names[i] = sym[0].decode("utf-8", "replace")
        return names

    @functools.cached_property
    def normalized_names(self) -> list[str]:
        return [normalize_name(n) for n in self.names]

    @functools.cached_property
    def _index_by_name(self) -> dict[str, list[int]]:
        index: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            index.setdefault(name, []).append(i)
        for i, name in enumerate(self.normalized_names):
            if name != self.names[i]:
                index.setdefault(name, []).append(i)
        return index

    def name(self, index: int) -> str:
        """Function `index`'s name, decoding only that one while the whole list is not needed."""
        if self.source == "symtab" or "names" in self.__dict__:
            return self.names[index]
        return self.pclntab.name(index)

    def indices_named(self, name: str) -> list[int]:
        """Indices of functions whose exact or normalized name is `name`."""
        if "_index_by_name" in self.__dict__ or self.source == "symtab" or "[" in name:
            return self._index_by_name.get(name, [])
        # Without decoding all names: the name-table offsets holding `name`, or a
        # string that normalize_name turns into it (no `[` in `name`, so no generics).
        pclntab = self.pclntab
        wanted = set(pclntab.string_offsets(name))
        for part in ("\u00b7", ABI0_SUFFIX, "]"):
            wanted.update(offset for offset, text in pclntab.strings_containing(part)
                          if "[" not in text and normalize_name(text) == name)
        if not wanted:
            return []
        return [i for i, offset in enumerate(pclntab.name_table_offsets) if offset in wanted]

    def size(self, index: int) -> int:
        if self.source == "symtab":
            sym = self._symbols.get(self.entries[index])
            if sym is not None and sym[1]:
                return sym[1]
        return self.entries[index + 1] - self.entries[index]

    def is_asm(self, index: int) -> bool:
        if self.name(index).endswith(ABI0_SUFFIX):
            return True
        pcln = self.pclntab
        pos = pcln.pcln_off + pcln._funcoffs[index] + _FLAG_OFFSET[pcln.go_layout]
        if pos >= len(pcln.data):
            return False
        return bool(pcln.data[pos] & FUNCFLAG_ASM)

    def function(self, index: int) -> GoFunction:
        return GoFunction(index, self.name(index), self.entries[index], self.size(index), self.is_asm(index))

    def function_at(self, vaddr: int) -> GoFunction | None:
        """The function whose code contains `vaddr`."""
        i = bisect_right(self.entries, vaddr, 0, len(self)) - 1
        if i < 0 or vaddr >= self.entries[i + 1]:
            return None
        return self.function(i)


def read_code(elf: ElfImage, fn: GoFunction) -> bytes:
    """The machine code of `fn` (its whole extent, padding included)."""
    return bytes(elf.read_vaddr(fn.entry_vaddr, fn.size))

