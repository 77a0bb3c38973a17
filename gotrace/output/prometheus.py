"""Prometheus exposition of latency histograms: the text format 0.0.4, and the delimited protobuf format with native histograms.

Data in (MetricsSnapshot), bytes out: nothing here serves HTTP or reads the
kernel. The metric names, labels and bucket bounds are fixed (the README
lists them):

* gotrace_function_latency_seconds (histogram; labels function, binary, pid),
  cumulative since gotrace started. Classic buckets: `le` bounds are a fixed
  subset of the kernel's log-linear bucket bounds (probes/gotrace.h), from
  1.024 us to 2^40 ns (18.3 min), each at most 5% above the one before, so a
  histogram_quantile() falls in the same classic bucket as gotrace's own
  percentile and within 5% of it. A bound b ns is written as le = (b - 1) ns:
  the kernel counts integer nanoseconds, so "below b" is exactly "<= b - 1".
  Native buckets (protobuf only): schema 7, 128 exponential buckets per power
  of two, as many as the kernel's linear sub-buckets; each kernel bucket goes
  to the native bucket of its midpoint.
* gotrace_function_unmatched_total (counter): calls found unwound without
  returning (panics), per function and pid.
* gotrace_function_in_flight (gauge): calls running now, per function and pid.
* gotrace_probe_hits_total (counter): entry probe hits per function.
* gotrace_build_info (gauge, 1): gotrace's version and the traced binary's Go version.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gotrace.output.histogram import bucket_bounds, bucket_index, num_buckets

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROTOBUF_CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

LATENCY = "gotrace_function_latency_seconds"
UNMATCHED = "gotrace_function_unmatched_total"
IN_FLIGHT = "gotrace_function_in_flight"
PROBE_HITS = "gotrace_probe_hits_total"
BUILD_INFO = "gotrace_build_info"

HELP = {
    LATENCY: "Latency of calls of a Go function, from entry to return, per goroutine; cumulative since gotrace "
             "started.",
    UNMATCHED: "Calls of a Go function found unwound without returning (a panic), since gotrace started.",
    IN_FLIGHT: "Calls of a Go function running now (entered, not yet returned).",
    PROBE_HITS: "Entry probe hits of a Go function on a goroutine of a traced process, since gotrace started.",
    BUILD_INFO: "gotrace's version and the Go version of the traced binary; always 1.",
}

CLASSIC_LOW_NS = 1 << 10
CLASSIC_HIGH_NS = 1 << 40
CLASSIC_MAX_RATIO = 1.05
NATIVE_SCHEMA = 7
NATIVE_ZERO_THRESHOLD = 2.0 ** -128  # as Prometheus's Go client: only 0 s falls in the zero bucket

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SeriesCounts:
    """One traced function in one process, cumulative since gotrace started."""

    function: str
    pid: int
    buckets: dict[int, int] = field(default_factory=dict)  # kernel bucket index -> calls
    sum_ns: int = 0
    unmatched: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape shows."""

    binary: str
    go_version: str
    gotrace_version: str
    series: Sequence[SeriesCounts]
    probe_hits: Sequence[tuple[str, int]]  # (function, entry probe hits)


# ---- bucket bounds ----


@functools.cache
def classic_bounds_ns() -> tuple[int, ...]:
    """The classic bucket bounds in ns: kernel bucket lower bounds from CLASSIC_LOW_NS to CLASSIC_HIGH_NS,
    each the largest kernel bound at most CLASSIC_MAX_RATIO times the one before."""
    lows = [bucket_bounds(i)[0] for i in range(num_buckets())]
    lows = [low for low in lows if CLASSIC_LOW_NS <= low <= CLASSIC_HIGH_NS]
    bounds = [CLASSIC_LOW_NS]
    while bounds[-1] < CLASSIC_HIGH_NS:
        nxt = lows[bisect.bisect_right(lows, bounds[-1] * CLASSIC_MAX_RATIO) - 1]
        if nxt <= bounds[-1]:
            raise ValueError("kernel buckets are coarser than CLASSIC_MAX_RATIO")
        bounds.append(nxt)
    return tuple(bounds)


@functools.cache
def _classic_bound_indexes() -> tuple[int, ...]:
    return tuple(bucket_index(b) for b in classic_bounds_ns())


@functools.cache
def classic_le_texts() -> tuple[str, ...]:
    """The `le` label of each classic bound (seconds, (b - 1) ns), then "+Inf"."""
    return tuple(_float_text((b - 1) / NS_PER_S) for b in classic_bounds_ns()) + ("+Inf",)


