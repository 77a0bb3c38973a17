"""A Go binary's runtime type descriptors (`internal/abi.Type`), read from its ELF file: names, layouts, method tables.

Every type a Go program converts to an interface, reflects on or uses in a
map has a descriptor in the binary, stripped or not. The binary's moduledata
locates the types section; a descriptor's `str` is a nameOff into it (the
type's name as `%T` prints it). Kind-specific data follows the common 48
bytes: element and key types, struct fields (name, type, offset), interface
methods, function parameter types, and for named types an `uncommon` record
with the package path and the method table (name, method type). From these
this module builds the same GoType model DWARF gives (gotrace.binary.gotypes),
finds named types by name, and gives methods their signatures.

Which types can be enumerated: up to Go 1.26 moduledata's `typelinks`
(unnamed composite types: `*T`, `[]T`, `map[K]V`, ...), their element types,
the concrete and interface types of `itablinks`, and whatever these refer
to; from Go 1.27, every descriptor (the linker lays them out one after the
other, `typedesclen` bytes) and every itab (`itaboffset`, `itabsize`).

Layouts (64-bit, checked against internal/abi and runtime/type.go of Go
1.19-1.27): abi.Type is 48 bytes (size 0, ptrdata 8, hash 16, tflag 20,
align 21, fieldAlign 22, kind 23, equal 24, gcdata 32, str 40, ptrToThis 44).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gotrace.binary.encoding import MAX_UVARINT_BYTES, read_uvarint
from gotrace.binary.gotypes import PTR_SIZE, Field, GoType, Kind, Param, Signature
from gotrace.binary.pclntab import MODULEDATA_TEXT_WORD, iter_moduledata
from gotrace.errors import BinaryError

TYPE_SIZE = 48
# What reading damaged or foreign type data can raise: caught at the public methods, never a crash.
_DAMAGED = (BinaryError, struct.error, ValueError, IndexError, OverflowError, MemoryError, RecursionError,
            UnicodeDecodeError, KeyError)
_TFLAG, _ALIGN, _KIND, _STR = 20, 21, 23, 40
TFLAG_UNCOMMON, TFLAG_EXTRA_STAR, TFLAG_NAMED = 1, 2, 4
TFLAG_DIRECT_IFACE = 0x20   # Go 1.26+
KIND_DIRECT_IFACE = 0x20    # up to Go 1.25
KIND_MASK = 0x1F  # the low bits of _type.kind; higher bits are flags (kindDirectIface, kindGCProg)
UNCOMMON_SIZE = 16
METHOD_SIZE = 16
_NAME_EMBEDDED = 8

# Bytes of each kind's descriptor before its uncommon record (abi.*Type structs).
_KIND_DESCRIPTOR = {Kind.ARRAY: 72, Kind.CHAN: 64, Kind.FUNC: 56, Kind.INTERFACE: 80, Kind.POINTER: 56,
                    Kind.SLICE: 56, Kind.STRUCT: 80}


def _map_descriptor_size(version: tuple[int, int]) -> int:
    """abi.MapType: hash buckets up to 1.23 (88), Swiss tables 1.24-1.26 (112), 1.27 (136)."""
    if version < (1, 24):
        return 88
    return 112 if version < (1, 27) else 136


@dataclass(frozen=True)
class MapLayout:
    """Where a map's keys and values sit in its groups (Go 1.24+) or buckets (before)."""

    swiss: bool
    key_indirect: bool   # the slot holds a pointer to the key (keys over 128 bytes)
    elem_indirect: bool
    key_size: int        # bytes of a key slot (8 when indirect)
    elem_size: int
    slot_size: int       # Swiss: key+elem slot; buckets: unused
    elem_offset: int     # Swiss: elem within its slot
    group_size: int      # Swiss: ctrl word + 8 slots; buckets: the bucket size
    keys_offset: int     # first key in a group or bucket
    elems_offset: int    # buckets: first elem
    overflow_offset: int  # buckets: the overflow pointer


MAP_MAX_KEY_BYTES = 128
MAP_SLOTS = 8


