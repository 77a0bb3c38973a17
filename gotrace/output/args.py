"""Text (Go syntax) and JSON (the CLI contract) of `gotrace args` calls and their decoded values."""

from __future__ import annotations

import base64
import datetime
import math
import time
import unicodedata
from dataclasses import dataclass

from gotrace.binary.gotypes import Kind
from gotrace.capture.values import (
    KNOWN_ERROR_TYPES, NOT_CAPTURED, Array, Call, Chan, Func, GoValue, Interface, Map, Pointer, Scalar, Slice, Struct, Text,
    Unavailable,
)
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


def go_duration(ns: int) -> str:
    """time.Duration(ns).String(), as Go writes it: "1.5ms", "1h2m3.5s", "0s"."""
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        if u == 0:
            return "0s"
        if u < 1_000:
            text = f"{u}ns"
        elif u < 1_000_000:
            text = _frac(u, 3) + "µs"
        else:
            text = _frac(u, 6) + "ms"
    else:
        seconds, frac = divmod(u, 1_000_000_000)
        text = f"{seconds % 60}" + (f".{frac:09d}".rstrip("0") if frac else "") + "s"
        minutes = seconds // 60
        if minutes:
            text = f"{minutes % 60}m" + text
            hours = minutes // 60
            if hours:
                text = f"{hours}h" + text
    return ("-" if neg else "") + text


def _frac(value: int, prec: int) -> str:
    whole, frac = divmod(value, 10 ** prec)
    digits = f"{frac:0{prec}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else f"{whole}"


_UNIX_TO_INTERNAL = 62135596800   # seconds from year 1 to 1970
_WALL_TO_INTERNAL = 59453308800   # seconds from year 1 to 1885
_HAS_MONOTONIC = 1 << 63


def go_time(value: Struct) -> str | None:
    """time.Time.String() of a decoded time.Time, as Go writes it ("2009-11-10 23:00:00 +0000 UTC m=+0.000000001").
    When its location's zone was not captured, the instant in UTC and why ("... +0000 UTC (zone of Local not
    captured)"); None when its own fields were not."""
    fields = dict(value.fields)
    wall, ext, loc = fields.get("wall"), fields.get("ext"), fields.get("loc")
    if not (isinstance(wall, Scalar) and isinstance(ext, Scalar) and isinstance(loc, Pointer)):
        return None
    wall_v, ext_v = wall.value & 0xFFFFFFFFFFFFFFFF, ext.value
    if wall_v & _HAS_MONOTONIC:
        sec = _WALL_TO_INTERNAL + (((wall_v << 1) & 0xFFFFFFFFFFFFFFFF) >> 31)
        nsec = wall_v & ((1 << 30) - 1)
    else:
        sec, nsec = ext_v, wall_v & ((1 << 30) - 1)
    unix = sec - _UNIX_TO_INTERNAL
    zone = _zone(loc, unix)
    note = ""
    if zone is None:
        where = _location_name(loc)
        zone, note = ("UTC", 0), f" (zone of {where} not captured)" if where else " (zone not captured)"
    name, offset = zone
    local = unix + offset
    days, secs = divmod(local, 86400)
    try:
        date = datetime.date(1970, 1, 1) + datetime.timedelta(days=days)
    except OverflowError:
        return None
    text = f"{date.year:04d}-{date.month:02d}-{date.day:02d} {secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
    if nsec:
        text += f".{nsec:09d}".rstrip("0")
    sign = "-" if offset < 0 else "+"
    minutes = abs(offset) // 60
    text += f" {sign}{minutes // 60:02d}{minutes % 60:02d} "
    text += name if name else f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    if wall_v & _HAS_MONOTONIC:
        m = abs(ext_v)
        whole, frac = divmod(m, 1_000_000_000)
        text += f" m={'-' if ext_v < 0 else '+'}{whole}.{frac:09d}"
    return text + note


def _location_name(loc: Pointer) -> str | None:
    target = loc.target
    if isinstance(target, Struct):
        name = dict(target.fields).get("name")
        if isinstance(name, Text) and not name.truncated:
            return name.data.decode("utf-8", "replace")
    return None


