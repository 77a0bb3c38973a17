"""Decodes a completed call's captured bytes into Go values (rendering them is gotrace.output.args' job).

Input: a gotrace.trace.args.CallRecord and the function's
gotrace.capture.plan plan. Each side's region holds the values' images and
what each read operation found. First the reads become a *snapshot* of the
target's memory at that instant: address -> bytes for each read that
completed, address -> "unreadable" for each that faulted. The images get
addresses of their own, above any user address. Then each value's type is
walked over the snapshot: a string's bytes, a slice's elements, what a
pointer points to, a map's groups or buckets, an interface's concrete type
(from the binary's runtime type data, gotrace.binary.rtypes) and value.

Nothing is invented: bytes no read filled are `Unavailable`, with why
(a float in a vector register, memory that faulted, a read the capture
budget left out). Every byte shown was in the target's memory, at that
address, when the probe fired. Depth and element counts follow the plan's
Limits; a pointer beyond --depth shows its address, one back to an object
already being shown is a cycle.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from gotrace import header as probes_header
from gotrace.binary.gotypes import FLOAT_KINDS, INTEGER_KINDS, PTR_SIZE, SIGNED_KINDS, GoType, Kind, pointer_to
from gotrace.binary.rtypes import MAP_SLOTS, TYPE_SIZE, RuntimeTypes, map_layout
from gotrace.capture.plan import FunctionPlan, Limits, SidePlan

# Error types whose message is their first field, a string (errors.New, fmt.Errorf).
KNOWN_ERROR_TYPES = frozenset({"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors"})

IMAGE_BASE = 1 << 62  # where a side's region is in the snapshot: above every user address
NOT_CAPTURED = "not captured (the capture budget ran out: lower --depth, --max-elems or --str-len)"


def not_in_groups(read: int) -> str:
    """Why a map shows no entry when the `read` groups or buckets gotrace read hold none."""
    which = "the first group or bucket, the only one" if read == 1 else f"the {read} groups or buckets"
    return f"not captured (none is in {which} gotrace read)"

# -- decoded values -------------------------------------------------------------


@dataclass(frozen=True)
class Unavailable:
    reason: str


@dataclass(frozen=True)
class Scalar:
    type: GoType
    value: int | float | bool | complex


@dataclass(frozen=True)
class Pointer:
    """A pointer-shaped value. `target` is what it points to when followed (None: not followed, see
    `why`); `cycle` when it points back to an object already being shown."""

    type_name: str
    address: int  # 0: nil
    target: object = None
    cycle: bool = False


@dataclass(frozen=True)
class Text:
    """A string or []byte: the captured prefix and the full length."""

    data: bytes
    length: int
    is_bytes: bool = False
    cap: int | None = None
    type_name: str | None = None  # a named string or []byte type

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.length


@dataclass(frozen=True)
class Slice:
    type: GoType
    length: int
    cap: int
    elems: list | None  # None: elements not followed (--depth)
    nil: bool = False
    missing: Unavailable | None = None  # why the elements listed stop short of min(len, --max-elems)


@dataclass(frozen=True)
class Struct:
    type: GoType
    fields: list  # [(name, value)]


@dataclass(frozen=True)
class Array:
    type: GoType
    elems: list
    length: int = 0  # the array's length (elems may be fewer: --max-elems)


@dataclass(frozen=True)
class Map:
    type: GoType
    length: int
    entries: list | None  # [(key, value)]; None: not followed (--depth)
    address: int = 0
    nil: bool = False
    missing: Unavailable | None = None


@dataclass(frozen=True)
class Chan:
    type: GoType
    address: int
    length: int | None = None
    cap: int | None = None


@dataclass(frozen=True)
class Func:
    type: GoType
    address: int          # the func value (a pointer to its closure)
    name: str | None = None  # the function it calls, from the code pointer


@dataclass(frozen=True)
class Interface:
    concrete: str | None  # None: a nil interface
    value: object = None  # decoded value of the concrete type, or None when not followed
    is_error: bool = False
    static_type: str = ""


GoValue = object  # one of the classes above


@dataclass
class Call:
    """One decoded call."""

    func: str
    pid: int
    goid: int
    ts_ns: int           # wall clock at entry, ns since the Unix epoch
    latency_ns: int
    args: list = field(default_factory=list)     # [(name, GoValue)]
    results: list = field(default_factory=list)  # [(name, GoValue)]


_POINTERISH = (Kind.POINTER, Kind.UNSAFE_POINTER, Kind.MAP, Kind.CHAN, Kind.FUNC)
_Q = struct.Struct("<Q")


# -- the snapshot ----------------------------------------------------------------


class Snapshot:
    """What the probe read of the target's memory: address -> bytes, or why not."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: list[bytes] = []
        self._exact: dict[int, bytes] = {}
        self._faults: list[tuple[int, int]] = []
        self._unavailable: list[tuple[int, int, str]] = []

    def add(self, address: int, data: bytes) -> None:
        if not data:
            return
        known = self._exact.get(address)
        if known is None or len(known) < len(data):
            self._exact[address] = data
        at = bisect.bisect_left(self._starts, address)
        self._starts.insert(at, address)
        self._blocks.insert(at, data)

    def fault(self, address: int, size: int) -> None:
        self._faults.append((address, max(size, 1)))

    def mark_unavailable(self, address: int, size: int, reason: str) -> None:
        self._unavailable.append((address, size, reason))

    def unavailable_at(self, address: int, size: int) -> Unavailable | None:
        """Why bytes of an image at address are not the value's (a float register, a failed stack read)."""
        for start, length, reason in self._unavailable:
            if start < address + max(size, 1) and address < start + length:
                return Unavailable(reason)
        return None

    def _find(self, address: int, size: int) -> bytes | None:
        exact = self._exact.get(address)
        if exact is not None and len(exact) >= size:
            return exact[:size]
        at = bisect.bisect_right(self._starts, address)
        for i in range(at - 1, max(at - 64, -1), -1):
            start, block = self._starts[i], self._blocks[i]
            if start + len(block) >= address + size:
                return block[address - start:address - start + size]
        return None

    def why_not(self, address: int, size: int) -> str:
        for start, length, reason in self._unavailable:
            if start < address + max(size, 1) and address < start + length:
                return reason
        for start, length in self._faults:
            if start <= address < start + length:
                return f"unreadable memory at {address:#x}"
        return NOT_CAPTURED

    def get(self, address: int, size: int) -> bytes | Unavailable:
        """size bytes at address, or Unavailable saying why."""
        for start, length, reason in self._unavailable:
            if start < address + max(size, 1) and address < start + length:
                return Unavailable(reason)
        if size == 0:
            return b""
        found = self._find(address, size)
        return found if found is not None else Unavailable(self.why_not(address, size))

    def prefix(self, address: int, size: int) -> bytes | Unavailable:
        """The longest captured prefix (at most size bytes) at address; Unavailable when there is none."""
        best = self._exact.get(address, b"")
        at = bisect.bisect_right(self._starts, address)
        for i in range(at - 1, max(at - 64, -1), -1):
            start, block = self._starts[i], self._blocks[i]
            if start + len(block) > address:
                piece = block[address - start:address - start + size]
                if len(piece) > len(best):
                    best = piece
        if best:
            return best[:size]
        return Unavailable(self.why_not(address, size))

    def word(self, address: int) -> int | Unavailable:
        raw = self.get(address, PTR_SIZE)
        return raw if isinstance(raw, Unavailable) else _Q.unpack(raw)[0]