def map_layout(key: GoType, elem: GoType, version: tuple[int, int, int], experiments: frozenset[str] = frozenset()
               ) -> MapLayout:
    """The slot layout of map[key]elem as the compiler of `version` builds it (cmd/compile reflectdata)."""
    swiss = tuple(version[:2]) >= (1, 24) and "noswissmap" not in experiments
    key_indirect = key.size > MAP_MAX_KEY_BYTES
    elem_indirect = elem.size > MAP_MAX_KEY_BYTES
    ksize = PTR_SIZE if key_indirect else key.size
    esize = PTR_SIZE if elem_indirect else elem.size
    kalign = PTR_SIZE if key_indirect else max(key.align, 1)
    ealign = PTR_SIZE if elem_indirect else max(elem.align, 1)
    if swiss:
        if "mapsplitgroup" in experiments:
            keys_offset = 8
            elems_offset = _align(keys_offset + MAP_SLOTS * ksize, ealign)
            group = _align(elems_offset + MAP_SLOTS * esize, 8)
            return MapLayout(True, key_indirect, elem_indirect, ksize, esize, ksize, elems_offset - keys_offset,
                             group, keys_offset, elems_offset, 0)
        elem_off = _align(ksize, ealign)
        slot_align = max(kalign, ealign)
        slot = _align(elem_off + esize, slot_align)
        if esize == 0 and elem_off > 0:
            slot = _align(elem_off + 1, slot_align)  # a trailing zero-size field gets a byte
        group = _align(8 + MAP_SLOTS * slot, 8)
        return MapLayout(True, key_indirect, elem_indirect, ksize, esize, slot, elem_off, group, 8, 0, 0)
    keys_offset = 8
    elems_offset = keys_offset + MAP_SLOTS * ksize
    overflow = _align(elems_offset + MAP_SLOTS * esize, PTR_SIZE)
    return MapLayout(False, key_indirect, elem_indirect, ksize, esize, 0, 0, overflow + PTR_SIZE, keys_offset,
                     elems_offset, overflow)


def _align(value: int, align: int) -> int:
    return (value + align - 1) // align * align if align > 1 else value


def experiments_of(go_version: str) -> frozenset[str]:
    """The non-default GOEXPERIMENTs a binary's version string names: "go1.24.1 X:noswissmap" -> {"noswissmap"}."""
    _, _, tail = go_version.partition(" X:")
    return frozenset(e.strip() for e in tail.split(",") if e.strip())


