"""Turns the kernel's log-linear latency buckets into counts, percentiles and an hdrh histogram.

The bucket scheme is defined once, in probes/gotrace.h (GT_HIST_SUB_BITS,
GT_HIST_MAX_EXP, GT_HIST_NBUCKETS); this module reads those constants and
implements the same index formula in Python:

* values below 2^S ns (S = GT_HIST_SUB_BITS) get one bucket each;
* above, each power of two [2^e, 2^(e+1)) is split into 2^S equal sub-buckets,
  so a bucket is at most 1/2^S of its lower bound wide;
* values at or above 2^GT_HIST_MAX_EXP ns land in the last bucket, whose
  nominal bounds stop at 2^GT_HIST_MAX_EXP (the bucket saturates).

A bucket is represented by its midpoint, which keeps the error of any value
derived from it within half a bucket width (1/2^(S+1) relative, 0.39% for
S = 7). Percentiles come from an hdrh HdrHistogram fed with those midpoints;
hdrh's own rounding adds less than 0.1%, and the mean uses the same rounded
values (hdr_value), so statistics of one histogram agree with each other.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

from hdrh.histogram import HdrHistogram

from gotrace import header as probes_header

# hdrh's own resolution: 3 significant figures makes hdrh keep 2048 linear
# sub-buckets per power of two, i.e. a relative error below 1/1024 (0.098%)
# on top of the bucket midpoint's 0.39%.
HDR_SIGNIFICANT_FIGURES = 3


@functools.cache
def _scheme() -> tuple[int, int, int]:
    """(GT_HIST_SUB_BITS, GT_HIST_MAX_EXP, GT_HIST_NBUCKETS) from probes/gotrace.h."""
    sub_bits = probes_header.constant("GT_HIST_SUB_BITS")
    max_exp = probes_header.constant("GT_HIST_MAX_EXP")
    nbuckets = probes_header.constant("GT_HIST_NBUCKETS")
    if nbuckets != (max_exp - sub_bits + 1) << sub_bits:
        raise ValueError(
            "probes/gotrace.h: GT_HIST_NBUCKETS must equal "
            "(GT_HIST_MAX_EXP - GT_HIST_SUB_BITS + 1) << GT_HIST_SUB_BITS"
        )
    return sub_bits, max_exp, nbuckets


def num_buckets() -> int:
    """Number of buckets per function (GT_HIST_NBUCKETS)."""
    return _scheme()[2]


def overflow_index() -> int:
    """Index of the last bucket, which also counts every value >= max_trackable_ns()."""
    return _scheme()[2] - 1


def max_trackable_ns() -> int:
    """2^GT_HIST_MAX_EXP: values at or above it saturate into the last bucket."""
    return 1 << _scheme()[1]


def bucket_index(value_ns: int) -> int:
    """Index of the bucket that holds `value_ns` (same result as the BPF side's formula)."""
    sub_bits, max_exp, nbuckets = _scheme()
    if value_ns < 0:
        raise ValueError(f"latency cannot be negative: {value_ns} ns")
    if value_ns < 1 << sub_bits:
        return value_ns
    if value_ns >= 1 << max_exp:
        return nbuckets - 1
    exp = value_ns.bit_length() - 1
    return ((exp - sub_bits + 1) << sub_bits) + (value_ns >> (exp - sub_bits)) - (1 << sub_bits)


def bucket_bounds(index: int) -> tuple[int, int]:
    """Nominal range [low_ns, high_ns) of bucket `index`.

    The last bucket's high_ns is 2^GT_HIST_MAX_EXP although it also counts
    larger values (see overflow_index()).
    """
    sub_bits, _, nbuckets = _scheme()
    if not 0 <= index < nbuckets:
        raise ValueError(f"bucket index {index} is outside 0..{nbuckets - 1}")
    if index < 1 << sub_bits:
        return index, index + 1
    # index = ((exp - S + 1) << S) + sub, sub in [0, 2^S): the power of two
    # [2^exp, 2^(exp+1)) split into 2^S sub-buckets of width 2^(exp - S).
    exp = (index >> sub_bits) + sub_bits - 1
    sub = index & ((1 << sub_bits) - 1)
    width = 1 << (exp - sub_bits)
    low = (1 << exp) + sub * width
    return low, low + width


def bucket_midpoint(index: int) -> int:
    """The value that represents bucket `index`: the midpoint of its range, in ns."""
    low, high = bucket_bounds(index)
    return (low + high) // 2


def _new_hdr() -> HdrHistogram:
    return HdrHistogram(1, max_trackable_ns(), HDR_SIGNIFICANT_FIGURES)


@functools.cache
def _hdr_resolver() -> HdrHistogram:
    """An empty hdrh histogram, used only for its value rounding."""
    return _new_hdr()


@functools.cache  # one value per bucket index (a few hundred): a report of a thousand functions asks often
def hdr_value(index: int) -> int:
    """What hdrh reports for a call in bucket `index`: the midpoint at hdrh's resolution (< 0.1% above it)."""
    return _hdr_resolver().get_highest_equivalent_value(bucket_midpoint(index))


@dataclasses.dataclass
class LatencyHistogram:
    """One function's latency distribution: bucket index -> number of calls.

    `counts` is what the BPF side returns (zero counts may be omitted). A
    histogram with no calls reports 0 for every statistic.
    """

    counts: dict[int, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        nbuckets = num_buckets()
        clean: dict[int, int] = {}
        for index, count in self.counts.items():
            index, count = int(index), int(count)
            if not 0 <= index < nbuckets:
                raise ValueError(f"bucket index {index} is outside 0..{nbuckets - 1}")
            if count < 0:
                raise ValueError(f"bucket {index} has a negative count {count}")
            if count:
                clean[index] = count
        self.counts = clean

    @classmethod
    def from_values(cls, values_ns: Iterable[int]) -> LatencyHistogram:
        """A histogram of the given latencies, bucketed as the BPF side does."""
        hist = cls()
        for value_ns in values_ns:
            hist.record(value_ns)
        return hist

    def record(self, value_ns: int, count: int = 1) -> None:
        """Add `count` calls that took `value_ns`."""
        if count < 0:
            raise ValueError(f"cannot record a negative count {count}")
        if count:
            index = bucket_index(value_ns)
            self.counts[index] = self.counts.get(index, 0) + count

    def merge(self, other: LatencyHistogram | Mapping[int, int]) -> LatencyHistogram:
        """Add the counts of `other` (a histogram or an index -> count mapping) into self; returns self."""
        other_counts = other.counts if isinstance(other, LatencyHistogram) else LatencyHistogram(dict(other)).counts
        for index, count in other_counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        return self

    def count(self) -> int:
        """Number of calls recorded."""
        return sum(self.counts.values())

    def nonempty_buckets(self) -> list[tuple[int, int, int]]:
        """(low_ns, high_ns, count) of every bucket with calls, lowest first."""
        return [(*bucket_bounds(index), self.counts[index]) for index in sorted(self.counts)]

    def min_ns(self) -> int:
        """Low bound of the lowest nonempty bucket (bucket resolution: the true minimum is within that bucket)."""
        return bucket_bounds(min(self.counts))[0] if self.counts else 0

    def max_ns(self) -> int:
        """High bound of the highest nonempty bucket (bucket resolution: the true maximum is below it).

        For the saturating last bucket this is 2^GT_HIST_MAX_EXP, a lower bound.
        """
        return bucket_bounds(max(self.counts))[1] if self.counts else 0

    def mean_ns(self) -> int:
        """Mean latency over the values hdrh reports for each bucket (hdr_value), so that a
        constant latency has mean == every percentile; within 0.5% of the true mean."""
        total = self.count()
        if not total:
            return 0
        weighted = sum(hdr_value(index) * count for index, count in self.counts.items())
        return (weighted + total // 2) // total

    def to_hdr(self) -> HdrHistogram:
        """An hdrh histogram holding each bucket's midpoint with the bucket's count."""
        hdr = _new_hdr()
        for index, count in sorted(self.counts.items()):
            value = bucket_midpoint(index)
            if not hdr.record_value(value, count):
                raise ValueError(f"hdrh refused {value} ns (bucket {index})")
        return hdr

    def percentiles(self, qs: Iterable[float]) -> dict[float, int]:
        """hdrh's value at each percentile q (0..100) in ns, computed in one pass; 0 for every q when empty.

        Semantics are hdrh's: the value of the call of rank max(1, round-half-up(q/100 * count)).
        """
        qs = list(qs)
        for q in qs:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"percentile {q} is outside 0..100")
        ordered = [(index, count) for index, count in sorted(self.counts.items()) if count]
        if not ordered:
            return {q: 0 for q in qs}
        # What hdrh's get_percentile_to_value_dict returns for to_hdr() (tests/test_histogram.py compares them),
        # walking the few nonempty buckets instead of hdrh's whole counts array: with a thousand functions in a
        # report that walk cost a second natively, over a minute in an emulated VM, between Ctrl-C and the report.
        total = sum(count for _, count in ordered)
        by_q: dict[float, int] = {}
        for q in sorted(set(qs)):
            target = max(int(q * total / 100 + 0.5), 1)
            seen = 0
            for index, count in ordered:
                seen += count
                if seen >= target:
                    break
            midpoint = bucket_midpoint(index)
            resolver = _hdr_resolver()
            by_q[q] = (resolver.get_highest_equivalent_value(midpoint) if q
                       else resolver.get_lowest_equivalent_value(midpoint))
        return {q: by_q[q] for q in qs}

    def percentile(self, q: float) -> int:
        """hdrh's value at percentile q (0..100) in ns; 0 when the histogram is empty."""
        return self.percentiles([q])[q]
