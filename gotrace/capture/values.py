"""Decodes a completed call's captured bytes into Go values, and renders them as text (Go syntax) and JSON (the CLI contract).

Input: a gotrace.trace.args.CallRecord and the function's gotrace.capture.plan
plan. Each value's image is in Go's memory layout, so decoding walks the
type over the bytes; strings, slices and interfaces follow the plan's
derefs. Interface and error values name their concrete type from the
binary's own runtime type data (`RuntimeTypes`: moduledata's types section,
`_type.str` names), so no DWARF is needed for them.

Nothing is invented: bytes no operation filled (floats in vector registers,
memory that faulted, values the plan had no room for) become `Unavailable`.
"""

from __future__ import annotations

import math
import struct
import unicodedata
from dataclasses import dataclass, field

from gotrace.capture.plan import BYTES, IFACE_DATA, ITAB_TYPE, FunctionPlan, SidePlan, ValuePlan
from gotrace.binary.gotypes import FLOAT_KINDS, INTEGER_KINDS, SIGNED_KINDS, GoType, Kind
from gotrace.binary.encoding import MAX_UVARINT_BYTES, read_uvarint
from gotrace.binary.pclntab import MODULEDATA_TEXT_WORD, iter_moduledata

# Error types whose message is the string at the start of what they point to.
KNOWN_ERROR_TYPES = frozenset({"*errors.errorString", "*fmt.wrapError", "*fmt.wrapErrors"})

# runtime._type (internal/abi.Type) on 64-bit: tflag u8 at 20, kind u8 at 23, str nameOff i32 at 40.
_TYPE_TFLAG, _TYPE_KIND, _TYPE_STR = 20, 23, 40
_TFLAG_EXTRA_STAR = 2
_KIND_MASK = 0x1F
# moduledata word index of `types`: after text(22), etext, noptrdata..enoptrbss (8 words),
# [covctrs, ecovctrs from Go 1.20], end, gcdata, gcbss (checked against DWARF, Go 1.19-1.27).


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


# -- the binary's runtime type names ------------------------------------------------


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
            kind = Kind(kind_byte & _KIND_MASK)
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


# -- text: Go syntax ---------------------------------------------------------------


def quote(data: bytes) -> str:
    """Go's strconv.Quote of bytes: escapes, \\x for invalid UTF-8 and control characters."""
    out = ['"']
    text = data.decode("utf-8", "surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif ch == " " or (code < 0x7F) or unicodedata.category(ch)[0] in "LMNPS":
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_SIMPLE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                   "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def format_value(value: GoValue) -> str:
    """A value as a Go programmer would write it."""
    if isinstance(value, Unavailable):
        return f"<unavailable: {value.reason}>"
    if isinstance(value, Scalar):
        if isinstance(value.value, bool):
            return "true" if value.value else "false"
        if isinstance(value.value, float):
            return _float_text(value.value)
        if isinstance(value.value, complex):
            return f"({_float_text(value.value.real)}{value.value.imag:+}i)"
        if value.type.kind is Kind.UINTPTR:
            return f"{value.value:#x}"
        return str(value.value)
    if isinstance(value, Pointer):
        return "nil" if value.address == 0 else f"{value.address:#x}"
    if isinstance(value, Text):
        body = quote(value.data)
        if value.is_bytes:
            body = f"[]byte({body})"
        if value.truncated:
            body += f"...(len={value.length})"
        return body
    if isinstance(value, Slice):
        if value.nil:
            return "nil"
        name = value.type.name
        if value.elems is None:
            return f"{name}(len={value.length} cap={value.cap})"
        inner = ", ".join(format_value(e) for e in value.elems)
        if len(value.elems) < value.length:
            inner += ", ..."
        suffix = f"(len={value.length} cap={value.cap})" if len(value.elems) < value.length or value.cap != value.length else ""
        return f"{name}{{{inner}}}{suffix}"
    if isinstance(value, Struct):
        inner = ", ".join(f"{name}: {format_value(v)}" for name, v in value.fields)
        return f"{value.type.name}{{{inner}}}"
    if isinstance(value, Array):
        return f"{value.type.name}{{{', '.join(format_value(e) for e in value.elems)}}}"
    if isinstance(value, Interface):
        if value.concrete is None:
            return "<nil>"
        if value.value is None:
            return f"{value.concrete}(?)"
        return f"{value.concrete}({format_value(value.value)})"
    return repr(value)


def format_call(call: Call, *, local_time: bool = True) -> str:
    """`12:00:01.123456 pid=4242 goid=17 main.work(n=1000, s="hello") => (500500, <nil>) 1.05ms`"""
    import time

    from gotrace.output.latency import format_duration

    seconds, ns = divmod(call.ts_ns, 1_000_000_000)
    stamp = time.strftime("%H:%M:%S", time.localtime(seconds) if local_time else time.gmtime(seconds))
    args = ", ".join(f"{name}={format_value(v)}" for name, v in call.args)
    line = f"{stamp}.{ns // 1000:06d} pid={call.pid} goid={call.goid} {call.func}({args})"
    if call.results:
        parts = [format_value(v) if name.startswith("~") else f"{name}={format_value(v)}"
                 for name, v in call.results]
        line += " => " + (parts[0] if len(parts) == 1 and call.results[0][0].startswith("~") else f"({', '.join(parts)})")
    return f"{line} {format_duration(call.latency_ns)}"


# -- JSON: the CLI contract ---------------------------------------------------------


def _json_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def value_json(value: GoValue):
    """A value as the CLI contract's JSON VALUE."""
    if isinstance(value, Unavailable):
        return {"unavailable": value.reason}
    if isinstance(value, Scalar):
        v = value.value
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return _float_text(v)
        if isinstance(v, complex):
            return {"real": v.real, "imag": v.imag}
        return v
    if isinstance(value, Pointer):
        return None if value.address == 0 else f"{value.address:#x}"
    if isinstance(value, Text):
        if not value.truncated:
            return _json_text(value.data)
        out = {"value": _json_text(value.data), "len": value.length, "truncated": True}
        if value.cap is not None:
            out["cap"] = value.cap
        return out
    if isinstance(value, Slice):
        if value.nil:
            return None
        if value.elems is None:
            return {"len": value.length, "cap": value.cap}
        elems = [value_json(e) for e in value.elems]
        if len(elems) < value.length:
            return {"value": elems, "len": value.length, "cap": value.cap, "truncated": True}
        return elems
    if isinstance(value, Struct):
        return {name: value_json(v) for name, v in value.fields}
    if isinstance(value, Array):
        return [value_json(e) for e in value.elems]
    if isinstance(value, Interface):
        if value.concrete is None:
            return None
        out = {"type": value.concrete}
        if value.value is not None:
            out["value"] = value_json(value.value)
        return out
    return None


def call_json(call: Call) -> dict:
    """One call as the contract's JSON object."""
    return {"func": call.func, "pid": call.pid, "goid": call.goid, "ts_ns": call.ts_ns,
            "latency_ns": call.latency_ns,
            "args": {name: value_json(v) for name, v in call.args},
            "results": {name: value_json(v) for name, v in call.results}}