class RuntimeTypes:
    """The runtime type descriptors of one ELF file, addressed by ELF vaddr; everything is read lazily and cached."""

    def __init__(self, elf, pclntab_vaddr: int, go_version: tuple[int, int, int], experiments=frozenset()):
        self.elf = elf
        self.version = tuple(go_version[:2])
        self.full_version = tuple(go_version)
        self.experiments = frozenset(experiments)
        self.types_vaddr = None
        self._typelinks: tuple[int, int] | None = None   # (vaddr, count) of int32 offsets
        self._itablinks: tuple[int, int] | None = None   # (vaddr, count) of *itab
        self._typedesc: tuple[int, int] | None = None    # Go 1.27: (start, end) of the descriptors
        self._itabs_range: tuple[int, int] | None = None  # Go 1.27: (start, end) of the itabs
        self._etypes: int | None = None
        self._locate(pclntab_vaddr)
        self._blob: memoryview | bytes | None = None  # [types_vaddr, etypes): found once, on first use
        self._described: dict[int, tuple[str, int] | None] = {}
        self._gotypes: dict[int, GoType | None] = {}
        self._names: dict[int, str] = {}
        self._index: dict[str, list[int]] | None = None
        self._itab_types: dict[int, int] | None = None  # itab vaddr -> concrete type vaddr

    @classmethod
    def of(cls, gobin) -> RuntimeTypes:
        return cls(gobin.elf, gobin.pclntab.vaddr, gobin.build.version_tuple, experiments_of(gobin.go_version))

    # -- locating ---------------------------------------------------------------

    def _locate(self, pclntab_vaddr: int) -> None:
        elf = self.elf
        base_word = MODULEDATA_TEXT_WORD + (13 if self.version < (1, 20) else 15)  # `types`
        for base in iter_moduledata(elf, pclntab_vaddr):
            try:
                word = lambda i: elf.read_pointer(base + 8 * i)  # noqa: E731
                types = word(base_word)
                if self.version >= (1, 27):
                    typedesclen, etypes = word(base_word + 1), word(base_word + 2)
                    itaboffset, itabsize = word(base_word + 3), word(base_word + 4)
                    if not types or etypes <= types or typedesclen > etypes - types:
                        continue
                    self._typedesc = (types + PTR_SIZE, types + typedesclen)
                    self._itabs_range = (types + itaboffset, types + itaboffset + itabsize)
                    self._etypes = etypes
                else:
                    etypes = word(base_word + 1)
                    if not types or etypes <= types:
                        continue
                    # after etypes: rodata, gofunc, [epclntab from 1.26], textsectmap (3 words), typelinks, itablinks
                    links = base_word + 2 + 2 + (1 if self.version >= (1, 26) else 0) + 3
                    tl_ptr, tl_len, tl_cap = word(links), word(links + 1), word(links + 2)
                    it_ptr, it_len, it_cap = word(links + 3), word(links + 4), word(links + 5)
                    if tl_len <= tl_cap < 1 << 24 and tl_ptr:
                        self._typelinks = (tl_ptr, tl_len)
                    if it_len <= it_cap < 1 << 24 and it_ptr:
                        self._itablinks = (it_ptr, it_len)
                    self._etypes = etypes
                elf.read_vaddr(types, 1)
            except (BinaryError, struct.error):
                continue
            self.types_vaddr = types
            return
        self.types_vaddr = elf.symbol_vaddr("runtime.types")

    # -- raw reads ----------------------------------------------------------------

    def _read(self, vaddr: int, size: int) -> bytes:
        blob = self._types_blob()
        at = vaddr - (self.types_vaddr or 0)
        if 0 <= at and at + size <= len(blob):
            return bytes(blob[at:at + size])
        return bytes(self.elf.read_vaddr(vaddr, size))

    def _types_blob(self) -> memoryview | bytes:
        """The types section in one piece, a view of the mapped file (most reads land in it); b"" when it
        cannot be had whole."""
        if self._blob is None:
            self._blob = b""
            if self.types_vaddr is not None and self._etypes and 0 < self._etypes - self.types_vaddr < 1 << 30:
                try:
                    self._blob = self.elf.read_vaddr(self.types_vaddr, self._etypes - self.types_vaddr)
                except BinaryError:
                    pass
        return self._blob

    def _ptr(self, vaddr: int) -> int:
        if self.elf.is_pie:  # a zero on disk may be a RELATIVE relocation's
            return self.elf.read_pointer(vaddr)
        return struct.unpack("<Q", self._read(vaddr, 8))[0]

    def _u64(self, vaddr: int) -> int:
        return struct.unpack("<Q", self._read(vaddr, 8))[0]

    def _name_at(self, vaddr: int) -> tuple[str, int, bytes]:
        """(text, flags byte, tag) of an abi.Name at vaddr."""
        raw = self._read(vaddr, 1 + MAX_UVARINT_BYTES)
        flags = raw[0]
        length, pos = read_uvarint(raw, 1)
        text = self._read(vaddr + pos, length).decode("utf-8", "replace")
        return text, flags, b""

    def _name_off(self, off: int) -> str:
        return self._name_at(self.types_vaddr + off)[0]

    def _type_off(self, off: int) -> int | None:
        if off in (0, -1) or self.types_vaddr is None:
            return None
        return self.types_vaddr + off

    # -- one descriptor --------------------------------------------------------------

    def header(self, type_vaddr: int) -> bytes | None:
        """The 48 common bytes of the descriptor at type_vaddr; None when the address is not in the file."""
        try:
            return self._read(type_vaddr, TYPE_SIZE)
        except (BinaryError, struct.error):
            return None

    def describe(self, type_vaddr: int) -> tuple[str, int] | None:
        """(name as %T prints it, kind byte) of the descriptor at this ELF vaddr; None if unreadable."""
        if type_vaddr in self._described:
            return self._described[type_vaddr]
        result = None
        if self.types_vaddr is not None and type_vaddr:
            try:
                header = self._read(type_vaddr, TYPE_SIZE)
                kind = header[_KIND]
                if 0 < kind & KIND_MASK <= Kind.UNSAFE_POINTER:
                    result = (self._type_name(type_vaddr, header), kind)
            except (BinaryError, struct.error, IndexError, UnicodeDecodeError):
                result = None  # an address outside the file: a type made at run time (reflect)
        self._described[type_vaddr] = result
        return result

    def name(self, type_vaddr: int) -> str | None:
        described = self.describe(type_vaddr)
        return described[0] if described else None

    def _type_name(self, type_vaddr: int, header: bytes) -> str:
        if type_vaddr in self._names:
            return self._names[type_vaddr]
        (name_off,) = struct.unpack_from("<i", header, _STR)
        name = self._name_off(name_off)
        if header[_TFLAG] & TFLAG_EXTRA_STAR and name.startswith("*"):
            name = name[1:]
        self._names[type_vaddr] = name
        return name

    def is_direct_iface(self, type_vaddr: int) -> bool:
        header = self.header(type_vaddr)
        return bool(header and (header[_TFLAG] & TFLAG_DIRECT_IFACE or header[_KIND] & KIND_DIRECT_IFACE))

    def _uncommon_vaddr(self, type_vaddr: int, header: bytes) -> int | None:
        if not header[_TFLAG] & TFLAG_UNCOMMON:
            return None
        kind = Kind(header[_KIND] & KIND_MASK)
        if kind is Kind.MAP:
            size = _map_descriptor_size(self.version)
        else:
            size = _KIND_DESCRIPTOR.get(kind, TYPE_SIZE)
        return type_vaddr + size

    def pkgpath(self, type_vaddr: int) -> str | None:
        """The import path of a named type's package (its uncommon record)."""
        header = self.header(type_vaddr)
        if header is None:
            return None
        uncommon = self._uncommon_vaddr(type_vaddr, header)
        if uncommon is None:
            return None
        (off,) = struct.unpack("<i", self._read(uncommon, 4))
        return self._name_off(off) if off else None

    def methods(self, type_vaddr: int) -> list[tuple[str, int | None]]:
        """(name, method type's vaddr or None) of each method in the type's method table (receiver not included)."""
        header = self.header(type_vaddr)
        if header is None:
            return []
        uncommon = self._uncommon_vaddr(type_vaddr, header)
        if uncommon is None:
            return []
        _, mcount, _, moff = struct.unpack("<iHHI", self._read(uncommon, 12))
        out = []
        table = self._read(uncommon + moff, METHOD_SIZE * mcount)
        for i in range(mcount):
            name_off, mtyp, _, _ = struct.unpack_from("<iiii", table, i * METHOD_SIZE)
            out.append((self._name_off(name_off), self._type_off(mtyp)))
        return out

    # -- the GoType model -----------------------------------------------------------------

    def type_at(self, type_vaddr: int) -> GoType | None:
        """The GoType of the descriptor at type_vaddr (fields, elements, methods resolved); None if unreadable."""
        if type_vaddr in self._gotypes:
            return self._gotypes[type_vaddr]
        try:
            return self._build(type_vaddr)
        except _DAMAGED:
            self._gotypes[type_vaddr] = None
            return None

    def _build(self, vaddr: int) -> GoType | None:
        header = self.header(vaddr)
        if header is None:
            self._gotypes[vaddr] = None
            return None
        size, ptrdata = struct.unpack_from("<QQ", header, 0)
        kind_byte = header[_KIND]
        try:
            kind = Kind(kind_byte & KIND_MASK)
        except ValueError:
            self._gotypes[vaddr] = None
            return None
        if kind is Kind.INVALID:
            self._gotypes[vaddr] = None
            return None
        gotype = GoType(self._type_name(vaddr, header), kind, size, max(header[_ALIGN], 1))
        gotype.rtype_vaddr = vaddr
        self._gotypes[vaddr] = gotype  # before recursing: types refer to themselves
        if kind in (Kind.POINTER, Kind.SLICE, Kind.CHAN, Kind.ARRAY):
            gotype.elem = self._ref(vaddr + TYPE_SIZE)
            if kind is Kind.ARRAY:
                gotype.length = self._u64(vaddr + TYPE_SIZE + 16)
        elif kind is Kind.MAP:
            gotype.key = self._ref(vaddr + TYPE_SIZE)
            gotype.elem = self._ref(vaddr + TYPE_SIZE + 8)
        elif kind is Kind.STRUCT:
            fields_ptr, count = self._ptr(vaddr + TYPE_SIZE + 8), self._u64(vaddr + TYPE_SIZE + 16)
            for i in range(min(count, 4096)):
                at = fields_ptr + 24 * i
                fname, flags, _ = self._name_at(self._ptr(at))
                ftype = self._ref(at + 8)
                offset = self._u64(at + 16)
                if ftype is None:
                    ftype = GoType("<unknown>", Kind.INVALID, 0, 1)
                gotype.fields.append(Field(fname, offset, ftype, bool(flags & _NAME_EMBEDDED)))
        elif kind is Kind.INTERFACE:
            methods_ptr, count = self._ptr(vaddr + TYPE_SIZE + 8), self._u64(vaddr + TYPE_SIZE + 16)
            gotype.empty = count == 0
            names = []
            for i in range(min(count, 4096)):
                name_off, _ = struct.unpack("<ii", self._read(methods_ptr + 8 * i, 8))
                names.append(self._name_off(name_off))
            gotype.methods = tuple(names)
        return gotype

    def _ref(self, at: int) -> GoType | None:
        target = self._ptr(at)
        return self.type_at(target) if target else None

    def func_signature(self, func_type_vaddr: int) -> tuple[list[GoType], list[GoType], bool] | None:
        """(parameter types, result types, variadic) of a func type descriptor."""
        header = self.header(func_type_vaddr)
        if header is None or header[_KIND] & KIND_MASK != Kind.FUNC:
            return None
        in_count, out_count = struct.unpack("<HH", self._read(func_type_vaddr + TYPE_SIZE, 4))
        variadic = bool(out_count & 0x8000)
        out_count &= 0x7FFF
        at = func_type_vaddr + 56 + (UNCOMMON_SIZE if header[_TFLAG] & TFLAG_UNCOMMON else 0)
        types = []
        for i in range(in_count + out_count):
            t = self._ref(at + 8 * i)
            if t is None:
                return None
            types.append(t)
        return types[:in_count], types[in_count:], variadic

    # -- enumeration and lookup by name -------------------------------------------------

    def iter_type_vaddrs(self):
        """vaddrs of the descriptors this binary lists (see the module docstring) and the types their
        pointer types point to, each once."""
        seen: set[int] = set()
        for vaddr in self._listed_types():
            for v in (vaddr, self._elem_vaddr(vaddr)):
                if v and v not in seen:
                    seen.add(v)
                    yield v

    def _listed_types(self):
        if self._typedesc is not None:
            start, end = self._typedesc
            at = start
            while at < end:
                at = _align(at, PTR_SIZE)
                size = self._descriptor_size(at)
                if size is None:
                    break
                yield at
                at += size
        if self._typelinks is not None and self.types_vaddr is not None:
            ptr, count = self._typelinks
            for off in struct.unpack(f"<{count}i", self._read(ptr, 4 * count)):
                yield self.types_vaddr + off
        for _, inter, concrete in self._iter_itabs():
            yield inter
            yield concrete

    def _elem_vaddr(self, vaddr: int) -> int | None:
        header = self.header(vaddr)
        if header is None or header[_KIND] & KIND_MASK != Kind.POINTER:
            return None
        return self._ptr(vaddr + TYPE_SIZE) or None

    def _descriptor_size(self, vaddr: int) -> int | None:
        """Go 1.27's abi.Type.DescriptorSize of the descriptor at vaddr."""
        header = self.header(vaddr)
        if header is None:
            return None
        try:
            kind = Kind(header[_KIND] & KIND_MASK)
        except ValueError:
            return None
        add = 0
        if kind is Kind.MAP:
            base = _map_descriptor_size(self.version)
        elif kind is Kind.FUNC:
            base = 56
            in_count, out_count = struct.unpack("<HH", self._read(vaddr + TYPE_SIZE, 4))
            add = (in_count + (out_count & 0x7FFF)) * PTR_SIZE
        elif kind is Kind.INTERFACE:
            base = 80
            add = self._u64(vaddr + TYPE_SIZE + 16) * 8
        elif kind is Kind.STRUCT:
            base = 80
            add = self._u64(vaddr + TYPE_SIZE + 16) * 24
        elif kind is Kind.INVALID:
            return None
        else:
            base = _KIND_DESCRIPTOR.get(kind, TYPE_SIZE)
        size = base
        if header[_TFLAG] & TFLAG_UNCOMMON:
            _, mcount = struct.unpack("<iH", self._read(vaddr + base, 6))
            size += UNCOMMON_SIZE + mcount * METHOD_SIZE
        return size + add

    def _iter_itabs(self):
        """(itab vaddr, interface type vaddr, concrete type vaddr) of every itab the binary lists."""
        if self._itabs_range is not None:
            at, end = self._itabs_range
            while at < end:
                inter, concrete = self._ptr(at), self._ptr(at + 8)
                fun0 = self._u64(at + 24)
                nmethods = self._u64(inter + TYPE_SIZE + 16) if inter else 1
                yield at, inter, concrete
                at += 32 + (max(nmethods, 1) - 1) * PTR_SIZE if fun0 else 32
        if self._itablinks is not None:
            ptr, count = self._itablinks
            for i in range(count):
                itab = self._ptr(ptr + 8 * i)
                if itab:
                    yield itab, self._ptr(itab), self._ptr(itab + 8)

    def itab_type(self, itab_vaddr: int) -> int | None:
        """The concrete type of an itab in the file."""
        try:
            return self._ptr(itab_vaddr + 8) or None
        except (BinaryError, struct.error):
            return None

    def find(self, name: str) -> list[int]:
        """vaddrs of the descriptors named `name` (as %T prints it: "main.Point", "*http.Request") or
        named by their package path ("net/http.Request"); none when the type data is damaged."""
        try:
            return self._find(name)
        except _DAMAGED:
            return []

    def _find(self, name: str) -> list[int]:
        if self._index is None:
            index: dict[str, list[int]] = {}
            for vaddr in self.iter_type_vaddrs():
                type_name = self.name(vaddr)
                if type_name:
                    index.setdefault(type_name, []).append(vaddr)
            self._index = index
        found = list(self._index.get(name, []))
        head, slash, tail = name.rpartition("/")
        if not found and slash:  # by import path: net/http.Request is http.Request of package net/http
            short = tail
            pointer = name.startswith("*")
            path = (head.lstrip("*") + "/" + tail.partition(".")[0])
            found = [v for v in self._index.get(("*" if pointer else "") + short, [])
                     if self.pkgpath(self._elem_vaddr(v) if pointer else v) == path]
        if not found and name.startswith("*"):
            # *T where only T is listed: its ptrToThis
            for vaddr in self._find(name[1:]):
                header = self.header(vaddr)
                (ptr_off,) = struct.unpack_from("<i", header, 44)
                target = self._type_off(ptr_off)
                if target:
                    found.append(target)
        return found

    def method_signature(self, func_name: str) -> Signature | None:
        """The signature of a method `pkg.(*T).M` or `pkg.T.M` from T's method table; None when the
        binary has no descriptor of T listing M (or its type data is damaged). Parameters are unnamed
        (`~p0` is the receiver)."""
        try:
            return self._method_signature(func_name)
        except _DAMAGED:
            return None

    def _method_signature(self, func_name: str) -> Signature | None:
        parsed = split_method_name(func_name)
        if parsed is None:
            return None
        pkg, type_name, pointer, method = parsed
        short_pkg = pkg.rpartition("/")[2]
        candidates = self.find(f"{pkg}.{type_name}") or []
        for vaddr in candidates:
            if self.name(vaddr) != f"{short_pkg}.{type_name}":
                continue
            receiver_vaddr = vaddr
            if pointer:
                pointers = self.find(f"*{short_pkg}.{type_name}")
                receiver_vaddr = next((p for p in pointers if self._elem_vaddr(p) == vaddr), None)
                if receiver_vaddr is None:
                    continue
            for name, mtyp in self.methods(receiver_vaddr):
                if name != method or mtyp is None:
                    continue
                parts = self.func_signature(mtyp)
                receiver = self.type_at(receiver_vaddr)
                if parts is None or receiver is None:
                    return None
                ins, outs, _ = parts
                params = [Param("~p0", receiver)] + [Param(f"~p{i + 1}", t) for i, t in enumerate(ins)]
                results = [Param(f"~r{i}", t, is_result=True) for i, t in enumerate(outs)]
                return Signature(func_name, tuple(params), tuple(results), self.full_version, True)
        return None


def split_method_name(func_name: str) -> tuple[str, str, bool, str] | None:
    """(package path, type name, pointer receiver, method) of `net/http.(*Server).Serve` or
    `main.Point.String`; None for functions, closures and generic methods."""
    if "[" in func_name:
        return None
    slash = func_name.rfind("/")
    head, rest = func_name[:slash + 1], func_name[slash + 1:]
    pkg_name, dot, tail = rest.partition(".")
    if not dot:
        return None
    pkg = head + pkg_name
    if tail.startswith("(*"):
        close = tail.find(").")
        if close < 0:
            return None
        type_name, method = tail[2:close], tail[close + 2:]
        pointer = True
    else:
        type_name, dot, method = tail.partition(".")
        if not dot:
            return None
        pointer = False
    if not type_name or not method or "." in method or not type_name.isidentifier() or not method.isidentifier():
        return None
    return pkg, type_name, pointer, method