def _complete(value, depth: int = 0) -> bool:
    """Whether nothing in a decoded value is unavailable (up to 16 levels down)."""
    if isinstance(value, Unavailable):
        return False
    if depth >= 16:
        return True
    if isinstance(value, Pointer):
        return value.target is None or _complete(value.target, depth + 1)
    if isinstance(value, Struct):
        return all(_complete(v, depth + 1) for _, v in value.fields)
    if isinstance(value, (Array, Slice)):
        return getattr(value, "missing", None) is None and all(_complete(v, depth + 1) for v in value.elems or ())
    if isinstance(value, Map):
        return value.missing is None and all(_complete(k, depth + 1) and _complete(v, depth + 1)
                                             for k, v in value.entries or ())
    if isinstance(value, Interface):
        return value.value is None or _complete(value.value, depth + 1)
    return True


def side_snapshot(side: SidePlan, region: bytes) -> Snapshot:
    """The snapshot of one side: its region at IMAGE_BASE (minus what no op filled) and what each read found."""
    snap = Snapshot()
    snap.add(IMAGE_BASE, bytes(region))
    if len(region) < side.extent:
        snap.mark_unavailable(IMAGE_BASE + len(region), side.extent - len(region), "not sent (record cut short)")
    c = probes_header.constants()
    deref, stack = c["GT_OP_DEREF"], c["GT_OP_STACK"]
    no_src = c["GT_OP_NO_SRC"]
    conditions = c["GT_OPF_MASK"] | c["GT_OPF_IF_ZERO"] | c["GT_OPF_IF_NONZERO"]
    prefix_flag = c["GT_OPF_LEN_PREFIX"]
    ok, fault = c["GT_ST_OK"], c["GT_ST_FAULT"]
    for value in side.values:
        for u in value.unreadable:
            snap.mark_unavailable(IMAGE_BASE + u.offset, u.size, u.reason)
    for index, op in enumerate(side.ops):
        status = region[index] if index < len(region) else 0
        if op.kind == stack:
            if status != ok:
                snap.mark_unavailable(IMAGE_BASE + op.dst, op.size, "its stack slot could not be read")
            continue
        if op.kind != deref or not status or op.src + 8 > len(region):
            continue
        address = (_Q.unpack_from(region, op.src)[0] + op.offset) & 0xFFFFFFFFFFFFFFFF
        n = op.size
        if op.len_src != no_src and not op.flags & conditions and op.len_src + 8 <= len(region):
            n = min(n, min(_Q.unpack_from(region, op.len_src)[0], 0xFFFFFFFF) * op.mul)
        if status & fault:
            snap.fault(address, n)
            continue
        if not status & ok:
            continue
        at = op.dst
        if op.flags & prefix_flag:
            n = _Q.unpack_from(region, op.dst)[0]
            at = op.dst + 8
        if at + n <= len(region):
            snap.add(address, bytes(region[at:at + n]))
    return snap