def classic_cumulative(buckets: dict[int, int]) -> list[int]:
    """Calls below each classic bound (the same order as classic_bounds_ns()), then all calls (+Inf)."""
    indexes = sorted(buckets)
    prefix = [0]
    for index in indexes:
        prefix.append(prefix[-1] + buckets[index])
    return [prefix[bisect.bisect_left(indexes, bound)] for bound in _classic_bound_indexes()] + [prefix[-1]]


def _bucket_value_s(index: int) -> float:
    """The value that represents kernel bucket `index`, in seconds: its midpoint (exact for 1 ns buckets)."""
    low, high = bucket_bounds(index)
    return (low if high - low == 1 else (low + high) / 2) / NS_PER_S


def native_index(value_s: float, schema: int = NATIVE_SCHEMA) -> int:
    """The native histogram bucket holding value_s > 0: i with 2^((i-1)/2^schema) < value_s <= 2^(i/2^schema)."""
    scale = 1 << schema
    i = math.ceil(math.log2(value_s) * scale)
    # float rounding at a boundary: settle on the definition
    if 2.0 ** (i / scale) < value_s:
        i += 1
    elif 2.0 ** ((i - 1) / scale) >= value_s:
        i -= 1
    return i


def native_buckets(buckets: dict[int, int]) -> tuple[int, dict[int, int]]:
    """(zero bucket count, native bucket index -> count) of kernel buckets, schema NATIVE_SCHEMA."""
    zero = 0
    out: dict[int, int] = {}
    for index, count in buckets.items():
        if not count:
            continue
        value_s = _bucket_value_s(index)
        if value_s <= NATIVE_ZERO_THRESHOLD:
            zero += count
            continue
        i = native_index(value_s)
        out[i] = out.get(i, 0) + count
    return zero, out


def native_spans(counts: dict[int, int]) -> tuple[list[tuple[int, int]], list[int]]:
    """(spans as (offset, length), deltas) of native buckets, as the protobuf format encodes them: the first
    span's offset is its first index, later ones the gap after the previous span; deltas are each bucket's
    count minus the previous bucket's."""
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    previous_count = 0
    end = None  # index after the last bucket of the current span
    for index in sorted(counts):
        if end is not None and index == end:
            offset, length = spans[-1]
            spans[-1] = (offset, length + 1)
        else:
            spans.append((index if end is None else index - end, 1))
        end = index + 1
        deltas.append(counts[index] - previous_count)
        previous_count = counts[index]
    return spans, deltas


# ---- text format 0.0.4 ----


def _float_text(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, object]]) -> str:
    return ",".join(f'{name}="{_escape_label(str(value))}"' for name, value in pairs)


def _header(lines: list[str], name: str, kind: str) -> None:
    lines.append(f"# HELP {name} {_escape_help(HELP[name])}")
    lines.append(f"# TYPE {name} {kind}")


def _series_labels(snapshot: MetricsSnapshot, series: SeriesCounts) -> list[tuple[str, object]]:
    return [("function", series.function), ("binary", snapshot.binary), ("pid", series.pid)]


def render_text(snapshot: MetricsSnapshot) -> str:
    """The snapshot in the Prometheus text exposition format 0.0.4 (classic histogram buckets)."""
    lines: list[str] = []
    les = classic_le_texts()
    _header(lines, LATENCY, "histogram")
    for series in snapshot.series:
        labels = _labels(_series_labels(snapshot, series))
        cumulative = classic_cumulative(series.buckets)
        lines += [f'{LATENCY}_bucket{{{labels},le="{le}"}} {count}' for le, count in zip(les, cumulative)]
        lines.append(f"{LATENCY}_sum{{{labels}}} {_float_text(series.sum_ns / NS_PER_S)}")
        lines.append(f"{LATENCY}_count{{{labels}}} {cumulative[-1]}")
    _header(lines, UNMATCHED, "counter")
    lines += [f"{UNMATCHED}{{{_labels(_series_labels(snapshot, s))}}} {s.unmatched}" for s in snapshot.series]
    _header(lines, IN_FLIGHT, "gauge")
    lines += [f"{IN_FLIGHT}{{{_labels(_series_labels(snapshot, s))}}} {s.in_flight}" for s in snapshot.series]
    _header(lines, PROBE_HITS, "counter")
    lines += [f"{PROBE_HITS}{{{_labels([('function', fn), ('binary', snapshot.binary)])}}} {hits}"
              for fn, hits in snapshot.probe_hits]
    _header(lines, BUILD_INFO, "gauge")
    lines.append(f"{BUILD_INFO}{{{_labels([('version', snapshot.gotrace_version), ('go_version', snapshot.go_version)])}}} 1")
    return "\n".join(lines) + "\n"


