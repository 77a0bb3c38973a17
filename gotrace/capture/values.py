"""Decodes a completed call's captured bytes into Go values (rendering them is gotrace.output.args' job).

Input: a gotrace.trace.args.CallRecord and the function's gotrace.capture.plan
plan. Each value's image is in Go's memory layout, so decoding walks the
type over the bytes; strings, slices and interfaces follow the plan's
derefs. Interface and error values name their concrete type from the
binary's own runtime type data (gotrace.binary.rtypes: moduledata's types
section, `_type.str` names), so no DWARF is needed for them.

Nothing is invented: bytes no operation filled (floats in vector registers,
memory that faulted, values the plan had no room for) become `Unavailable`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from gotrace.capture.plan import BYTES, IFACE_DATA, ITAB_TYPE, FunctionPlan, SidePlan, ValuePlan
from gotrace.binary.gotypes import FLOAT_KINDS, INTEGER_KINDS, SIGNED_KINDS, GoType, Kind
from gotrace.binary.rtypes import KIND_MASK, RuntimeTypes

# Error types whose message is the string at the start of what they point to.
KNOWN_ERROR_TYPES = frozenset({"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors"})

# -- decoded values -------------------------------------------------------------


@dataclass(frozen=True)
class Unavailable:
    reason: str


@dataclass(frozen=True)
class Scalar:
    type: GoType
    value: int | float | bool


@dataclass(frozen=True)
class Pointer:
    type_name: str
    address: int  # 0: nil


@dataclass(frozen=True)
class Text:
    """A string or []byte: the captured prefix and the full length."""

    data: bytes
    length: int
    is_bytes: bool = False
    cap: int | None = None

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.length


@dataclass(frozen=True)
class Slice:
    type: GoType
    length: int
    cap: int
    elems: list | None  # None: elements not captured (not of a basic type)
    nil: bool = False


@dataclass(frozen=True)
class Struct:
    type: GoType
    fields: list  # [(name, value)]


@dataclass(frozen=True)
class Array:
    type: GoType
    elems: list


@dataclass(frozen=True)
class Interface:
    concrete: str | None  # None: a nil interface
    value: object = None  # decoded value of the concrete type, or None when unknown
    is_error: bool = False


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


_KIND_SIZES = {Kind.BOOL: 1, Kind.INT: 8, Kind.INT8: 1, Kind.INT16: 2, Kind.INT32: 4, Kind.INT64: 8,
               Kind.UINT: 8, Kind.UINT8: 1, Kind.UINT16: 2, Kind.UINT32: 4, Kind.UINT64: 8,
               Kind.UINTPTR: 8, Kind.FLOAT32: 4, Kind.FLOAT64: 8}
_POINTERISH = (Kind.POINTER, Kind.UNSAFE_POINTER, Kind.MAP, Kind.CHAN, Kind.FUNC)


# -- decoding -------------------------------------------------------------------


class _SideDecoder:
    def __init__(self, side: SidePlan, buf: bytes, ok: int, fail: int, types: RuntimeTypes | None, bias: int):
        self.side, self.buf, self.ok, self.fail, self.types, self.bias = side, buf, ok, fail, types, bias
        self.unreadable = ()

    def word(self, off: int) -> int:
        return int.from_bytes(self.buf[off:off + 8], "little")

    def value(self, plan: ValuePlan) -> GoValue:
        if plan.base is None:
            if plan.type.size == 0:
                return Struct(plan.type, []) if plan.type.kind is Kind.STRUCT else Array(plan.type, [])
            return Unavailable(plan.reason or "not captured")
        for index in plan.image_ops:
            if self.fail >> index & 1 or not self.ok >> index & 1:
                return Unavailable("its stack slot could not be read")
        self.unreadable = plan.unreadable
        return self.decode(plan.type, plan.base)

    def _unreadable(self, off: int, size: int) -> str | None:
        for u in self.unreadable:
            if off < u.offset + u.size and u.offset < off + max(size, 1):
                return u.reason
        return None

    def _deref(self, off: int, what: str, address: int):
        """(bytes, None) of a completed deref, or (None, reason)."""
        deref = self.side.derefs.get((off, what))
        if deref is None:
            return None, "not captured (plan full: fewer values or a smaller --str-len)"
        if self.fail >> deref.op_index & 1:
            return None, f"unreadable memory at {address:#x}"
        if not self.ok >> deref.op_index & 1:
            return None, "not read"
        return deref, None

    def decode(self, t: GoType, off: int) -> GoValue:
        kind = t.kind
        if kind is Kind.STRUCT:
            return Struct(t, [(f.name, self.decode(f.type, off + f.offset)) for f in t.fields])
        if kind is Kind.ARRAY:
            elem = t.elem
            return Array(t, [self.decode(elem, off + i * elem.size) for i in range(t.length or 0)])
        reason = self._unreadable(off, t.size)
        if reason is not None:
            return Unavailable(reason)
        if kind in INTEGER_KINDS or kind is Kind.BOOL or kind in FLOAT_KINDS:
            return Scalar(t, _scalar(kind, self.buf[off:off + t.size]))
        if kind in (Kind.COMPLEX64, Kind.COMPLEX128):
            half = t.size // 2
            fmt = "<f" if half == 4 else "<d"
            real = struct.unpack_from(fmt, self.buf, off)[0]
            imag = struct.unpack_from(fmt, self.buf, off + half)[0]
            return Scalar(t, complex(real, imag))
        if kind in _POINTERISH:
            return Pointer(t.name, self.word(off))
        if kind is Kind.STRING:
            return self.text(off, is_bytes=False)
        if kind is Kind.SLICE:
            return self.slice(t, off)
        if kind is Kind.INTERFACE:
            return self.interface(t, off)
        return Unavailable(f"values of type {t.name} are not decoded")

    def text(self, off: int, is_bytes: bool, cap: int | None = None) -> GoValue:
        ptr, length = self.word(off), self.word(off + 8)
        if length == 0:
            return Text(b"", 0, is_bytes, cap)
        if ptr == 0 or length >> 48:
            return Unavailable(f"invalid header (data {ptr:#x}, len {length})")
        deref, reason = self._deref(off, BYTES, ptr)
        if deref is None:
            return Unavailable(reason)
        take = min(length, deref.size)
        return Text(bytes(self.buf[deref.dst:deref.dst + take]), length, is_bytes, cap)

    def slice(self, t: GoType, off: int) -> GoValue:
        ptr, length, cap = self.word(off), self.word(off + 8), self.word(off + 16)
        if ptr == 0 and length == 0:
            return Slice(t, 0, cap, [], nil=True)
        elem = t.elem
        if elem is not None and elem.kind is Kind.UINT8:
            return self.text(off, is_bytes=True, cap=cap)
        if elem is None or not (elem.kind in INTEGER_KINDS or elem.kind in FLOAT_KINDS or elem.kind is Kind.BOOL):
            return Slice(t, length, cap, None)
        if length == 0:
            return Slice(t, 0, cap, [])
        deref, reason = self._deref(off, BYTES, ptr)
        if deref is None:
            return Unavailable(reason)
        count = min(length, deref.size // elem.size)
        data = self.buf[deref.dst:deref.dst + count * elem.size]
        elems = [Scalar(elem, _scalar(elem.kind, data[i * elem.size:(i + 1) * elem.size])) for i in range(count)]
        return Slice(t, length, cap, elems)

    def interface(self, t: GoType, off: int) -> GoValue:
        type_word, data_word = self.word(off), self.word(off + 8)
        if type_word == 0:
            return Interface(None, is_error=t.is_error)
        if t.empty:
            type_ptr = type_word
        else:
            deref, reason = self._deref(off, ITAB_TYPE, type_word)
            if deref is None:
                return Interface(f"<unknown type: {reason}>", is_error=t.is_error)
            type_ptr = self.word(deref.dst)
        described = self.types.describe(type_ptr - self.bias) if self.types is not None else None
        if described is None:
            return Interface(f"<type at {type_ptr:#x}>", is_error=t.is_error)
        name, kind_byte = described
        return Interface(name, self._concrete(name, kind_byte, off + 8, data_word), is_error=t.is_error)

    def _concrete(self, name: str, kind_byte: int, data_off: int, data_word: int) -> GoValue | None:
        try:
            kind = Kind(kind_byte & KIND_MASK)
        except ValueError:
            return None
        # Pointer-shaped types are stored in the data word itself (Go's "direct interface").
        if kind in _POINTERISH and (name not in KNOWN_ERROR_TYPES or data_word == 0):
            return Pointer(name, data_word)
        if data_word == 0:
            return None
        if name not in KNOWN_ERROR_TYPES and kind is not Kind.STRING and kind not in _KIND_SIZES:
            return None
        deref, reason = self._deref(data_off, IFACE_DATA, data_word)
        if deref is None:
            return Unavailable(reason)
        if name in KNOWN_ERROR_TYPES or kind is Kind.STRING:
            return self.text(deref.dst, is_bytes=False)
        size = _KIND_SIZES[kind]
        return Scalar(GoType(name, kind, size, size), _scalar(kind, self.buf[deref.dst:deref.dst + size]))


def _scalar(kind: Kind, raw: bytes) -> int | float | bool:
    if kind is Kind.BOOL:
        return raw[0] != 0
    if kind is Kind.FLOAT32:
        return struct.unpack("<f", raw)[0]
    if kind is Kind.FLOAT64:
        return struct.unpack("<d", raw)[0]
    return int.from_bytes(raw, "little", signed=kind in SIGNED_KINDS)


def decode_call(record, plan: FunctionPlan, types: RuntimeTypes | None, *, load_bias: int,
                wall_offset_ns: int = 0) -> Call:
    """A Call from one CallRecord of `plan`'s function.

    load_bias: runtime address minus ELF vaddr (0 unless PIE), for type
    pointers. wall_offset_ns: added to the monotonic entry time.
    """
    call = Call(plan.name, record.tgid, record.goid, record.start_ns + wall_offset_ns, record.latency_ns)
    entry = _SideDecoder(plan.entry, record.args, record.args_ok, record.args_fail, types, load_bias)
    call.args = [(v.name, entry.value(v)) for v in plan.entry.values if not v.param.hidden]
    ret = _SideDecoder(plan.ret, record.results, record.results_ok, record.results_fail, types, load_bias)
    call.results = [(v.name, ret.value(v)) for v in plan.ret.values]
    return call
