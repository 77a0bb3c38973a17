"""Go's pclntab: the function table every Go binary keeps, stripped or not.

Header (runtime/symtab.go `pcHeader`): u32 magic, two zero bytes, minLC,
ptrSize, then ptrSize words. Magic 0xfffffffa is Go 1.16-1.17 (no textStart
word, functab pairs of uintptr), 0xfffffff0 is 1.18-1.19 and 0xfffffff1 1.20+
(words nfunc, nfiles, textStart, funcnameOff, cuOff, filetabOff, pctabOff,
pclnOff; functab pairs of u32 entry offset and `_func` offset). From Go 1.26
textStart is written as 0 and the base comes from moduledata's `text` field.

Each function's `_func` record (runtime/runtime2.go) is read here and only
here: `func_record(index)` decodes one, `FuncRecord` names its fields.

Nothing here decodes all names up front: entries are one bulk array, names
are decoded on demand.
"""

from __future__ import annotations

import functools
import struct
from array import array
from dataclasses import dataclass

from gotrace.binary.elffile import ElfImage, Section
from gotrace.errors import BinaryError

MAGIC_GO116 = 0xFFFFFFFA
MAGIC_GO118 = 0xFFFFFFF0
MAGIC_GO120 = 0xFFFFFFF1
KNOWN_MAGICS = (MAGIC_GO116, MAGIC_GO118, MAGIC_GO120)
_MAGIC_BYTES = tuple(struct.pack("<I", m) for m in KNOWN_MAGICS)

# moduledata (runtime/symtab.go) on 64-bit: pcHeader pointer, six slices
# (funcnametab, cutab, filetab, pctab, pclntable, ftab), findfunctab, minpc,
# maxpc, text, etext. Word indices:
MODULEDATA_MINPC_WORD = 20
MODULEDATA_TEXT_WORD = 22
_MODULEDATA_SECTIONS = (".go.module", ".noptrdata", ".data", ".data.rel.ro")

FUNCFLAG_ASM = 4  # abi.FuncFlagAsm: written in assembly


@dataclass(frozen=True)
class FuncRecord:
    """The leading fields of one `_func` record, as the runtime reads them.

    `entry_off` is the entry's offset from textStart (Go 1.18+) or its absolute
    address (1.16-1.17 layout); `name_off` indexes the function name table;
    `args` is the size in bytes of the argument area; `func_id` marks the
    runtime's special functions (abi.FuncID) and `flag` holds abi.FuncFlag bits.
    """

    entry_off: int
    name_off: int
    args: int
    deferreturn: int
    pcsp: int
    pcfile: int
    pcln: int
    npcdata: int
    cu_offset: int
    start_line: int | None   # Go 1.20+
    func_id: int
    flag: int

    @property
    def is_asm(self) -> bool:
        return bool(self.flag & FUNCFLAG_ASM)


# `_func` up to its flag byte, per layout: entry (uintptr before 1.18, u32
# offset after), nameOff, args, deferreturn, pcsp, pcfile, pcln, npcdata,
# cuOffset, startLine (1.20+), funcID, flag.
_FUNC_STRUCT = {
    "1.16": struct.Struct("<QiiIIIIIIBB"),
    "1.18": struct.Struct("<IiiIIIIIIBB"),
    "1.20": struct.Struct("<IiiIIIIIIiBB"),
}
_NAME_OFF_AT = {layout: 8 if layout == "1.16" else 4 for layout in _FUNC_STRUCT}
_FLAG_AT = {layout: fmt.size - 1 for layout, fmt in _FUNC_STRUCT.items()}


def _valid_header(blob: bytes | memoryview, pos: int) -> bool:
    if pos + 8 + 8 * 8 > len(blob):
        return False
    magic, pad1, pad2, min_lc, ptr_size = struct.unpack_from("<IBBBB", blob, pos)
    return magic in KNOWN_MAGICS and pad1 == 0 and pad2 == 0 and min_lc in (1, 2, 4) and ptr_size == 8


def iter_moduledata(elf: ElfImage, pclntab_vaddr: int):
    """vaddrs of the `moduledata` structs of this pcHeader: 8-aligned words that
    point at it and whose `minpc` and `text` fields agree (and are not zero)."""
    want = struct.pack("<Q", pclntab_vaddr)
    for name in _MODULEDATA_SECTIONS:
        section = elf.get_section(name)
        if section is None or not section.size or section.type == 8:
            continue
        blob = bytes(elf.section_bytes(section))
        pos = blob.find(want)
        while pos >= 0:
            if pos % 8 == 0 and pos + 8 * (MODULEDATA_TEXT_WORD + 1) <= len(blob):
                base = section.vaddr + pos
                try:
                    text = elf.read_pointer(base + 8 * MODULEDATA_TEXT_WORD)
                    minpc = elf.read_pointer(base + 8 * MODULEDATA_MINPC_WORD)
                except BinaryError:  # a section outside the loaded segments: not moduledata
                    text = minpc = 0
                if text and text == minpc:
                    yield base
            pos = blob.find(want, pos + 1)