# ---- protobuf: io.prometheus.client.MetricFamily, varint-length delimited ----

_COUNTER, _GAUGE, _HISTOGRAM = 0, 1, 4  # enum MetricType


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63) if n < 0 else n << 1


def _f_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _f_sint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(_zigzag(value))


def _f_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def _f_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _f_string(number: int, text: str) -> bytes:
    return _f_bytes(number, text.encode())


def _pb_labels(pairs: Iterable[tuple[str, object]]) -> bytes:
    # Metric.label = 1: LabelPair {name = 1, value = 2}
    return b"".join(_f_bytes(1, _f_string(1, name) + _f_string(2, str(value))) for name, value in pairs)


def _pb_family(name: str, kind: int, metrics: Iterable[bytes]) -> bytes:
    # MetricFamily {name = 1, help = 2, type = 3, metric = 4}
    body = _f_string(1, name) + _f_string(2, HELP[name]) + _f_varint(3, kind)
    body += b"".join(_f_bytes(4, metric) for metric in metrics)
    return _varint(len(body)) + body


def _pb_histogram(series: SeriesCounts) -> bytes:
    # Histogram {sample_count = 1, sample_sum = 2, bucket = 3, schema = 5, zero_threshold = 6,
    #            zero_count = 7, positive_span = 12, positive_delta = 13}
    cumulative = classic_cumulative(series.buckets)
    out = [_f_varint(1, cumulative[-1]), _f_double(2, series.sum_ns / NS_PER_S)]
    for bound_ns, count in zip(classic_bounds_ns(), cumulative):
        # Bucket {cumulative_count = 1, upper_bound = 2}
        out.append(_f_bytes(3, _f_varint(1, count) + _f_double(2, (bound_ns - 1) / NS_PER_S)))
    zero, native = native_buckets(series.buckets)
    spans, deltas = native_spans(native)
    out += [_f_sint(5, NATIVE_SCHEMA), _f_double(6, NATIVE_ZERO_THRESHOLD), _f_varint(7, zero)]
    # BucketSpan {offset = 1 (sint32), length = 2}; with no buckets a no-op span marks the histogram native
    for offset, length in spans or [(0, 0)]:
        out.append(_f_bytes(12, _f_sint(1, offset) + _f_varint(2, length)))
    out += [_f_sint(13, delta) for delta in deltas]
    return b"".join(out)


def render_protobuf(snapshot: MetricsSnapshot) -> bytes:
    """The snapshot as length-delimited io.prometheus.client.MetricFamily messages: each histogram carries
    both its classic buckets and its native (schema 7) buckets."""
    families = []
    # Metric {label = 1, gauge = 2, counter = 3, histogram = 7}; Gauge/Counter {value = 1}
    families.append(_pb_family(LATENCY, _HISTOGRAM, (
        _pb_labels(_series_labels(snapshot, s)) + _f_bytes(7, _pb_histogram(s)) for s in snapshot.series)))
    families.append(_pb_family(UNMATCHED, _COUNTER, (
        _pb_labels(_series_labels(snapshot, s)) + _f_bytes(3, _f_double(1, s.unmatched)) for s in snapshot.series)))
    families.append(_pb_family(IN_FLIGHT, _GAUGE, (
        _pb_labels(_series_labels(snapshot, s)) + _f_bytes(2, _f_double(1, s.in_flight)) for s in snapshot.series)))
    families.append(_pb_family(PROBE_HITS, _COUNTER, (
        _pb_labels([("function", fn), ("binary", snapshot.binary)]) + _f_bytes(3, _f_double(1, hits))
        for fn, hits in snapshot.probe_hits)))
    families.append(_pb_family(BUILD_INFO, _GAUGE, [
        _pb_labels([("version", snapshot.gotrace_version), ("go_version", snapshot.go_version)])
        + _f_bytes(2, _f_double(1, 1.0))]))
    return b"".join(families)


# ---- content negotiation ----


def wants_protobuf(accept: str | None) -> bool:
    """Whether an Accept header prefers the delimited MetricFamily protobuf over the text format."""
    if not accept:
        return False
    best_protobuf, best_text = 0.0, 0.0
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        params = {}
        for f in fields[1:]:
            key, _, value = f.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if (media == "application/vnd.google.protobuf" and params.get("proto") == "io.prometheus.client.MetricFamily"
                and params.get("encoding") == "delimited"):
            best_protobuf = max(best_protobuf, q)
        elif media in ("text/plain", "*/*", "text/*"):
            best_text = max(best_text, q)
    return best_protobuf > 0 and best_protobuf >= best_text
