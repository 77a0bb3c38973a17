"""The Prometheus exposition of gotrace.output.prometheus, checked against the formats, without BPF.

* Text: parsed back with prometheus_client's parser (the reference Python
  implementation of the text format 0.0.4, independent of our renderer).
* Classic buckets: bounds are kernel bucket bounds, and histogram_quantile()
  (Prometheus's algorithm, restated below from its documentation: linear
  interpolation inside the bucket holding the rank) lands within 5% of
  gotrace's own percentile for point masses, uniform, log-normal and bimodal
  latencies. The real Prometheus does the same in tests/test_prometheus.py.
* Protobuf: read back with a generic protobuf wire-format reader, field
  numbers from io.prometheus.client's metrics.proto; native buckets decoded
  from spans and deltas hold every call, each in the bucket of schema 7 that
  contains its kernel bucket's midpoint.
* Content negotiation and the bind errors of the HTTP endpoint.
"""

from __future__ import annotations

import math
import random
import socket
import struct

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gotrace.commands.exporter import MetricsExporter, parse_address
from gotrace.errors import UsageError
from gotrace.output import prometheus as prom
from gotrace.output.histogram import LatencyHistogram, bucket_bounds, bucket_index, hdr_value

BINARY = "/srv/bin/api"


def snapshot(*series: prom.SeriesCounts) -> prom.MetricsSnapshot:
    return prom.MetricsSnapshot(BINARY, "go1.23.9", "0.1.0", list(series),
                                [(s.function, s.unmatched + prom.classic_cumulative(s.buckets)[-1]) for s in series])


def series_of(function: str, pid: int, values_ns: list[int], unmatched: int = 0, in_flight: int = 0):
    hist = LatencyHistogram.from_values(values_ns)
    return prom.SeriesCounts(function, pid, hist.counts, sum(values_ns), unmatched, in_flight)


# -- text ----------------------------------------------------------------------------------

def test_text_parses_back_with_every_family_label_and_value():
    values = [1_500, 90_000, 90_000, 2_000_000, 7 * 10**9]
    weird = 'main.(*T).M[go.shape."a\\b"]'
    text = prom.render_text(snapshot(series_of("main.work", 4242, values, unmatched=3, in_flight=2),
                                     series_of(weird, 4243, [])))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client names counter families without _total
    assert set(families) == {"gotrace_function_latency_seconds", "gotrace_function_unmatched",
                             "gotrace_function_in_flight", "gotrace_probe_hits", "gotrace_build_info"}
    assert families["gotrace_function_latency_seconds"].type == "histogram"
    assert families["gotrace_function_unmatched"].type == "counter"
    assert families["gotrace_function_in_flight"].type == "gauge"

    samples = families["gotrace_function_latency_seconds"].samples
    work = [s for s in samples if s.labels["function"] == "main.work"]
    assert {s.labels["binary"] for s in samples} == {BINARY}
    assert {s.labels["pid"] for s in work} == {"4242"}
    buckets = [s for s in work if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][-1] == "+Inf"
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == len(values)
    by_name = {s.name: s.value for s in work if not s.name.endswith("_bucket")}
    assert by_name["gotrace_function_latency_seconds_count"] == len(values)
    assert by_name["gotrace_function_latency_seconds_sum"] == pytest.approx(sum(values) / 1e9, rel=1e-12)
    # each call counted below the first bound above it, and not below its own value
    les = [float(s.labels["le"]) for s in buckets[:-1]]
    for le, count in zip(les, counts):
        assert count == sum(1 for v in values if v / 1e9 <= le + 1e-15)

    assert {s.labels["function"] for s in samples} == {"main.work", weird}  # the escaped name came back intact
    unmatched = {s.labels["function"]: s.value for s in families["gotrace_function_unmatched"].samples}
    assert unmatched == {"main.work": 3, weird: 0}
    in_flight = {s.labels["function"]: s.value for s in families["gotrace_function_in_flight"].samples}
    assert in_flight == {"main.work": 2, weird: 0}
    (info,) = families["gotrace_build_info"].samples
    assert info.labels == {"version": "0.1.0", "go_version": "go1.23.9"} and info.value == 1


# -- classic buckets -----------------------------------------------------------------------

def test_classic_bounds_are_kernel_bounds_at_most_5_percent_apart():
    bounds = prom.classic_bounds_ns()
    assert bounds[0] == 1 << 10 and bounds[-1] == 1 << 40
    for low in bounds:
        assert bucket_bounds(bucket_index(low))[0] == low  # a kernel bucket starts there
    ratios = [b / a for a, b in zip(bounds, bounds[1:])]
    assert max(ratios) <= 1.05
    assert len(bounds) == 451  # the series count per (function, pid) the README states, +1 for +Inf


