"""Text (Go syntax) and JSON (the CLI contract) of `gotrace args` calls and their decoded values."""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass

from gotrace.binary.gotypes import Kind
from gotrace.capture.values import Array, Call, GoValue, Interface, Pointer, Scalar, Slice, Struct, Text, Unavailable
from gotrace.output.latency import format_duration


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


# -- the closing line -----------------------------------------------------------------


@dataclass(frozen=True)
class ArgsSummary:
    """How an `args` trace ended: calls shown, and every call dropped or lost, by cause."""

    shown: int
    undecodable: int
    stats: dict  # gotrace.trace.args.STAT_NAMES values
    max_rate: int
    limit_reached: bool

    def text(self) -> str:
        stats = self.stats
        causes = []
        if stats["dropped_rate_limit"]:
            causes.append(f"{stats['dropped_rate_limit']} over --max-rate {self.max_rate}/s")
        if stats["dropped_ringbuf_full"]:
            causes.append(f"{stats['dropped_ringbuf_full']} because the reader fell behind (ring buffer full)")
        if self.undecodable:
            causes.append(f"{self.undecodable} undecodable")
        dropped = stats["dropped_rate_limit"] + stats["dropped_ringbuf_full"] + self.undecodable
        line = f"gotrace: {self.shown} call{'' if self.shown == 1 else 's'} shown"
        if self.limit_reached:
            line += " (-n reached)"
        line += f"; {dropped} dropped" + (f" ({', '.join(causes)})" if causes else "")
        if stats["returns_without_entry"]:
            line += (f"; {stats['returns_without_entry']} returns without a recorded entry "
                     "(calls begun before tracing, or evicted)")
        if stats["stale_entries"]:
            line += f"; {stats['stale_entries']} calls never returned (panics)"
        return line
