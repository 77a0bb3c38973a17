"""Program counters to Go source positions (function, file, line), with the inlined calls at each pc, from pclntab alone.

Everything here comes from `.gopclntab`, which stripped binaries keep, and
follows what Go's runtime does for `runtime.CallersFrames` (facts from
runtime/symtab.go, symtabinl.go and runtime2.go):

* A function's `_func` record holds offsets into the pc-value tables
  (`pctab`): `pcfile` (a file number per pc), `pcln` (a line per pc), then
  `npcdata` more table offsets and `nfuncdata` funcdata offsets; it is read
  by gotrace.binary.pclntab (`func_record`, `func_tables_pos`), in all its
  layouts.
* A pc-value table is a list of (value delta, pc delta) pairs of varints,
  the value delta zig-zag encoded, starting from value -1 at the function's
  entry; a pair gives the value for [pc, pc + delta * minLC). A zero value
  delta after the first pair ends the table; table offset 0 means no table.
* File number N of a function is `cutab[cuOffset + N]`, an offset into
  `filetab` where the name is a NUL-terminated string.
* Inlining: pcdata table 2 (PCDATA_InlTreeIndex) gives, per pc, an index into
  the function's inline tree (funcdata 3, FUNCDATA_InlTree), or -1 outside
  inlined code. Each tree entry names the inlined function and gives
  `parentPc`, the offset from entry of an instruction whose position is the
  call site; its own inline index leads to the next caller. The file and line
  of each frame are pcfile/pcln at that frame's pc. Entries are 20 bytes
  before Go 1.20 (parent, funcID, file, line, name offset, parentPc) and 16
  from 1.20 (funcID, name offset, parentPc, startLine).
* Funcdata offsets (1.18+) count from `moduledata.gofunc`, whose word index
  in moduledata depends on the Go version; ^0 means none. In the 1.16 layout
  funcdata are pointers.

A return address names the instruction after a call: look up `ra - 1` (what
CallersFrames does), as `frames_at_return()` does. Function names are
written as the runtime prints them: the type arguments of a generic
instantiation, which pclntab spells out from Go 1.20 (`F[go.shape.int]`),
become `[...]`.
"""

from __future__ import annotations

import functools
import struct
from bisect import bisect_right
from dataclasses import dataclass

from gotrace.binary.elffile import ElfImage
from gotrace.binary.encoding import read_uvarint
from gotrace.binary.pclntab import FuncRecord, Pclntab, iter_moduledata
from gotrace.errors import BinaryError

PCDATA_INLTREE_INDEX = 2
FUNCDATA_INLTREE = 3
NO_FUNCDATA = 0xFFFFFFFF
MAX_INLINE_DEPTH = 64  # a corrupt tree cannot loop forever
_CACHE_SIZE = 4096  # decoded tables kept per symbolizer

# pcHeader word indices of cuOffset, filetabOffset, pctabOffset (after the 8-byte magic/flags).
_HEADER_WORDS = {"1.16": (3, 4, 5), "1.18": (4, 5, 6), "1.20": (4, 5, 6)}
# Inline tree entry: size, offset of the name offset, offset of parentPc.
_INLINE_ENTRY = {"1.16": (20, 12, 16), "1.18": (20, 12, 16), "1.20": (16, 4, 8)}
# moduledata word index of `gofunc`: 1.18-1.19; 1.20-1.26 (covctrs, ecovctrs added); 1.27+ (typedesclen,
# itaboffset, itabsize added). `rodata` is the word before it.
_GOFUNC_WORD = ((1, 27), 43), ((1, 20), 40), ((1, 18), 38)


@dataclass(frozen=True)
class SourceFrame:
    """One frame of a symbolized pc: a Go function and the position of the pc (or call) in it."""

    function: str
    file: str | None  # None when pclntab has no file for the pc
    line: int | None
    inlined: bool  # a call the compiler inlined: no frame of its own on the stack


def name_for_print(name: str) -> str:
    """A pclntab function name as Go's runtime prints it: each bracketed type-argument list is `[...]`."""
    if "[" not in name:
        return name
    out, depth = [], 0
    for ch in name:
        if ch == "[":
            if depth == 0:
                out.append("[...]")
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