class Pclntab:
    """The parsed pclntab of one binary: bulk entry array, names on demand."""

    def __init__(self, elf: ElfImage, vaddr: int, data: memoryview):
        self.elf = elf
        self.vaddr = vaddr          # vaddr of the pcHeader
        self.data = data            # bytes from the pcHeader to the end of its section
        magic, _, _, self.min_lc, self.ptr_size = struct.unpack_from("<IBBBB", data, 0)
        self.magic = magic
        try:
            self._parse_header()
        except (struct.error, ValueError, OverflowError):
            raise BinaryError(f"{elf.path}: corrupt or truncated Go function table (pclntab)") from None

    # -- locating -------------------------------------------------------------

    @classmethod
    def find(cls, elf: ElfImage) -> "Pclntab":
        for name in (".gopclntab", ".data.rel.ro.gopclntab"):
            section = elf.get_section(name)
            if section is not None and section.size:
                data = elf.section_bytes(section)
                if _valid_header(data, 0):
                    return cls(elf, section.vaddr, data)
        # External PIE up to Go 1.25: no section of its own; it sits in .data.rel.ro.
        candidates: list[Section] = [s for s in elf.sections if s.name == ".data.rel.ro"]
        candidates += [s for s in elf.sections if s.vaddr and s.size and s.name != ".data.rel.ro"
                       and s.type != 8 and not s.name.startswith((".debug", ".zdebug", ".text"))]
        for section in candidates:
            data = elf.section_bytes(section)
            found = cls._search(data)
            if found is not None:
                return cls(elf, section.vaddr + found, data[found:])
        raise BinaryError(f"{elf.path}: no Go function table (pclntab) found; is this a Go binary?")

    @staticmethod
    def _search(data: memoryview) -> int | None:
        blob = bytes(data)
        for magic in _MAGIC_BYTES:
            pos = blob.find(magic)
            while pos >= 0:
                if pos % 8 == 0 and _valid_header(blob, pos):
                    return pos
                pos = blob.find(magic, pos + 1)
        return None

    # -- header ----------------------------------------------------------------

    def _word(self, index: int) -> int:
        return struct.unpack_from("<Q", self.data, 8 + 8 * index)[0]

    def _parse_header(self) -> None:
        if self.magic == MAGIC_GO116:
            self.go_layout = "1.16"
            self.nfunc = self._word(0)
            self.funcname_off = self._word(2)
            self._funcname_end = self._word(3)  # cuOffset: the name table ends where the CU table starts
            self.pcln_off = self._word(6)
            self.text_start = 0  # entries are absolute pointers in this layout
            functab = self.data[self.pcln_off:self.pcln_off + (self.nfunc + 1) * 16]
            if len(functab) != (self.nfunc + 1) * 16:
                raise ValueError("functab truncated")
            pairs = array("Q")
            pairs.frombytes(functab)
            self._entries = pairs[0::2]
            self._funcoffs = pairs[1::2]
        else:
            self.go_layout = "1.18" if self.magic == MAGIC_GO118 else "1.20"
            self.nfunc = self._word(0)
            self.text_start = self._word(2)
            self.funcname_off = self._word(3)
            self._funcname_end = self._word(4)
            self.pcln_off = self._word(7)
            functab = self.data[self.pcln_off:self.pcln_off + (self.nfunc + 1) * 8]
            if len(functab) != (self.nfunc + 1) * 8:
                raise ValueError("functab truncated")
            pairs = array("I")
            pairs.frombytes(functab)
            if self.text_start == 0:
                self.text_start = self._text_from_moduledata()
            base = self.text_start
            self._entries = array("Q", (base + off for off in pairs[0::2]))
            self._funcoffs = pairs[1::2]
        if self.nfunc == 0 or self.funcname_off >= len(self.data):
            raise ValueError("empty or inconsistent function table")
        if not self.funcname_off < self._funcname_end <= len(self.data):
            self._funcname_end = len(self.data)

    def _text_from_moduledata(self) -> int:
        """textStart is 0 from Go 1.26: take `moduledata.text` (whose first word
        points at this pcHeader), else the `runtime.text` symbol."""
        for base in iter_moduledata(self.elf, self.vaddr):
            return self.elf.read_pointer(base + 8 * MODULEDATA_TEXT_WORD)
        text = self.elf.symbol_vaddr("runtime.text")
        if text:
            return text
        raise BinaryError(f"{self.elf.path}: cannot find the text base of the Go function table (moduledata missing)")

    # -- functions ---------------------------------------------------------------

    @property
    def entries(self) -> array:
        """Entry vaddrs of the nfunc functions, ascending, followed by the end of text."""
        return self._entries

    def _record_pos(self, index: int) -> int:
        """Offset of function `index`'s `_func` record in the pclntab data."""
        if not 0 <= index < self.nfunc:
            raise IndexError(index)
        return self.pcln_off + self._funcoffs[index]

    def func_record(self, index: int) -> FuncRecord:
        """The `_func` record of function `index`; BinaryError when it lies outside the table."""
        layout = self.go_layout
        try:
            fields = list(_FUNC_STRUCT[layout].unpack_from(self.data, self._record_pos(index)))
        except struct.error:
            raise BinaryError(f"{self.elf.path}: corrupt or truncated Go function table (pclntab)") from None
        if layout != "1.20":
            fields.insert(9, None)  # no startLine before Go 1.20
        return FuncRecord(*fields)

    def func_tables_pos(self, index: int) -> tuple[int, int]:
        """(nfuncdata, offset in the pclntab data of the pcdata table offsets) of function `index`'s record.

        After `flag` the record has one unused byte and nfuncdata (u8), then npcdata u32 pcdata table
        offsets, then nfuncdata funcdata (u32 offsets from moduledata.gofunc; pointers, 8-aligned, before
        Go 1.18)."""
        pos = self._record_pos(index) + _FLAG_AT[self.go_layout]
        return self.data[pos + 2], pos + 3

    def func_flag(self, index: int) -> int:
        """The `flag` byte of function `index`'s record (0 when the record is cut short)."""
        pos = self._record_pos(index) + _FLAG_AT[self.go_layout]
        return self.data[pos] if pos < len(self.data) else 0

    def name_offset(self, index: int) -> int:
        """Offset of function `index`'s name in the pclntab data."""
        pos = self._record_pos(index) + _NAME_OFF_AT[self.go_layout]
        (name_off,) = struct.unpack_from("<i", self.data, pos)
        return self.funcname_off + name_off

    def name(self, index: int) -> str:
        try:
            start = self.name_offset(index) - self.funcname_off
        except struct.error:
            raise BinaryError(f"{self.elf.path}: corrupt or truncated Go function table (pclntab)") from None
        end = self._names_blob.find(b"\0", start)
        if start < 0 or end < 0:
            raise BinaryError(f"{self.elf.path}: corrupt function name in the Go function table")
        return self._names_blob[start:end].decode("utf-8", "replace")

    def names(self) -> list[str]:
        """All nfunc names, in entry order (one bulk pass)."""
        try:
            blob = self._names_blob
            find = blob.find
            data = self.data
            base = self.pcln_off + _NAME_OFF_AT[self.go_layout]
            unpack = struct.Struct("<i").unpack_from
            out = []
            for funcoff in self._funcoffs[:self.nfunc]:
                start = unpack(data, base + funcoff)[0]
                out.append(blob[start:find(b"\0", start)].decode("utf-8", "replace"))
            return out
        except struct.error:
            raise BinaryError(f"{self.elf.path}: corrupt or truncated Go function table (pclntab)") from None

    @functools.cached_property
    def _names_blob(self) -> bytes:
        """The function name table (funcnametab) alone: names are offsets into it."""
        return bytes(self.data[self.funcname_off:self._funcname_end])

    @functools.cached_property
    def name_table_offsets(self) -> array:
        """Each function's name as an offset into the name table, in entry order, without decoding names."""
        try:
            base = self.pcln_off + _NAME_OFF_AT[self.go_layout]
            unpack = struct.Struct("<i").unpack_from
            data = self.data
            return array("q", (unpack(data, base + funcoff)[0] for funcoff in self._funcoffs[:self.nfunc]))
        except struct.error:
            raise BinaryError(f"{self.elf.path}: corrupt or truncated Go function table (pclntab)") from None

    def string_offsets(self, name: str) -> list[int]:
        """Name-table offsets at which `name` is stored as a whole string."""
        blob, want = self._names_blob, name.encode()
        found = [0] if blob.startswith(want + b"\0") else []
        needle = b"\0" + want + b"\0"
        pos = blob.find(needle)
        while pos >= 0:
            found.append(pos + 1)
            pos = blob.find(needle, pos + 1)
        return found

    def strings_containing(self, part: str) -> list[tuple[int, str]]:
        """(name-table offset, string) of every whole string that contains `part`."""
        blob, want = self._names_blob, part.encode()
        out = []
        pos = blob.find(want)
        while pos >= 0:
            start = blob.rfind(b"\0", 0, pos) + 1
            end = blob.find(b"\0", pos)
            end = len(blob) if end < 0 else end
            out.append((start, blob[start:end].decode("utf-8", "replace")))
            pos = blob.find(want, end)
        return out

    def has_name_string(self, name: str) -> bool:
        """True when `name` appears as a whole string among pclntab's names: the
        inline trees name functions that were inlined and have no entry of their own."""
        return bool(self.string_offsets(name))
