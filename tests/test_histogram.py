"""Tests for gotrace.output.histogram: the bucket scheme of probes/gotrace.h and percentiles from it."""

import math
import random
import shutil
import subprocess

import pytest
from hypothesis import given, strategies as st

from gotrace import header as probes_header
from gotrace.output.histogram import (
    LatencyHistogram,
    bucket_bounds,
    bucket_index,
    bucket_midpoint,
    max_trackable_ns,
    num_buckets,
    overflow_index,
)

S = probes_header.constant("GT_HIST_SUB_BITS")
MAX_EXP = probes_header.constant("GT_HIST_MAX_EXP")
NBUCKETS = probes_header.constant("GT_HIST_NBUCKETS")
QUANTILES = (50.0, 90.0, 99.0, 99.9)


def comment_formula(v: int) -> int:
    """The index formula exactly as written in the comment of probes/gotrace.h, done by hand."""
    if v < 2**S:
        return v
    if v >= 2**MAX_EXP:
        return NBUCKETS - 1
    e = 0
    while 2 ** (e + 1) <= v:  # e = floor(log2 v), without bit tricks
        e += 1
    return ((e - S + 1) << S) + (v >> (e - S)) - 2**S


def boundary_values() -> list[int]:
    values = [0, 1, 2, 2**S - 1, 2**S, 2**S + 1]
    for k in range(1, 64):
        values += [2**k - 1, 2**k, 2**k + 1]
    values += [10**k for k in range(15)]
    return sorted(set(values))


# ---- the bucket scheme ----


def test_scheme_constants_come_from_the_header():
    assert num_buckets() == NBUCKETS
    assert overflow_index() == NBUCKETS - 1
    assert max_trackable_ns() == 2**MAX_EXP


@pytest.mark.parametrize("v", boundary_values())
def test_bucket_index_matches_the_header_comment_formula(v):
    assert bucket_index(v) == comment_formula(v)


def test_bucket_index_matches_comment_formula_on_random_values():
    rng = random.Random(7)
    for _ in range(20000):
        v = int(2 ** rng.uniform(0, MAX_EXP + 2))
        assert bucket_index(v) == comment_formula(v), v


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the header's gt_hist_bucket()")
def test_bucket_index_matches_the_headers_c_code(tmp_path):
    values = boundary_values() + [int(2 ** random.Random(3).uniform(0, 50)) for _ in range(2000)]
    source = tmp_path / "bucket.c"
    source.write_text(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <linux/types.h>\n"
        "#define __always_inline inline __attribute__((always_inline))\n"
        f'#include "{probes_header.HEADER_PATH}"\n'
        "int main(void) { char line[64];\n"
        "  while (fgets(line, sizeof line, stdin))\n"
        '    printf("%u\\n", gt_hist_bucket(strtoull(line, NULL, 10)));\n'
        "  return 0; }\n"
    )
    exe = tmp_path / "bucket"
    subprocess.run(["cc", "-O1", "-o", str(exe), str(source)], check=True)
    stdin = "".join(f"{v}\n" for v in values)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    c_indices = [int(line) for line in out.stdout.split()]
    assert c_indices == [bucket_index(v) for v in values]


def test_every_bucket_round_trips_and_buckets_tile_the_range():
    previous_high = 0
    for index in range(NBUCKETS):
        low, high = bucket_bounds(index)
        assert low == previous_high, f"gap or overlap before bucket {index}"
        assert low < high
        assert bucket_index(low) == index
        assert bucket_index(high - 1) == index
        if low >= 2**S:
            # a bucket is at most 1/2^S of its lower bound wide
            assert (high - low) * 2**S <= low
        else:
            assert high - low == 1
        previous_high = high
    assert previous_high == 2**MAX_EXP


@pytest.mark.parametrize("k", range(S, MAX_EXP))
def test_powers_of_two_start_a_bucket(k):
    index = bucket_index(2**k)
    assert bucket_bounds(index)[0] == 2**k
    assert bucket_index(2**k - 1) == index - 1
    # the bucket starting at 2^k is 2^(k-S) wide: 2^k + 1 shares it unless the width is 1
    same_bucket = 2 ** (k - S) >= 2
    assert (bucket_index(2**k + 1) == index) == same_bucket