class Symbolizer:
    """Symbolizes ELF vaddrs of one Go binary from its pclntab."""

    def __init__(self, elf: ElfImage, pclntab: Pclntab, version: tuple[int, ...] | None = None):
        self.elf = elf
        self.pclntab = pclntab
        self.version = version  # (major, minor[, patch]) from the build info; picks moduledata's layout
        self.layout = pclntab.go_layout
        cu_word, filetab_word, pctab_word = _HEADER_WORDS[self.layout]
        data = pclntab.data
        word = struct.Struct("<Q").unpack_from
        self._cutab_off = word(data, 8 + 8 * cu_word)[0]
        self._filetab_off = word(data, 8 + 8 * filetab_word)[0]
        self._pctab_off = word(data, 8 + 8 * pctab_word)[0]
        self._quantum = pclntab.min_lc
        self._tables: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._files: dict[tuple[int, int], str | None] = {}

    # -- the function holding a pc ------------------------------------------------

    def function_index(self, pc_vaddr: int) -> int | None:
        """Index (entry order) of the function whose code holds pc_vaddr, or None."""
        entries = self.pclntab.entries
        i = bisect_right(entries, pc_vaddr, 0, self.pclntab.nfunc) - 1
        if i < 0 or pc_vaddr >= entries[i + 1]:
            return None
        return i

    def _u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.pclntab.data, pos)[0]

    # -- pc-value tables -------------------------------------------------------------

    def _table(self, table_off: int, entry_vaddr: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A decoded pc-value table: (end pcs, values); values[i] holds for pcs below ends[i] (and from the
        previous end)."""
        key = (table_off, entry_vaddr)
        cached = self._tables.get(key)
        if cached is None:
            if len(self._tables) >= _CACHE_SIZE:
                self._tables.clear()
            cached = self._tables[key] = self._decode_table(table_off, entry_vaddr)
        return cached

    def _decode_table(self, table_off: int, entry_vaddr: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        data = self.pclntab.data
        pos = self._pctab_off + table_off
        pc, value = entry_vaddr, -1
        ends: list[int] = []
        values: list[int] = []
        while len(ends) < 1_000_000:
            if data[pos] == 0 and pc != entry_vaddr:
                break
            delta, pos = read_uvarint(data, pos)
            delta &= 0xFFFFFFFF  # a uint32, as the runtime reads it
            value += -(delta >> 1) - 1 if delta & 1 else delta >> 1
            pc_delta, pos = read_uvarint(data, pos)
            pc += pc_delta * self._quantum
            ends.append(pc)
            values.append(value)
        return tuple(ends), tuple(values)

    def _value(self, table_off: int, entry_vaddr: int, pc_vaddr: int) -> int:
        """The value a pc-value table gives pc_vaddr, -1 when there is none (as runtime.pcvalue)."""
        if table_off == 0:
            return -1
        try:
            ends, values = self._table(table_off, entry_vaddr)
        except (IndexError, ValueError):
            return -1
        i = bisect_right(ends, pc_vaddr)
        return values[i] if i < len(values) else -1

    # -- files, lines, names -------------------------------------------------------------

    def _file(self, cu_offset: int, fileno: int) -> str | None:
        key = (cu_offset, fileno)
        if key not in self._files:
            self._files[key] = self._read_file(cu_offset, fileno)
        return self._files[key]

    def _read_file(self, cu_offset: int, fileno: int) -> str | None:
        data = self.pclntab.data
        try:
            offset = self._u32(self._cutab_off + 4 * (cu_offset + fileno))
        except struct.error:
            return None
        if offset == NO_FUNCDATA:
            return None
        start = self._filetab_off + offset
        end = bytes(data[start:start + 4096]).find(b"\0")
        if start >= len(data) or end < 0:
            return None
        return bytes(data[start:start + end]).decode("utf-8", "replace")

    def _file_line(self, record: FuncRecord, entry_vaddr: int, pc_vaddr: int) -> tuple[str | None, int | None]:
        fileno = self._value(record.pcfile, entry_vaddr, pc_vaddr)
        line = self._value(record.pcln, entry_vaddr, pc_vaddr)
        if fileno < 0 or line < 0:
            return None, None
        return self._file(record.cu_offset, fileno), line

    def _name_at(self, name_off: int) -> str | None:
        """The function name at an offset into the name table (funcnametab)."""
        data = self.pclntab.data
        start = self.pclntab.funcname_off + name_off
        if name_off < 0 or start >= len(data):
            return None
        end = bytes(data[start:start + 4096]).find(b"\0")
        return None if end < 0 else bytes(data[start:start + end]).decode("utf-8", "replace")

    # -- the inline tree -------------------------------------------------------------------

    @functools.cached_property
    def gofunc_vaddr(self) -> int | None:
        """vaddr of `go:func.*` (what 1.18+ funcdata offsets count from), or None when it cannot be found."""
        for name in ("go:func.*", "go.func.*"):
            vaddr = self.elf.symbol_vaddr(name)
            if vaddr:
                return vaddr
        word = self._gofunc_word()
        if word is None:
            return None
        for base in iter_moduledata(self.elf, self.pclntab.vaddr):
            try:
                rodata = self.elf.read_pointer(base + 8 * (word - 1))
                gofunc = self.elf.read_pointer(base + 8 * word)
            except BinaryError:
                continue
            if rodata and rodata <= gofunc and self._loaded(gofunc):
                return gofunc
        return None

    def _gofunc_word(self) -> int | None:
        if self.layout == "1.18":
            return 38
        if self.version is None:
            return None
        for since, word in _GOFUNC_WORD:
            if tuple(self.version[:2]) >= since:
                return word
        return None

    def _loaded(self, vaddr: int) -> bool:
        try:
            self.elf.vaddr_to_file_offset(vaddr)
            return True
        except BinaryError:
            return False

    def _inline_tree_vaddr(self, index: int) -> int | None:
        nfuncdata, pcdata = self.pclntab.func_tables_pos(index)
        if FUNCDATA_INLTREE >= nfuncdata:
            return None
        funcdata = pcdata + 4 * self.pclntab.func_record(index).npcdata
        if self.layout == "1.16":  # pointers, aligned to 8 after pcdata
            funcdata = (funcdata + 7) & ~7
            pointer = struct.unpack_from("<Q", self.pclntab.data, funcdata + 8 * FUNCDATA_INLTREE)[0]
            if pointer == 0:
                # a PIE leaves it 0 on disk: the relocation holds it
                pointer = self.elf.read_pointer(self.pclntab.vaddr + funcdata + 8 * FUNCDATA_INLTREE)
            return pointer or None
        offset = self._u32(funcdata + 4 * FUNCDATA_INLTREE)
        if offset == NO_FUNCDATA or self.gofunc_vaddr is None:
            return None
        return self.gofunc_vaddr + offset

    def _inline_index(self, index: int, record: FuncRecord, entry_vaddr: int, pc_vaddr: int) -> int:
        if PCDATA_INLTREE_INDEX >= record.npcdata:
            return -1
        _, pcdata = self.pclntab.func_tables_pos(index)
        table = self._u32(pcdata + 4 * PCDATA_INLTREE_INDEX)
        return self._value(table, entry_vaddr, pc_vaddr)

    # -- frames ---------------------------------------------------------------------------------

    def frames(self, pc_vaddr: int) -> list[SourceFrame]:
        """The frames at a "call pc" (an instruction's own address), innermost first: the inlined calls it is
        in, then the physical function. Empty when no Go function holds pc_vaddr."""
        index = self.function_index(pc_vaddr)
        if index is None:
            return []
        try:
            return self._frames(index, pc_vaddr)
        except (struct.error, IndexError, ValueError, BinaryError):
            return [SourceFrame(name_for_print(self.pclntab.name(index)), None, None, False)]

    def _frames(self, index: int, pc_vaddr: int) -> list[SourceFrame]:
        entry = self.pclntab.entries[index]
        record = self.pclntab.func_record(index)
        name = self.pclntab.name(index)
        out: list[SourceFrame] = []
        ix = self._inline_index(index, record, entry, pc_vaddr)
        tree = self._inline_tree_vaddr(index) if ix >= 0 else None
        size, name_field, parent_field = _INLINE_ENTRY[self.layout]
        pc = pc_vaddr
        while ix >= 0 and tree is not None and len(out) < MAX_INLINE_DEPTH:
            entry_bytes = self.elf.read_vaddr(tree + ix * size, size)
            (name_off,) = struct.unpack_from("<i", entry_bytes, name_field)
            (parent_pc,) = struct.unpack_from("<i", entry_bytes, parent_field)
            callee = self._name_at(name_off)
            if callee is None or not 0 <= parent_pc < self.pclntab.entries[index + 1] - entry:
                break  # not a tree entry: stop at the physical function
            file, line = self._file_line(record, entry, pc)
            out.append(SourceFrame(name_for_print(callee), file, line, True))
            pc = entry + parent_pc
            ix = self._inline_index(index, record, entry, pc)
        file, line = self._file_line(record, entry, pc)
        out.append(SourceFrame(name_for_print(name), file, line, False))
        return out

    def frames_at_return(self, return_vaddr: int) -> list[SourceFrame]:
        """The frames of a return address (the instruction after a call): those of the call instruction,
        as CallersFrames finds them (the function holding the address; one byte back unless at its entry)."""
        index = self.function_index(return_vaddr)
        if index is not None and return_vaddr > self.pclntab.entries[index]:
            return self.frames(return_vaddr - 1)
        return self.frames(return_vaddr)

    def function_name(self, pc_vaddr: int) -> str | None:
        """The physical function holding pc_vaddr, as Go's runtime prints it."""
        index = self.function_index(pc_vaddr)
        return None if index is None else name_for_print(self.pclntab.name(index))