# -- decoding ---------------------------------------------------------------------


class Decoder:
    """Walks Go types over one side's snapshot."""

    def __init__(self, snap: Snapshot, limits: Limits, layouts, types: RuntimeTypes | None, bias: int,
                 function_name=None):
        self.snap = snap
        self.limits = limits
        self.layouts = layouts
        self.types = types
        self.bias = bias
        self.function_name = function_name  # code address -> function name, or None

    # one value at an address

    def at(self, t: GoType, address: int, depth: int, path: tuple = ()) -> GoValue:
        kind = t.kind
        if t.size == 0:
            if kind is Kind.STRUCT:
                return Struct(t, [])
            if kind is Kind.ARRAY:
                return Array(t, [], t.length or 0)
        raw = self.snap.get(address, t.size)
        if isinstance(raw, Unavailable):
            if kind in (Kind.STRUCT, Kind.ARRAY) and t.size > PTR_SIZE:
                return self._piecewise(t, address, depth, path, raw)
            return raw
        return self.value(t, raw, address, depth, path)

    def _piecewise(self, t: GoType, address: int, depth: int, path: tuple, whole: Unavailable) -> GoValue:
        """A struct or array not captured whole (a float register inside, a pointee cut at the read size):
        decode what can be, field by field."""
        if t.kind is Kind.STRUCT:
            fields = [(f.name, self.at(f.type, address + f.offset, depth, path)) for f in t.fields]
            if all(isinstance(v, Unavailable) for _, v in fields) and fields:
                return whole
            return Struct(t, fields)
        elem = t.elem
        if elem is None or not elem.size:
            return whole
        count = min(t.length or 0, self.limits.max_elems)
        elems = [self.at(elem, address + i * elem.size, depth, path) for i in range(count)]
        if elems and all(isinstance(v, Unavailable) for v in elems):
            return whole
        return Array(t, elems, t.length or 0)

    def value(self, t: GoType, raw: bytes, address: int, depth: int, path: tuple) -> GoValue:
        """The value of type t whose bytes (all of them) are raw, at address."""
        kind = t.kind
        if kind is Kind.STRUCT:
            return Struct(t, [(f.name, self.value(f.type, raw[f.offset:f.offset + f.type.size],
                                                  address + f.offset, depth, path)
                               if f.type.size and len(raw) >= f.offset + f.type.size
                               else self.at(f.type, address + f.offset, depth, path))
                              for f in t.fields])
        if kind is Kind.ARRAY:
            elem = t.elem
            if elem is None:
                return Unavailable(f"values of type {t.name} are not decoded")
            count = min(t.length or 0, self.limits.max_elems)
            return Array(t, [self.value(elem, raw[i * elem.size:(i + 1) * elem.size], address + i * elem.size,
                                        depth, path) for i in range(count)], t.length or 0)
        if self.snap._unavailable:
            reason = self.snap.unavailable_at(address, t.size)
            if reason is not None:  # part of an image no read filled (a float register)
                return reason
        if kind in INTEGER_KINDS or kind is Kind.BOOL or kind in FLOAT_KINDS:
            return Scalar(t, _scalar(kind, raw[:t.size]))
        if kind in (Kind.COMPLEX64, Kind.COMPLEX128):
            half = t.size // 2
            fmt = "<f" if half == 4 else "<d"
            return Scalar(t, complex(struct.unpack_from(fmt, raw, 0)[0], struct.unpack_from(fmt, raw, half)[0]))
        if kind is Kind.STRING:
            return self.text(raw, is_bytes=False, type_name=t.name if t.name != "string" else None)
        if kind is Kind.SLICE:
            return self.slice(t, raw, depth, path)
        if kind is Kind.POINTER:
            return self.pointer(t, _Q.unpack_from(raw)[0], depth, path)
        if kind is Kind.MAP:
            return self.map(t, _Q.unpack_from(raw)[0], depth, path)
        if kind is Kind.CHAN:
            return self.chan(t, _Q.unpack_from(raw)[0], depth)
        if kind is Kind.FUNC:
            return self.func(t, _Q.unpack_from(raw)[0], depth)
        if kind is Kind.UNSAFE_POINTER:
            return Pointer(t.name, _Q.unpack_from(raw)[0])
        if kind is Kind.INTERFACE:
            return self.interface(t, raw, address, depth, path)
        return Unavailable(f"values of type {t.name} are not decoded")

    def _followable(self, depth: int, type_name: str = "") -> bool:
        extra = 2 if type_name in ("time.Location", "time.zone") else 0
        return depth + 1 <= self.limits.depth + extra

    def text(self, raw: bytes, is_bytes: bool, cap: int | None = None, type_name: str | None = None) -> GoValue:
        ptr, length = _Q.unpack_from(raw, 0)[0], _Q.unpack_from(raw, 8)[0]
        if length == 0:
            return Text(b"", 0, is_bytes, cap, type_name)
        if ptr == 0 or length >> 48:
            return Unavailable(f"invalid header (data {ptr:#x}, len {length})")
        want = min(length, self.limits.str_len)
        if want == 0:
            return Text(b"", length, is_bytes, cap, type_name)
        data = self.snap.prefix(ptr, want)
        if isinstance(data, Unavailable):
            return data
        return Text(data, length, is_bytes, cap, type_name)

    def slice(self, t: GoType, raw: bytes, depth: int, path: tuple) -> GoValue:
        ptr, length, cap = _Q.unpack_from(raw, 0)[0], _Q.unpack_from(raw, 8)[0], _Q.unpack_from(raw, 16)[0]
        elem = t.elem
        if ptr == 0 and length == 0:
            return Slice(t, 0, cap, [], nil=True)
        if length > cap or cap >> 48:
            return Unavailable(f"invalid slice header (data {ptr:#x}, len {length}, cap {cap})")
        if elem is not None and elem.kind is Kind.UINT8:
            return self.text(raw, is_bytes=True, cap=cap, type_name=t.name if t.name != "[]uint8" else None)
        if elem is None or not self._followable(depth):
            return Slice(t, length, cap, None)
        if elem.size == 0:
            return Slice(t, length, cap, [self.at(elem, ptr, depth + 1, path)] * min(length, self.limits.max_elems))
        elems: list = []
        missing = None
        for i in range(min(length, self.limits.max_elems)):
            got = self.at(elem, ptr + i * elem.size, depth + 1, path)
            if isinstance(got, Unavailable):  # the rest was not read, or is unreadable
                missing = got
                break
            elems.append(got)
        if not elems and missing is not None and length:
            return Slice(t, length, cap, [], missing=missing)
        return Slice(t, length, cap, elems, missing=missing)

    def pointer(self, t: GoType, address: int, depth: int, path: tuple) -> GoValue:
        elem = t.elem
        if address == 0:
            return Pointer(t.name, 0)
        if elem is None or elem.size == 0 or elem.kind is Kind.INVALID or not self._followable(depth, elem.name):
            return Pointer(t.name, address)
        if (address, elem.name) in path:
            return Pointer(t.name, address, cycle=True)
        target = self.at(elem, address, depth + 1, path + ((address, elem.name),))
        return Pointer(t.name, address, target)

    def chan(self, t: GoType, address: int, depth: int) -> GoValue:
        if address == 0 or not self._followable(depth):
            return Chan(t, address)
        raw = self.snap.get(address, 16)
        if isinstance(raw, Unavailable):
            return Chan(t, address)
        return Chan(t, address, _Q.unpack_from(raw, 0)[0], _Q.unpack_from(raw, 8)[0])

    def func(self, t: GoType, address: int, depth: int) -> GoValue:
        if address == 0 or not self._followable(depth) or self.function_name is None:
            return Func(t, address)
        code = self.snap.word(address)
        if isinstance(code, Unavailable):
            return Func(t, address)
        return Func(t, address, self.function_name(code - self.bias))

    # maps

    def map(self, t: GoType, address: int, depth: int, path: tuple) -> GoValue:
        if address == 0:
            return Map(t, 0, [], nil=True)
        if t.key is None or t.elem is None:
            return Map(t, -1, None, address)
        layout = map_layout(t.key, t.elem, self.layouts.version, self.layouts.experiments)
        header = self.snap.get(address, 32 if layout.swiss else 48)
        if isinstance(header, Unavailable):
            if not self._followable(depth):
                return Pointer(t.name, address)  # its address, as for any value not followed
            return header
        length = _Q.unpack_from(header, 0)[0]
        if not self._followable(depth):
            return Map(t, length, None, address)
        if length == 0:
            return Map(t, 0, [], address)
        groups: list[int] = []  # addresses of the groups or buckets to look in
        # Those read only with the capture's left-over room: the second group or bucket, the first bucket's
        # overflow. Never `missing`; their entries are shown only while whole.
        spare: set[int] = set()
        if layout.swiss:
            directory, dir_len = _Q.unpack_from(header, 16)[0], _Q.unpack_from(header, 24)[0]
            if dir_len == 0:
                groups.append(directory)
            else:
                table = self.snap.word(directory)
                if not isinstance(table, Unavailable):
                    data = self.snap.word(table + 16)
                    if not isinstance(data, Unavailable):
                        groups.append(data)
                        length_mask = self.snap.word(table + 24)  # the table's groups, less one
                        if not isinstance(length_mask, Unavailable) and length_mask >= 1:
                            groups.append(data + layout.group_size)
                            spare.add(data + layout.group_size)
        else:
            buckets = _Q.unpack_from(header, 16)[0]
            groups.append(buckets)
            overflow = self.snap.word(buckets + layout.overflow_offset)
            if not isinstance(overflow, Unavailable) and overflow:
                groups.append(overflow)
                spare.add(overflow)
            if header[9] >= 1:  # B: the map has 2**B buckets
                groups.append(buckets + layout.group_size)
                spare.add(buckets + layout.group_size)
        key_type = pointer_to(t.key) if layout.key_indirect else t.key
        elem_type = pointer_to(t.elem) if layout.elem_indirect else t.elem
        entries: list = []
        missing = None
        looked = 0  # groups or buckets read
        for group in groups:
            if len(entries) >= self.limits.max_elems:
                break
            tags = self.snap.get(group, 8)
            if isinstance(tags, Unavailable):
                if group not in spare:
                    missing = tags
                continue
            looked += 1
            for slot in range(MAP_SLOTS):
                tag = tags[slot]
                full = tag < 0x80 if layout.swiss else tag >= 5  # ctrl: bit 7 clear; tophash >= minTopHash
                if not full:
                    continue
                if layout.swiss:
                    key_at = group + layout.keys_offset + slot * layout.slot_size
                    elem_at = key_at + layout.elem_offset
                else:
                    key_at = group + layout.keys_offset + slot * layout.key_size
                    elem_at = group + layout.elems_offset + slot * layout.elem_size
                key = self.at(key_type, key_at, depth + 1, path)
                value = self.at(elem_type, elem_at, depth + 1, path)
                if layout.key_indirect and isinstance(key, Pointer):
                    key = key.target if key.target is not None else Unavailable(NOT_CAPTURED)
                if layout.elem_indirect and isinstance(value, Pointer):
                    value = value.target if value.target is not None else Unavailable(NOT_CAPTURED)
                if group in spare and not (_complete(key) and _complete(value)):
                    break  # the left-over budget ran out in this bucket: its entries so far are shown whole
                entries.append((key, value))
                if len(entries) >= self.limits.max_elems:
                    break
        if not entries and missing is None and length:
            missing = Unavailable(not_in_groups(looked) if looked else NOT_CAPTURED)
        return Map(t, length, entries, address, missing=missing if len(entries) < min(length, self.limits.max_elems)
                   else None)

    # interfaces

    def interface(self, t: GoType, raw: bytes, address: int, depth: int, path: tuple) -> GoValue:
        type_word, data_word = _Q.unpack_from(raw, 0)[0], _Q.unpack_from(raw, 8)[0]
        static = t.name
        if type_word == 0:
            return Interface(None, is_error=t.is_error, static_type=static)
        if t.empty:
            type_addr: int | Unavailable = type_word
        else:
            type_addr = self.snap.word(type_word + 8)  # itab.Type, as read at the call
            if isinstance(type_addr, Unavailable) and self.types is not None:
                from_file = self.types.itab_type(type_word - self.bias)
                type_addr = from_file + self.bias if from_file else type_addr
            if isinstance(type_addr, Unavailable):
                return Interface(f"<unknown type: {type_addr.reason}>", is_error=t.is_error, static_type=static)
        concrete = self.types.type_at(type_addr - self.bias) if self.types is not None else None
        if concrete is None:
            header = self.snap.get(type_addr, TYPE_SIZE)
            what = "interface" if t.empty else "itab"
            return Interface(f"<type at {type_addr:#x}>", Unavailable(
                f"the {what} word does not lead to a runtime type descriptor in the binary (a type made at "
                "run time, or a wrong --sig)" if isinstance(header, Unavailable) else
                "a type made at run time (not in the binary's type data)"), t.is_error, static)
        if t.name == "context.Context" or not self._followable(depth):
            return Interface(concrete.name, None, t.is_error, static)
        direct = self.types.is_direct_iface(type_addr - self.bias)
        if direct:
            # The data word is the value (a pointer, or a struct/array of one pointer).
            value = self.value(concrete, raw[8:16], address + 8, depth, path) if concrete.size == PTR_SIZE \
                else Unavailable(f"a direct interface value of {concrete.size} bytes")
        else:
            value = self.at(concrete, data_word, depth + 1, path)
        return Interface(concrete.name, value, t.is_error, static)