def histogram_quantile(q: float, les: list[float], cumulative: list[int]) -> float:
    """Prometheus's histogram_quantile over classic buckets (le ascending, +Inf last): the rank q*count is
    found in the first bucket whose cumulative count reaches it, and interpolated linearly between that
    bucket's lower bound (the previous le, 0 for the first) and its le; the +Inf bucket answers the
    highest finite le."""
    total = cumulative[-1]
    rank = q * total
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    if i == len(les) - 1:  # +Inf
        return les[-2]
    start = les[i - 1] if i else 0.0
    below = cumulative[i - 1] if i else 0
    in_bucket = cumulative[i] - below
    return start + (les[i] - start) * ((rank - below) / in_bucket if in_bucket else 1.0)


DISTRIBUTIONS = {
    "point masses": lambda rng: [rng.choice([2_345, 51_000, 777_777, 12_345_678])] * 1000,
    "uniform 100us-1.5ms": lambda rng: [rng.randint(100_000, 1_500_000) for _ in range(5000)],
    "log-normal around 200us": lambda rng: [int(rng.lognormvariate(math.log(200_000), 0.8)) for _ in range(5000)],
    "bimodal 20us / 8ms": lambda rng: [int(rng.gauss(20_000, 2_000)) if rng.random() < 0.9
                                       else int(rng.gauss(8_000_000, 500_000)) for _ in range(5000)],
}


def call_value_ns(hist: LatencyHistogram, rank: int) -> int:
    """gotrace's value (hdr_value of its bucket) of the call of this rank (1-based, ascending)."""
    seen = 0
    for index in sorted(hist.counts):
        seen += hist.counts[index]
        if seen >= rank:
            return hdr_value(index)
    raise ValueError(rank)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_histogram_quantile_of_classic_buckets_within_5_percent_of_gotrace(name):
    """Both values fall in one classic bucket, at most 5% wide: within 5%. One exception is Prometheus's
    float arithmetic: when q * count is a whole number r, the product can round just above r, and
    histogram_quantile then answers for call r + 1 (hdrh: call r). In a sparse tail that call can be far
    away, whatever the buckets; there the estimate is compared with gotrace's value of call r + 1."""
    les = [float(le) for le in prom.classic_le_texts()[:-1]] + [math.inf]
    worst = 0.0
    for seed in range(20):
        values = DISTRIBUTIONS[name](random.Random(seed))
        hist = LatencyHistogram.from_values(values)
        cumulative = prom.classic_cumulative(hist.counts)
        for q, own_ns in hist.percentiles([50, 90, 99, 99.9]).items():
            rank = q / 100 * len(values)
            estimate_ns = histogram_quantile(q / 100, les, cumulative) * 1e9
            error = abs(estimate_ns - own_ns) / own_ns
            whole = round(rank)
            if abs(rank - whole) < 1e-6 and whole < len(values) and rank > whole:
                next_ns = call_value_ns(hist, whole + 1)
                error = min(error, abs(estimate_ns - next_ns) / next_ns)
            worst = max(worst, error)
    assert worst <= 0.05, f"{name}: histogram_quantile off by {worst:.2%} from gotrace's own percentile"


# -- protobuf ------------------------------------------------------------------------------

def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """(value, offset after it) of the base-128 varint at data[i]."""
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def read_fields(data: bytes) -> list[tuple[int, int, object]]:
    """A protobuf message's (field number, wire type, value): varints as int, 64-bit as bytes, length-delimited
    as bytes (the generic wire format; no schema)."""
    out, i = [], 0
    while i < len(data):
        key, i = read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
            out.append((number, wire, value))
        elif wire == 1:
            out.append((number, wire, data[i:i + 8]))
            i += 8
        elif wire == 2:
            n, i = read_varint(data, i)
            out.append((number, wire, data[i:i + n]))
            i += n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def read_delimited(data: bytes) -> list[bytes]:
    """The messages of a varint-length-delimited stream."""
    messages, i = [], 0
    while i < len(data):
        n, i = read_varint(data, i)
        messages.append(data[i:i + n])
        i += n
    return messages


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def double(raw: bytes) -> float:
    return struct.unpack("<d", raw)[0]


