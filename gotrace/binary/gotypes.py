"""Go's type model as gotrace needs it: kinds, sizes, alignments, and function signatures.

The model is what the register ABI (gotrace.capture.abi) and value decoding need,
nothing more: a type's kind, size and alignment, its element/key types,
struct fields with offsets, array length. Types are built by
gotrace.binary.dwarfinfo from DWARF, or by hand in tests (the constructors below).
Kind names follow Go's reflect.Kind; the numbers are what Go's DWARF stores
in its DW_AT_go_kind attribute.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

PTR_SIZE = 8


class Kind(enum.IntEnum):
    """reflect.Kind; the value is DW_AT_go_kind."""

    INVALID = 0
    BOOL = 1
    INT = 2
    INT8 = 3
    INT16 = 4
    INT32 = 5
    INT64 = 6
    UINT = 7
    UINT8 = 8
    UINT16 = 9
    UINT32 = 10
    UINT64 = 11
    UINTPTR = 12
    FLOAT32 = 13
    FLOAT64 = 14
    COMPLEX64 = 15
    COMPLEX128 = 16
    ARRAY = 17
    CHAN = 18
    FUNC = 19
    INTERFACE = 20
    MAP = 21
    POINTER = 22
    SLICE = 23
    STRING = 24
    STRUCT = 25
    UNSAFE_POINTER = 26


INTEGER_KINDS = frozenset({
    Kind.INT, Kind.INT8, Kind.INT16, Kind.INT32, Kind.INT64,
    Kind.UINT, Kind.UINT8, Kind.UINT16, Kind.UINT32, Kind.UINT64, Kind.UINTPTR,
})
SIGNED_KINDS = frozenset({Kind.INT, Kind.INT8, Kind.INT16, Kind.INT32, Kind.INT64})
FLOAT_KINDS = frozenset({Kind.FLOAT32, Kind.FLOAT64})
COMPLEX_KINDS = frozenset({Kind.COMPLEX64, Kind.COMPLEX128})
# One pointer word: "The layout of map, chan, and func types is equivalent to *T."
POINTER_SHAPED_KINDS = frozenset({Kind.POINTER, Kind.UNSAFE_POINTER, Kind.MAP, Kind.CHAN, Kind.FUNC})


@dataclass(eq=False)
class Field:
    """A struct field: its name, byte offset in the struct, and type."""

    name: str
    offset: int
    type: GoType
    embedded: bool = False


@dataclass(eq=False)
class GoType:
    """One Go type. Compared by identity: recursive types point back at themselves.

    `elem` is the element type of pointers, slices, arrays, channels and maps
    (the map's value type); `key` is a map's key type; `length` an array's
    length; `fields` a struct's fields. For interfaces, `empty` tells
    `interface{}`/`any` (runtime.eface: type word, data word) from interfaces
    with methods such as `error` (runtime.iface: itab word, data word).
    `elem` of a pointer may be None when the target is unknown (DWARF omits
    some, e.g. unsafe.Pointer). Types read from the binary's runtime type
    data (gotrace.binary.rtypes) know their descriptor's vaddr, and
    interfaces their method names.
    """

    name: str
    kind: Kind
    size: int
    align: int
    elem: GoType | None = None
    key: GoType | None = None
    length: int | None = None
    fields: list[Field] = field(default_factory=list)
    empty: bool | None = None
    methods: tuple[str, ...] | None = None  # an interface's method names, when known
    rtype_vaddr: int | None = None  # ELF vaddr of its runtime type descriptor, when it came from one

    def __repr__(self) -> str:
        return f"GoType({self.name!r}, {self.kind.name}, size={self.size})"

    @property
    def is_error(self) -> bool:
        return self.kind is Kind.INTERFACE and self.name == "error"


@dataclass(frozen=True)
class Param:
    """A receiver, parameter or result, in declaration order.

    Unnamed and blank ones carry Go's synthetic names (`~p0`, `~r0`, `~b0`).
    `hidden` marks values the compiler passes without declaring them, such as
    the dictionary of a generic function's shape instantiation (`.dict`).
    """

    name: str
    type: GoType
    is_result: bool = False
    hidden: bool = False


@dataclass(frozen=True)
class Signature:
    """A function's receiver+parameters and results, in the order the ABI assigns them.

    `go_version` is the compiler that produced it when known (DWARF
    DW_AT_producer), e.g. (1, 21, 13). `complete` is False when DWARF may
    have left values out: Go 1.21 and older omit unnamed/blank parameters,
    and a function with only inlined copies has no DIE listing its unnamed
    results. Then cross-check gotrace.capture.abi.arg_width against pclntab's
    argument size before trusting the layout.
    """

    name: str
    params: tuple[Param, ...]
    results: tuple[Param, ...]
    go_version: tuple[int, int, int] | None = None
    complete: bool = True


# --- constructors for hand-built types (tests, synthetic parameters) -------

_BASIC_SIZES = {
    Kind.BOOL: 1, Kind.INT: 8, Kind.INT8: 1, Kind.INT16: 2, Kind.INT32: 4, Kind.INT64: 8,
    Kind.UINT: 8, Kind.UINT8: 1, Kind.UINT16: 2, Kind.UINT32: 4, Kind.UINT64: 8,
    Kind.UINTPTR: 8, Kind.FLOAT32: 4, Kind.FLOAT64: 8, Kind.COMPLEX64: 8,
    Kind.COMPLEX128: 16, Kind.UNSAFE_POINTER: 8,
}


def basic_align(kind: Kind, size: int) -> int:
    """Alignment of a non-composite kind of the given size (complex: half its size)."""
    if kind in COMPLEX_KINDS:
        return size // 2
    if kind in POINTER_SHAPED_KINDS:
        return PTR_SIZE
    return max(size, 1)


def basic(kind: Kind, name: str | None = None) -> GoType:
    """A boolean, numeric or unsafe.Pointer type."""
    size = _BASIC_SIZES[kind]
    default_name = "unsafe.Pointer" if kind is Kind.UNSAFE_POINTER else kind.name.lower()
    return GoType(name or default_name, kind, size, basic_align(kind, size))


def pointer_to(elem: GoType | None, name: str | None = None) -> GoType:
    return GoType(name or f"*{elem.name if elem else '?'}", Kind.POINTER, PTR_SIZE, PTR_SIZE, elem=elem)


def string_type() -> GoType:
    return GoType("string", Kind.STRING, 2 * PTR_SIZE, PTR_SIZE)


def slice_of(elem: GoType) -> GoType:
    return GoType(f"[]{elem.name}", Kind.SLICE, 3 * PTR_SIZE, PTR_SIZE, elem=elem)


def array_of(elem: GoType, length: int) -> GoType:
    return GoType(f"[{length}]{elem.name}", Kind.ARRAY, elem.size * length, elem.align,
                  elem=elem, length=length)


def interface_type(name: str = "error", empty: bool = False) -> GoType:
    return GoType(name, Kind.INTERFACE, 2 * PTR_SIZE, PTR_SIZE, empty=empty)


def map_of(key: GoType, elem: GoType) -> GoType:
    return GoType(f"map[{key.name}]{elem.name}", Kind.MAP, PTR_SIZE, PTR_SIZE, key=key, elem=elem)


def chan_of(elem: GoType) -> GoType:
    return GoType(f"chan {elem.name}", Kind.CHAN, PTR_SIZE, PTR_SIZE, elem=elem)


def func_type(name: str = "func()") -> GoType:
    return GoType(name, Kind.FUNC, PTR_SIZE, PTR_SIZE)


def struct_of(name: str, members: list[tuple[str, GoType]]) -> GoType:
    """A struct laid out by Go's rules (abi-internal.md "Memory layout")."""
    offset = 0
    align = 1
    fields = []
    for fname, ftype in members:
        offset = align_up(offset, ftype.align)
        fields.append(Field(fname, offset, ftype))
        offset += ftype.size
        align = max(align, ftype.align)
    # A trailing zero-size field after non-zero-size ones gets a padding byte.
    if fields and fields[-1].type.size == 0 and offset > 0:
        offset += 1
    return GoType(name, Kind.STRUCT, align_up(offset, align), align, fields=fields)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align if align > 1 else value
