"""Lazy reading of a Go binary's DWARF: struct member offsets and function signatures.

Go emits one compile unit (CU) per package (more than one when a package
has assembly), named by import path, and puts every type DIE at the end of
one `runtime` CU. Parsing all of a big binary's DWARF takes seconds, so
nothing is parsed at open; the first query reads CU headers and names (cheap)
and then only the DIEs of the CUs it needs, once each. Compressed debug
sections (SHF_COMPRESSED, `.zdebug_*`) and DWARF 4 and 5 are handled by
pyelftools.
"""

from __future__ import annotations

import os
import re
import zlib
from typing import BinaryIO

from elftools.common.exceptions import DWARFError, ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from gotrace.errors import BinaryError
from gotrace.binary.gotypes import (
    PTR_SIZE, Field, GoType, Kind, Param, Signature, basic_align,
)

# Go's DWARF extensions (cmd/internal/dwarf).
DW_AT_go_kind = 0x2900
DW_AT_go_key = 0x2901
DW_AT_go_elem = 0x2902
DW_AT_go_embedded_field = 0x2903

# Go 1.21 and older leave unnamed and blank input parameters out of DWARF;
# Go 1.22 names them ~p0, ~p1, ... (checked with 1.19, 1.21, 1.22-1.27).
FIRST_GO_WITH_ALL_PARAMS = (1, 22)

# Section headers with absurd offsets or sizes make pyelftools seek to a negative
# position (OSError EINVAL) or ask for more bytes than fit (OverflowError, MemoryError).
_DAMAGED = (DWARFError, ELFError, ConstructError, zlib.error, ValueError, KeyError, IndexError,
            AssertionError, OverflowError, MemoryError, OSError)


def _damaged(exc: Exception) -> BinaryError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return BinaryError(f"the binary's DWARF debug info is damaged ({detail}); "
                       "rebuild it, or strip its DWARF with -ldflags=-w so gotrace does not read it")


_PRODUCER_VERSION = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")
_TYPE_TAGS = frozenset({
    "DW_TAG_base_type", "DW_TAG_structure_type", "DW_TAG_typedef", "DW_TAG_pointer_type",
    "DW_TAG_array_type", "DW_TAG_subroutine_type", "DW_TAG_unspecified_type",
})


def package_of(func_name: str) -> str:
    """The import path of a Go function symbol name: `net/http.(*Server).Serve` -> `net/http`.

    Names of generic instantiations carry type arguments in brackets that may
    contain dots and slashes themselves; they are ignored.
    """
    head = func_name.split("[", 1)[0]
    slash = head.rfind("/")
    dot = head.find(".", slash + 1)
    return head[:dot] if dot >= 0 else head


_CLOSURE_PART = re.compile(r"^(func\d+|gowrap\d+|deferwrap\d+|\d+)$")


def takes_dictionary(func_name: str) -> bool:
    """True for a shape instantiation of a generic function or method, which gets
    a dictionary pointer as its first argument: `pkg.F[go.shape.int]`,
    `pkg.(*T[go.shape.int]).M`. Closures inside them (`...].func1`) and
    generated helpers (`type:.eq.T[...]`) do not.
    """
    if func_name.startswith("type:") or "[" not in func_name:
        return False
    end = func_name.rfind("]")
    if end < 0:
        return False
    if "[go.shape." not in func_name and "[...]" not in func_name:
        return False
    rest = func_name[end + 1:].lstrip(")")
    if rest == "":
        # pkg.F[...]: the brackets close the function name itself
        return True
    parts = rest.lstrip(".").split(".")
    # pkg.(*T[...]).M or pkg.T[...].M: a method; anything deeper is a closure
    return len(parts) == 1 and not _CLOSURE_PART.match(parts[0])