def _zone(loc: Pointer, unix: int) -> tuple[str, int] | None:
    """(abbreviation, offset in seconds) of a *time.Location at a Unix time; nil is UTC."""
    if loc.address == 0:
        return "UTC", 0
    target = loc.target
    if not isinstance(target, Struct):
        return None
    fields = dict(target.fields)
    start, end, cached = fields.get("cacheStart"), fields.get("cacheEnd"), fields.get("cacheZone")
    if not (isinstance(start, Scalar) and isinstance(end, Scalar) and isinstance(cached, Pointer)):
        return None
    if cached.address == 0 or not start.value <= unix < end.value or not isinstance(cached.target, Struct):
        return None
    zone = dict(cached.target.fields)
    name, offset = zone.get("name"), zone.get("offset")
    if not isinstance(name, Text) or name.truncated or not isinstance(offset, Scalar):
        return None
    return name.data.decode("utf-8", "replace"), offset.value


def format_value(value: GoValue) -> str:
    """A value as a Go programmer would write it."""
    if isinstance(value, Unavailable):
        return "<not captured>" if value.reason == NOT_CAPTURED else f"<unavailable: {value.reason}>"
    if isinstance(value, Scalar):
        if isinstance(value.value, bool):
            return "true" if value.value else "false"
        if isinstance(value.value, float):
            return _float_text(value.value)
        if isinstance(value.value, complex):
            return f"({_float_text(value.value.real)}{value.value.imag:+}i)"
        if value.type.name == "time.Duration":
            return go_duration(value.value)
        if value.type.kind is Kind.UINTPTR:
            return f"{value.value:#x}"
        return str(value.value)
    if isinstance(value, Pointer):
        if value.address == 0:
            return "nil"
        if value.cycle:
            return f"({value.type_name})({value.address:#x} <cycle>)"
        if value.target is None:
            if value.type_name.startswith(("*", "map[")):
                return f"({value.type_name})({value.address:#x})"
            return f"{value.address:#x}"
        if isinstance(value.target, Unavailable):
            return f"({value.type_name})({value.address:#x} <unavailable: {value.target.reason}>)"
        return "&" + format_value(value.target)
    if isinstance(value, Text):
        body = quote(value.data)
        if value.is_bytes:
            body = f"{value.type_name or '[]byte'}({body})"
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
        if value.missing is not None:
            inner += (", " if inner else "") + f"<unavailable: {value.missing.reason}>"
        elif len(value.elems) < value.length:
            inner += ", ..."
        cut = len(value.elems) < value.length or value.cap != value.length
        return f"{name}{{{inner}}}" + (f"(len={value.length} cap={value.cap})" if cut else "")
    if isinstance(value, Struct):
        if value.type.name == "time.Time":
            text = go_time(value)
            if text is not None:
                return text
        inner = ", ".join(f"{name}: {format_value(v)}" for name, v in value.fields if name != "_")
        return f"{value.type.name}{{{inner}}}"
    if isinstance(value, Array):
        inner = ", ".join(format_value(e) for e in value.elems)
        if len(value.elems) < value.length:
            inner += ", ..."
        return f"{value.type.name}{{{inner}}}"
    if isinstance(value, Map):
        if value.nil:
            return "nil"
        if value.entries is None:
            length = f"len={value.length}" if value.length >= 0 else "len unknown"
            return f"{value.type.name}({length})"
        inner = ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.entries)
        if value.missing is not None:
            inner += (", " if inner else "") + f"<unavailable: {value.missing.reason}>"
        if len(value.entries) < value.length:
            inner += f"{', ' if inner else ''}...(len={value.length})"
        return f"{value.type.name}{{{inner}}}"
    if isinstance(value, Chan):
        if value.address == 0:
            return "nil"
        if value.length is None:
            return f"({value.type.name})({value.address:#x})"
        return f"({value.type.name})({value.address:#x} len={value.length} cap={value.cap})"
    if isinstance(value, Func):
        if value.address == 0:
            return "nil"
        return value.name if value.name else f"({value.type.name})({value.address:#x})"
    if isinstance(value, Interface):
        return _interface_text(value)
    return repr(value)


def error_message(value: Interface) -> Text | None:
    """The message of an errors.New / fmt.Errorf error: its first field, a string."""
    if value.concrete not in KNOWN_ERROR_TYPES or not isinstance(value.value, Pointer):
        return None
    target = value.value.target
    if isinstance(target, Struct) and target.fields and isinstance(target.fields[0][1], Text):
        return target.fields[0][1]
    return None