def test_small_values_have_their_own_bucket():
    for v in range(2**S):
        assert bucket_index(v) == v
        assert bucket_bounds(v) == (v, v + 1)
        assert bucket_midpoint(v) == v
    assert bucket_bounds(bucket_index(2**S + 1)) == (2**S + 1, 2**S + 2)
    assert bucket_bounds(bucket_index(2 ** (S + 1) + 1)) == (2 ** (S + 1), 2 ** (S + 1) + 2)


def test_overflow_bucket_saturates():
    last = NBUCKETS - 1
    for v in (2**MAX_EXP - 1, 2**MAX_EXP, 2**MAX_EXP + 1, 2**63, 2**64 - 1):
        assert bucket_index(v) == last
    assert bucket_bounds(last)[1] == 2**MAX_EXP
    with pytest.raises(ValueError):
        bucket_bounds(NBUCKETS)
    with pytest.raises(ValueError):
        bucket_bounds(-1)
    with pytest.raises(ValueError):
        bucket_index(-1)


@given(st.integers(min_value=0, max_value=2**MAX_EXP - 1), st.integers(min_value=0, max_value=2**MAX_EXP - 1))
def test_bucket_index_is_monotonic_and_contains_its_value(a, b):
    if a > b:
        a, b = b, a
    assert bucket_index(a) <= bucket_index(b)
    low, high = bucket_bounds(bucket_index(b))
    assert low <= b < high
    mid = bucket_midpoint(bucket_index(b))
    assert abs(mid - b) <= max(0, (high - low) // 2)
    if b >= 2**S:
        assert abs(mid - b) / b <= 1 / 2 ** (S + 1)


# ---- percentiles against exact values ----


def exact_percentile(sorted_values: list[int], q: float) -> int:
    """Nearest rank with hdrh's rounding: the value of rank max(1, round-half-up(q/100 * n))."""
    rank = max(1, int(q * len(sorted_values) / 100 + 0.5))
    return sorted_values[rank - 1]


def _distributions() -> dict[str, list[int]]:
    rng = random.Random(20240611)
    n = 20000
    top = 2**MAX_EXP
    return {
        "uniform_1us_10ms": [rng.randint(1_000, 10_000_000) for _ in range(n)],
        "lognormal_median_50us": [int(rng.lognormvariate(math.log(50_000), 1.2)) for _ in range(n)],
        "bimodal_cache_hit_miss": [
            int(rng.gauss(2_000, 200)) if rng.random() < 0.8 else int(rng.gauss(5_000_000, 400_000)) for _ in range(n)
        ],
        "exponential_mean_1ms": [int(rng.expovariate(1 / 1_000_000)) for _ in range(n)],
        "constant_1234567ns": [1_234_567] * 5000,
        "tiny_below_128ns": [rng.randint(1, 127) for _ in range(n)],
        "huge_near_top_of_range": [rng.randint(top // 2, top - 1) for _ in range(n)],
        "heavy_tail_pareto": [int(10_000 * rng.paretovariate(1.1)) for _ in range(n)],
    }


DISTRIBUTIONS = _distributions()


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_percentiles_and_mean_within_1_percent_of_exact(name):
    values = DISTRIBUTIONS[name]
    ordered = sorted(values)
    hist = LatencyHistogram.from_values(values)
    assert hist.count() == len(values)
    reported = hist.percentiles(QUANTILES)
    for q in QUANTILES:
        exact = exact_percentile(ordered, q)
        got = reported[q]
        assert got == hist.percentile(q)
        if exact < 2**S:
            assert got == exact, f"{name} p{q}: tiny values must be exact"
        else:
            assert abs(got - exact) <= 0.01 * exact, f"{name} p{q}: {got} vs exact {exact}"
            # and the reported value stays inside the bucket holding the exact one
            low, high = bucket_bounds(bucket_index(exact))
            assert low <= got < high
    exact_mean = sum(values) / len(values)
    assert abs(hist.mean_ns() - exact_mean) <= 0.01 * exact_mean, f"{name} mean"


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_hdrh_adds_less_than_a_tenth_of_a_percent(name):
    hist = LatencyHistogram.from_values(DISTRIBUTIONS[name])
    ordered = sorted(DISTRIBUTIONS[name])
    for q in QUANTILES:
        midpoint = bucket_midpoint(bucket_index(exact_percentile(ordered, q)))
        assert abs(hist.percentile(q) - midpoint) < 0.001 * max(midpoint, 1)



@given(st.dictionaries(st.integers(0, 400), st.integers(0, 10**6), max_size=40),
       st.lists(st.floats(0.0, 100.0), min_size=1, max_size=6))
def test_percentiles_equal_what_hdrh_reports_for_the_same_buckets(counts, qs):
    """percentiles() walks the buckets itself; hdrh, given each bucket's midpoint and count, must say the same."""
    counts = {index: count for index, count in counts.items() if index < NBUCKETS}
    hist = LatencyHistogram(counts)
    if not any(counts.values()):
        assert hist.percentiles(qs) == {q: 0 for q in qs}
        return
    assert hist.percentiles(qs) == hist.to_hdr().get_percentile_to_value_dict(qs)

def test_constant_latency_has_mean_equal_to_every_percentile():
    for value in (42, 1_234_567, 193_456_789):
        hist = LatencyHistogram.from_values([value] * 9)
        assert {hist.mean_ns()} == set(hist.percentiles(QUANTILES).values())
        assert abs(hist.mean_ns() - value) <= 0.005 * value


def test_min_and_max_are_bucket_bounds():
    values = DISTRIBUTIONS["lognormal_median_50us"]
    hist = LatencyHistogram.from_values(values)
    lo, hi = min(values), max(values)
    assert hist.min_ns() == bucket_bounds(bucket_index(lo))[0]
    assert hist.max_ns() == bucket_bounds(bucket_index(hi))[1]
    assert hist.min_ns() <= lo and hist.max_ns() > hi
    assert hist.max_ns() - hi <= hi / 2**S + 1


def test_percentile_extremes_and_validation():
    hist = LatencyHistogram.from_values([100, 200, 300, 400_000])
    assert hist.percentile(0) == 100
    assert hist.percentile(100) == pytest.approx(400_000, rel=0.004)
    assert hist.percentile(50) == 200
    for bad in (-1, 100.5):
        with pytest.raises(ValueError):
            hist.percentile(bad)


def test_empty_histogram_reports_zeros():
    hist = LatencyHistogram()
    assert hist.count() == 0
    assert (hist.mean_ns(), hist.min_ns(), hist.max_ns()) == (0, 0, 0)
    assert hist.percentiles(QUANTILES) == {q: 0 for q in QUANTILES}
    assert hist.nonempty_buckets() == []


def test_counts_as_the_bpf_side_returns_them():
    # bucket 1000 ns -> index 506 ([1000, 1004)), zero counts dropped
    index = bucket_index(1000)
    hist = LatencyHistogram({index: 3, 5: 0, 7: 1})
    assert hist.nonempty_buckets() == [(7, 8, 1), (1000, 1004, 3)]
    assert hist.count() == 4
    assert hist.percentile(50) == 1002
    assert hist.percentile(25) == 7
    with pytest.raises(ValueError):
        LatencyHistogram({NBUCKETS: 1})
    with pytest.raises(ValueError):
        LatencyHistogram({3: -1})


def test_merge_adds_counts():
    a = LatencyHistogram.from_values([10, 10, 5_000])
    b = LatencyHistogram.from_values([10, 7_000_000])
    assert a.merge(b) is a
    assert a.count() == 5
    assert a.counts[10] == 3
    assert a.max_ns() == bucket_bounds(bucket_index(7_000_000))[1]
    a.merge({bucket_index(10): 2})
    assert a.counts[10] == 5
    assert b.count() == 2  # other is untouched


def test_to_hdr_holds_every_call():
    hist = LatencyHistogram.from_values(DISTRIBUTIONS["heavy_tail_pareto"])
    hdr = hist.to_hdr()
    assert hdr.get_total_count() == hist.count()
    assert hdr.get_value_at_percentile(99) == hist.percentile(99)