def _scalar(kind: Kind, raw: bytes) -> int | float | bool:
    if kind is Kind.BOOL:
        return raw[0] != 0
    if kind is Kind.FLOAT32:
        return struct.unpack("<f", raw)[0]
    if kind is Kind.FLOAT64:
        return struct.unpack("<d", raw)[0]
    return int.from_bytes(raw, "little", signed=kind in SIGNED_KINDS)


def decode_side(side: SidePlan, region: bytes, plan: FunctionPlan, types: RuntimeTypes | None, bias: int,
                function_name=None, hidden: bool = False) -> tuple[list, list]:
    """([(name, GoValue)] of the side's parameters, the same of its results)."""
    decoder = Decoder(side_snapshot(side, region), plan.limits, plan.layouts, types, bias, function_name)
    params: list = []
    results: list = []
    for value in side.values:
        if value.param.hidden and not hidden:
            continue
        (results if value.param.is_result else params).append((value.name, _decoded(decoder, value)))
    return params, results


def _decoded(decoder: Decoder, value) -> GoValue:
    if value.base is not None:
        return decoder.at(value.type, IMAGE_BASE + value.base, 0)
    if value.type.size == 0:
        return Struct(value.type, []) if value.type.kind is Kind.STRUCT else Array(value.type, [], value.type.length or 0)
    return Unavailable(value.reason or "not captured")


def decode_call(record, plan: FunctionPlan, types: RuntimeTypes | None, *, load_bias: int,
                wall_offset_ns: int = 0, function_name=None) -> Call:
    """A Call from one CallRecord of `plan`'s function.

    load_bias: runtime address minus ELF vaddr (0 unless PIE), for type and
    code pointers. wall_offset_ns: added to the monotonic entry time.
    function_name(vaddr): the name of the function at an ELF vaddr, for func values.
    """
    call = Call(plan.name, record.tgid, record.goid, record.start_ns + wall_offset_ns, record.latency_ns)
    entry, ret = record.regions(plan.ret_base)
    call.args, early = decode_side(plan.entry, entry, plan, types, load_bias, function_name)
    call.results = early + decode_side(plan.ret, ret, plan, types, load_bias, function_name)[1]
    return call