def _interface_text(value: Interface) -> str:
    if value.concrete is None:
        return "<nil>"
    if value.static_type == "context.Context" or value.value is None:
        return f"{value.concrete}(…)" if value.static_type != "context.Context" else f"context.Context({value.concrete})"
    message = error_message(value)
    if message is not None:
        return f"{value.concrete}({format_value(message)})"
    inner = value.value
    if isinstance(inner, Unavailable):
        return f"{value.concrete}(<unavailable: {inner.reason}>)"
    if isinstance(inner, (Scalar, Text)) and not (isinstance(inner, Scalar) and inner.type.name == "time.Duration"):
        return f"{value.concrete}({format_value(inner)})"
    return format_value(inner)


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


def _json_text(data: bytes, truncated: bool = False) -> dict:
    """{"value": text} for UTF-8, else {"base64": ...}: no byte is lost either way. A cut string
    that ends inside a UTF-8 sequence keeps its whole characters as text."""
    try:
        return {"value": data.decode("utf-8")}
    except UnicodeDecodeError as e:
        if truncated and e.reason == "unexpected end of data" and e.end == len(data):
            try:
                return {"value": data[:e.start].decode("utf-8")}
            except UnicodeDecodeError:
                pass
    return {"base64": base64.b64encode(data).decode("ascii")}


def value_json(value: GoValue):
    """A value as the CLI contract's JSON VALUE (extended as README describes)."""
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
        if value.address == 0:
            return None
        if value.cycle:
            return {"pointer": f"{value.address:#x}", "cycle": True}
        if value.target is None:
            return f"{value.address:#x}"
        return {"pointer": f"{value.address:#x}", "value": value_json(value.target)}
    if isinstance(value, Text):
        body = _json_text(value.data, value.truncated)
        if not value.truncated and "value" in body:
            return body["value"]
        if value.truncated:
            body.update({"len": value.length, "truncated": True})
            if value.cap is not None:
                body["cap"] = value.cap
        return body
    if isinstance(value, Slice):
        if value.nil:
            return None
        if value.elems is None:
            return {"len": value.length, "cap": value.cap}
        elems = [value_json(e) for e in value.elems]
        if value.missing is not None:
            return {"value": elems, "len": value.length, "cap": value.cap, "truncated": True,
                    "rest": value_json(value.missing)}
        if len(elems) < value.length:
            return {"value": elems, "len": value.length, "cap": value.cap, "truncated": True}
        return elems
    if isinstance(value, Struct):
        if value.type.name == "time.Time":
            text = go_time(value)
            if text is not None:
                return text
        return {name: value_json(v) for name, v in value.fields if name != "_"}
    if isinstance(value, Array):
        elems = [value_json(e) for e in value.elems]
        if len(elems) < value.length:
            return {"value": elems, "len": value.length, "truncated": True}
        return elems
    if isinstance(value, Map):
        if value.nil:
            return None
        out: dict = {"len": value.length if value.length >= 0 else None}
        if value.entries is not None:
            out["entries"] = [{"key": value_json(k), "value": value_json(v)} for k, v in value.entries]
            if len(value.entries) < value.length:
                out["truncated"] = True
            if value.missing is not None:
                out["rest"] = value_json(value.missing)
        return out
    if isinstance(value, Chan):
        if value.address == 0:
            return None
        if value.length is None:
            return f"{value.address:#x}"
        return {"chan": f"{value.address:#x}", "len": value.length, "cap": value.cap}
    if isinstance(value, Func):
        if value.address == 0:
            return None
        return {"func": value.name, "pointer": f"{value.address:#x}"} if value.name else f"{value.address:#x}"
    if isinstance(value, Interface):
        if value.concrete is None:
            return None
        out = {"type": value.concrete}
        message = error_message(value)
        if message is not None:
            out["value"] = value_json(message)
        elif value.value is not None and value.static_type != "context.Context":
            out["value"] = value_json(value.value)
        return out
    return None


def call_json(call: Call) -> dict:
    """One call as the contract's JSON object (version 2: with "event": "call")."""
    return {"event": "call", "func": call.func, "pid": call.pid, "goid": call.goid, "ts_ns": call.ts_ns,
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
    min_latency_ns: int = 0
    detached: int = 0  # functions the cost guard detached: their later calls were not seen

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
        if self.min_latency_ns:
            line += (f"; {stats.get('faster_than_min_latency', 0)} faster than --min-latency "
                     f"{go_duration(self.min_latency_ns)} not shown")
        if self.detached:
            line += (f"; {self.detached} function{'' if self.detached == 1 else 's'} detached by the cost guard "
                     "(calls after that not seen; --max-overhead)")
        return line