class DwarfInfo:
    """The DWARF of one ELF file, read on demand. Use `DwarfInfo.open`."""

    def __init__(self, elf: ELFFile, file: BinaryIO, owns_file: bool):
        self._elf = elf
        self._file = file
        self._owns_file = owns_file
        self._dwarf = None
        self._units_by_name: dict[str, list] | None = None
        self._indexed_units: set[int] = set()
        # name -> .debug_info offsets of the named top-level DIEs of indexed CUs
        self._top_level: dict[str, list[int]] = {}
        # abstract subprogram offset -> its out-of-line (concrete) instance
        self._concrete: dict[int, int] = {}
        self._types: dict[int, GoType] = {}
        self._producer: str | None = None

    # --- opening ----------------------------------------------------------

    @classmethod
    def open(cls, path_or_file: str | os.PathLike | BinaryIO) -> DwarfInfo | None:
        """Open an ELF file's DWARF; None when it has none (built with `-ldflags=-w` or stripped).

        Takes a path, or a binary file object that stays open and owned by
        the caller. Raises BinaryError when the file is not a readable ELF.
        """
        if isinstance(path_or_file, (str, os.PathLike)):
            try:
                file = open(path_or_file, "rb")
            except OSError as exc:
                raise BinaryError(f"cannot open {os.fspath(path_or_file)}: {exc.strerror}; "
                                  "check the path and permissions") from exc
            owns_file = True
        else:
            file, owns_file = path_or_file, False
        try:
            elf = ELFFile(file)
            has_dwarf = (elf.get_section_by_name(".debug_info") is not None
                         or elf.get_section_by_name(".zdebug_info") is not None)
        except (ELFError, OSError, ValueError) as exc:
            if owns_file:
                file.close()
            raise BinaryError(f"cannot read ELF sections ({exc}); is this a Go executable?") from exc
        if not has_dwarf:
            if owns_file:
                file.close()
            return None
        return cls(elf, file, owns_file)

    def close(self) -> None:
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> DwarfInfo:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- public queries ---------------------------------------------------

    @property
    def producer(self) -> str | None:
        """DW_AT_producer of the first CU, e.g. 'Go cmd/compile go1.25.5; regabi'."""
        self._ensure_units()
        return self._producer

    @property
    def go_version(self) -> tuple[int, int, int] | None:
        """The compiler version from DW_AT_producer, e.g. (1, 25, 5); None if not stated."""
        match = _PRODUCER_VERSION.search(self.producer or "")
        if not match:
            return None
        return int(match[1]), int(match[2]), int(match[3] or 0)

    def struct_member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of `member` in struct `struct_name`, e.g. ("runtime.g", "goid") -> 152.

        `member` may be a dotted path through nested struct members:
        ("runtime.g", "stack.hi") -> 8. None when the struct or member is absent.
        """
        gotype = self.find_type(struct_name)
        offset = 0
        for part in member.split("."):
            if gotype is None or gotype.kind is not Kind.STRUCT:
                return None
            found = next((f for f in gotype.fields if f.name == part), None)
            if found is None:
                return None
            offset += found.offset
            gotype = found.type
        return offset

    def find_type(self, name: str) -> GoType | None:
        """The type named `name` exactly as Go's DWARF names it ('runtime.g', '[]uint8')."""
        self._ensure_units()
        try:
            for cu in self._type_unit_candidates():
                self._index_unit(cu)
                offsets = self._top_level_types(name)
                if offsets:
                    return self._type_at(offsets[0])
        except _DAMAGED as exc:
            raise _damaged(exc) from exc
        return None

    def function_signature(self, func_name: str) -> Signature | None:
        """Receiver, parameters and results of `func_name` (Go's symbol name), or None if absent.

        Shape instantiations of generic functions (`pkg.F[go.shape.int]`) get
        the hidden dictionary pointer the compiler passes first (`.dict`),
        which DWARF lists only from Go 1.27; it is marked `hidden`.
        """
        try:
            return self._signature(func_name)
        except _DAMAGED as exc:
            raise _damaged(exc) from exc

    def _signature(self, func_name: str) -> Signature | None:
        die = self.subprogram_die(func_name)
        if die is None or self._is_assembly(die):
            return None
        # An abstract DIE (left when every copy was inlined) omits unnamed results.
        complete = not _attr(die, "DW_AT_inline")
        params: list[Param] = []
        results: list[Param] = []
        seen: set[str] = set()
        for child in die.iter_children():
            if child.tag != "DW_TAG_formal_parameter":
                continue
            if "DW_AT_abstract_origin" in child.attributes:
                child = child.get_DIE_from_attribute("DW_AT_abstract_origin")
            name = _name(child) or ""
            if name in seen:  # the compiler sometimes lists a result twice (seen with ~r0)
                continue
            seen.add(name)
            gotype = self._type_of(child)
            is_result = bool(_attr(child, "DW_AT_variable_parameter"))
            (results if is_result else params).append(Param(name, gotype, is_result, hidden=name == ".dict"))
        has_dict = any(p.name == ".dict" for p in params)  # Go 1.27 lists it; older ones do not
        if not has_dict and takes_dictionary(func_name):
            dict_type = GoType("uintptr", Kind.UINTPTR, PTR_SIZE, PTR_SIZE)
            params.insert(0, Param(".dict", dict_type, hidden=True))
        version = self._unit_version(die.cu) or self.go_version
        if version is not None and version[:2] < FIRST_GO_WITH_ALL_PARAMS:
            complete = False
        return Signature(func_name, tuple(params), tuple(results), version, complete)

    def subprogram_die(self, func_name: str):
        """The pyelftools DIE of `func_name`'s code, or None if DWARF does not have the function.

        For a function that is also inlined somewhere, DWARF has an abstract
        DIE (names and types, DW_AT_inline) and an out-of-line instance
        pointing at it (code range, locations): the instance is returned,
        the abstract DIE only when there is no instance.
        """
        die = self._find_subprogram(func_name)
        if die is not None and _attr(die, "DW_AT_inline"):
            concrete = self._concrete.get(die.offset)
            if concrete is not None:
                return self._die_at(concrete)
        return die

    def iter_unit_names(self):
        """Names of all compile units (package import paths), with repeats for split packages."""
        self._ensure_units()
        for name, units in self._units_by_name.items():
            for _ in units:
                yield name

    # --- CU discovery and indexing ---------------------------------------

    def _ensure_units(self) -> None:
        if self._units_by_name is not None:
            return
        try:
            self._dwarf = self._elf.get_dwarf_info(relocate_dwarf_sections=False)
            units: dict[str, list] = {}
            for cu in self._dwarf.iter_CUs():
                top = cu.get_top_DIE()
                if self._producer is None:
                    producer = _attr(top, "DW_AT_producer")
                    if producer is not None:
                        self._producer = _text(producer)
                units.setdefault(_name(top) or "", []).append(cu)
        except _DAMAGED as exc:
            raise _damaged(exc) from exc
        self._units_by_name = units

    def _type_unit_candidates(self):
        """CUs that may hold type DIEs: `runtime` ones first, biggest first; then all others."""
        runtime_units = sorted(self._units_by_name.get("runtime", []), key=lambda cu: -cu.size)
        yield from runtime_units
        for name, units in self._units_by_name.items():
            if name != "runtime":
                yield from units

    def _index_unit(self, cu) -> None:
        if cu.cu_offset in self._indexed_units:
            return
        self._indexed_units.add(cu.cu_offset)
        try:
            for die in cu.get_top_DIE().iter_children():
                name = _name(die)
                if name is not None:
                    self._top_level.setdefault(name, []).append(die.offset)
                elif die.tag == "DW_TAG_subprogram" and "DW_AT_abstract_origin" in die.attributes:
                    origin = die.get_DIE_from_attribute("DW_AT_abstract_origin")
                    self._concrete[origin.offset] = die.offset
        except _DAMAGED as exc:
            raise _damaged(exc) from exc

    def _die_at(self, offset: int):
        return self._dwarf.get_DIE_from_refaddr(offset)

    def _top_level_types(self, name: str) -> list[int]:
        return [off for off in self._top_level.get(name, ())
                if self._die_at(off).tag in _TYPE_TAGS]

    def _find_subprogram(self, func_name: str):
        self._ensure_units()
        package = package_of(func_name)
        candidates = [package, package.replace("%2e", ".")]
        preferred = [cu for name in dict.fromkeys(candidates)
                     for cu in self._units_by_name.get(name, [])]
        # Generic instantiations live in the CU of whichever package the
        # linker kept them from: fall back to every other CU.
        rest = [cu for units in self._units_by_name.values() for cu in units if cu not in preferred]
        for cu in preferred + rest:
            self._index_unit(cu)
            for off in self._top_level.get(func_name, ()):
                die = self._die_at(off)
                if die.tag == "DW_TAG_subprogram":
                    return die
        return None

    def _is_assembly(self, die) -> bool:
        """True for a function written in assembly: DWARF lists none of its arguments."""
        index = _attr(die, "DW_AT_decl_file")
        if index is None:
            return False
        try:
            header = self._dwarf.line_program_for_CU(die.cu).header
        except _DAMAGED:
            return False
        files = header["file_entry"]
        # DWARF 5 numbers files from 0, older versions from 1.
        position = index if header["version"] >= 5 else index - 1
        if not 0 <= position < len(files):
            return False
        return _text(files[position].name).endswith(".s")

    def _unit_version(self, cu) -> tuple[int, int, int] | None:
        producer = _attr(cu.get_top_DIE(), "DW_AT_producer")
        match = _PRODUCER_VERSION.search(_text(producer) if producer is not None else "")
        if not match:
            return None
        return int(match[1]), int(match[2]), int(match[3] or 0)

    # --- types ------------------------------------------------------------

    def _type_of(self, die) -> GoType:
        if "DW_AT_type" not in die.attributes:
            return GoType("<unknown>", Kind.INVALID, 0, 1)
        return self._type_at(die.get_DIE_from_attribute("DW_AT_type").offset)

    def _type_at(self, offset: int) -> GoType:
        cached = self._types.get(offset)
        if cached is not None:
            return cached
        die = self._die_at(offset)
        name = _name(die) or "<anonymous>"
        kind_attr = _attr(die, DW_AT_go_kind)

        if die.tag == "DW_TAG_typedef" and kind_attr is None:
            # A named type: the typedef names the DIE of its underlying layout.
            target = self._type_of(die)
            # Generic shape instantiations type their parameters with
            # function-local typedefs `.param0`, ... of the shape type.
            if target.name == name or name.startswith(".param"):
                self._types[offset] = target
                return target
            gotype = GoType(name, target.kind, target.size, target.align, target.elem,
                            target.key, target.length, target.fields, target.empty)
            self._types[offset] = gotype
            return gotype

        if kind_attr is not None and kind_attr in Kind._value2member_map_:
            kind = Kind(kind_attr)
        elif name == "unsafe.Pointer":  # a bare DW_TAG_pointer_type without DW_AT_go_kind
            kind = Kind.UNSAFE_POINTER
        else:
            kind = _kind_from_tag(die)
        size = _attr(die, "DW_AT_byte_size")
        gotype = GoType(name, kind, size if size is not None else PTR_SIZE, PTR_SIZE)
        self._types[offset] = gotype  # before recursing: types can refer to themselves

        if kind is Kind.STRUCT:
            align = 1
            for member in die.iter_children():
                if member.tag != "DW_TAG_member":
                    continue
                ftype = self._type_of(member)
                location = _attr(member, "DW_AT_data_member_location")
                gotype.fields.append(Field(_name(member) or "", int(location or 0), ftype,
                                           bool(_attr(member, DW_AT_go_embedded_field))))
                align = max(align, ftype.align)
            gotype.align = align
            gotype.size = size if size is not None else 0
        elif kind is Kind.ARRAY:
            gotype.elem = self._type_of(die)
            gotype.length = _array_length(die, gotype.elem)
            gotype.align = gotype.elem.align
            if size is None:
                gotype.size = gotype.elem.size * gotype.length
        elif kind in (Kind.STRING, Kind.SLICE, Kind.INTERFACE):
            gotype.size = 3 * PTR_SIZE if kind is Kind.SLICE else 2 * PTR_SIZE
            if kind is Kind.SLICE:
                gotype.elem = self._ref(die, DW_AT_go_elem)
            if kind is Kind.INTERFACE:
                layout = self._type_of(die) if "DW_AT_type" in die.attributes else None
                gotype.empty = (layout is not None and layout.name == "runtime.eface") or \
                    name in ("interface {}", "any")
        elif kind in (Kind.MAP, Kind.CHAN, Kind.FUNC, Kind.POINTER, Kind.UNSAFE_POINTER):
            gotype.size = PTR_SIZE
            if kind is Kind.POINTER and "DW_AT_type" in die.attributes:
                gotype.elem = self._type_of(die)
            elif kind in (Kind.MAP, Kind.CHAN):
                gotype.elem = self._ref(die, DW_AT_go_elem)
                if kind is Kind.MAP:
                    gotype.key = self._ref(die, DW_AT_go_key)
        else:
            gotype.align = basic_align(kind, gotype.size)
        return gotype

    def _ref(self, die, attr) -> GoType | None:
        if attr not in die.attributes:
            return None
        return self._type_at(die.get_DIE_from_attribute(attr).offset)