def test_protobuf_families_and_native_histogram_decode_to_the_kernel_counts():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(math.log(300_000), 1.0)) for _ in range(3000)] + [0, 0]
    series = series_of("main.work", 99, values, unmatched=5, in_flight=1)
    families = read_delimited(prom.render_protobuf(snapshot(series, series_of("main.idle", 99, []))))
    by_name = {}
    for family in families:
        fields = read_fields(family)
        name = next(v for n, _, v in fields if n == 1).decode()
        kind = next(v for n, _, v in fields if n == 3)
        by_name[name] = (kind, [v for n, _, v in fields if n == 4])
    assert {name: kind for name, (kind, _) in by_name.items()} == {
        prom.LATENCY: 4, prom.UNMATCHED: 0, prom.IN_FLIGHT: 1, prom.PROBE_HITS: 0, prom.BUILD_INFO: 1}

    work, idle = by_name[prom.LATENCY][1]
    labels = {}
    for n, _, v in read_fields(work):
        if n == 1:
            pair = dict((k, val.decode()) for k, _, val in read_fields(v))
            labels[pair[1]] = pair[2]
    assert labels == {"function": "main.work", "binary": BINARY, "pid": "99"}
    hist = read_fields(next(v for n, _, v in read_fields(work) if n == 7))
    get = lambda number: [v for n, _, v in hist if n == number]  # noqa: E731
    assert get(1) == [len(values)]
    assert double(get(2)[0]) == pytest.approx(sum(values) / 1e9, rel=1e-12)
    assert len(get(3)) == len(prom.classic_bounds_ns())  # classic buckets too
    assert unzigzag(get(5)[0]) == 7
    assert get(7) == [2]  # the two 0 ns calls: the zero bucket
    spans = [dict((k, v) for k, _, v in read_fields(raw)) for raw in get(12)]
    deltas = [unzigzag(d) for d in get(13)]
    index, counts, position = None, {}, 0
    running = 0
    for span in spans:
        offset, length = unzigzag(span.get(1, 0)), span.get(2, 0)
        index = offset if index is None else index + offset
        for _ in range(length):
            running += deltas[position]
            counts[index] = running
            position += 1
            index += 1
    assert sum(counts.values()) + 2 == len(values)
    # every call sits in the native bucket (2^((i-1)/128), 2^(i/128)] holding its kernel bucket's midpoint
    expected: dict[int, int] = {}
    for v in values:
        if v == 0:
            continue
        low, high = bucket_bounds(bucket_index(v))
        mid_s = (low if high - low == 1 else (low + high) / 2) / 1e9
        i = next(i for i in range(math.floor(math.log2(mid_s) * 128) - 1, 10**6)
                 if 2 ** ((i - 1) / 128) < mid_s <= 2 ** (i / 128))
        expected[i] = expected.get(i, 0) + 1
    assert counts == expected

    # a histogram without calls is still native: a no-op span
    idle_hist = read_fields(next(v for n, _, v in read_fields(idle) if n == 7))
    assert [raw for n, _, raw in idle_hist if n == 12] == [b""] or \
        [dict((k, v) for k, _, v in read_fields(raw)) for n, _, raw in idle_hist if n == 12] == [{1: 0, 2: 0}]

    (unmatched_metric, _) = by_name[prom.UNMATCHED][1]
    counter = next(v for n, _, v in read_fields(unmatched_metric) if n == 3)
    assert double(read_fields(counter)[0][2]) == 5


def test_native_index_boundaries():
    assert prom.native_index(1.0) == 0
    assert prom.native_index(2.0) == 128
    assert prom.native_index(2.0 ** (1 / 128)) == 1
    assert prom.native_index(1.0000001) == 1
    assert prom.native_index(0.5) == -128


# -- negotiation and the endpoint ----------------------------------------------------------

PROMETHEUS_2_42_NATIVE = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;"
                          "q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
PROMETHEUS_2_42_CLASSIC = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
                           "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_content_negotiation():
    assert prom.wants_protobuf(PROMETHEUS_2_42_NATIVE)
    assert not prom.wants_protobuf(PROMETHEUS_2_42_CLASSIC)
    assert not prom.wants_protobuf(None)
    assert not prom.wants_protobuf("*/*")
    assert not prom.wants_protobuf("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                                   "encoding=text")


def test_address_parsing():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    assert parse_address("localhost:0") == ("localhost", 0)
    for bad in ("9464", "127.0.0.1", "127.0.0.1:http", ":9464", "127.0.0.1:70000"):
        with pytest.raises(UsageError, match="give HOST:PORT"):
            parse_address(bad)


def test_a_taken_port_is_one_usage_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match="the port is taken") as err:
            MetricsExporter(f"127.0.0.1:{port}")
        assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_serves_text_and_protobuf_by_accept_header():
    import urllib.request

    snap = snapshot(series_of("main.work", 1, [5_000, 6_000]))
    with MetricsExporter("127.0.0.1:0") as exporter:
        exporter.start(lambda: snap)
        text = urllib.request.urlopen(exporter.url, timeout=30)
        assert text.headers["Content-Type"] == prom.TEXT_CONTENT_TYPE
        assert text.read().decode() == prom.render_text(snap)
        request = urllib.request.Request(exporter.url, headers={"Accept": PROMETHEUS_2_42_NATIVE})
        binary = urllib.request.urlopen(request, timeout=30)
        assert binary.headers["Content-Type"] == prom.PROTOBUF_CONTENT_TYPE
        assert binary.read() == prom.render_protobuf(snap)
        assert exporter.scrapes == 2
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(exporter.url.replace("/metrics", "/nope"), timeout=30)
        assert err.value.code == 404
