"""The Go functions of a binary: names, entry vaddrs, sizes, assembly flag, all from pclntab.

Every function is listed under the name the runtime gives it (pclntab's, the
one tracebacks, pprof and panics print), stripped or not: the table does not
read `.symtab`. Its size is pclntab's extent, from its entry to the next function's
entry (alignment padding included), as Go's debug/gosym reports End - Entry.
Non-Go text symbols of external linking (C code) have no pclntab entry and
are not Go functions.

`.symtab` spells some functions differently: assembly (ABI0) functions and
ABI wrappers with an `.abi0` suffix, generic shapes in full where Go 1.18-1.19's
pclntab writes `[...]`, `.` where pclntab writes `·`. `normalize_name` maps
such spellings onto pclntab's, so that names copied from `go tool nm` still
find their function.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass

from gotrace.binary.elffile import ElfImage
from gotrace.binary.pclntab import FUNCFLAG_ASM, Pclntab

ABI0_SUFFIX = ".abi0"


@dataclass(frozen=True)
class GoFunction:
    index: int            # position in the function table (entry order)
    name: str             # as the runtime writes it (pclntab)
    entry_vaddr: int
    size: int             # bytes up to the next function's entry (padding included)
    is_asm: bool          # pclntab flags it as written in assembly (no Go prologue; may not hold g)


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

    def __len__(self) -> int:
        return self.pclntab.nfunc

    @functools.cached_property
    def names(self) -> list[str]:
        return self.pclntab.names()

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
        if "names" in self.__dict__:
            return self.names[index]
        return self.pclntab.name(index)

    def indices_named(self, name: str) -> list[int]:
        """Indices of functions whose exact or normalized name is `name`."""
        if "_index_by_name" in self.__dict__ or "[" in name:
            return self._index_by_name.get(name, [])
        # Without decoding all names: the name-table offsets holding `name`, or a
        # string that normalize_name turns into it (no `[` in `name`, so no generics).
        pclntab = self.pclntab
        wanted = set(pclntab.string_offsets(name))
        for part in ("\u00b7", "]"):
            wanted.update(offset for offset, text in pclntab.strings_containing(part)
                          if "[" not in text and normalize_name(text) == name)
        if not wanted:
            return []
        return [i for i, offset in enumerate(pclntab.name_table_offsets) if offset in wanted]

    def size(self, index: int) -> int:
        return self.entries[index + 1] - self.entries[index]

    def is_asm(self, index: int) -> bool:
        return bool(self.pclntab.func_flag(index) & FUNCFLAG_ASM)

    def function(self, index: int) -> GoFunction:
        return GoFunction(index, self.name(index), self.entries[index], self.size(index), self.is_asm(index))

    def function_at(self, vaddr: int) -> GoFunction | None:
        """The function whose code contains the ELF vaddr (what a func value in args points to); None outside them."""
        i = bisect_right(self.entries, vaddr, 0, len(self)) - 1
        if i < 0 or vaddr >= self.entries[i + 1]:
            return None
        return self.function(i)


def read_code(elf: ElfImage, fn: GoFunction) -> bytes:
    """The machine code of `fn` (its whole extent, padding included)."""
    return bytes(elf.read_vaddr(fn.entry_vaddr, fn.size))