def _kind_from_tag(die) -> Kind:
    """Kind of a DIE that lacks DW_AT_go_kind (older linkers, runtime-internal types)."""
    tag = die.tag
    if tag == "DW_TAG_base_type":
        encoding = _attr(die, "DW_AT_encoding")
        size = _attr(die, "DW_AT_byte_size") or 0
        if encoding == 0x02:  # DW_ATE_boolean
            return Kind.BOOL
        if encoding == 0x04:  # DW_ATE_float
            return Kind.FLOAT32 if size == 4 else Kind.FLOAT64
        if encoding == 0x03:  # DW_ATE_complex_float
            return Kind.COMPLEX64 if size == 8 else Kind.COMPLEX128
        signed = {1: Kind.INT8, 2: Kind.INT16, 4: Kind.INT32, 8: Kind.INT64}
        unsigned = {1: Kind.UINT8, 2: Kind.UINT16, 4: Kind.UINT32, 8: Kind.UINT64}
        return (signed if encoding == 0x05 else unsigned).get(size, Kind.INVALID)
    return {
        "DW_TAG_structure_type": Kind.STRUCT,
        "DW_TAG_pointer_type": Kind.POINTER,
        "DW_TAG_array_type": Kind.ARRAY,
        "DW_TAG_subroutine_type": Kind.FUNC,
    }.get(tag, Kind.INVALID)


def _array_length(die, elem: GoType) -> int:
    for child in die.iter_children():
        if child.tag == "DW_TAG_subrange_type":
            count = _attr(child, "DW_AT_count")
            if count is not None:
                return int(count)
            upper = _attr(child, "DW_AT_upper_bound")
            if upper is not None:
                return int(upper) + 1
    size = _attr(die, "DW_AT_byte_size")
    return size // elem.size if size and elem.size else 0


def _attr(die, name):
    attr = die.attributes.get(name)
    return None if attr is None else attr.value


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _name(die) -> str | None:
    value = _attr(die, "DW_AT_name")
    return None if value is None else _text(value)


__all__ = ["DwarfInfo", "package_of"]
