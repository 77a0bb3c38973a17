"""scripts/bench_overhead's ratio estimate: the geometric mean of per-round ratios is unbiased for identical
configurations however noisy the rounds are, where the arithmetic mean is not.

Simulated rounds with a fixed seed, no timing: each round's machine speed multiplies both configurations
(the bench's shared drift) and each run adds its own multiplicative noise, as on the busy 2-CPU machine the
README's figures come from (round-to-round CV about 16%).
"""

from __future__ import annotations

import math
import random
import sys

import pytest

from support.gobuild import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from bench_overhead import Estimate  # noqa: E402


def rounds(true_ratio: float, n: int, cv: float, seed: int) -> list[float]:
    """Per-round ratios row/floor for a row that truly costs true_ratio times the floor."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        drift = rng.lognormvariate(0, 0.1)
        floor = 25_000 * drift * rng.lognormvariate(0, cv)
        row = 25_000 * true_ratio * drift * rng.lognormvariate(0, cv)
        out.append(row / floor)
    return out


def test_a_ratio_and_its_inverse_are_estimated_as_inverses():
    ratios = [0.8, 1.25, 1.1, 0.95, 1.3]
    forward, backward = Estimate.of_ratios(ratios), Estimate.of_ratios([1 / r for r in ratios])
    assert forward.mean * backward.mean == pytest.approx(1.0)
    assert forward.low * backward.high == pytest.approx(1.0)
    assert Estimate.of_ratios([2.0, 0.5]).mean == pytest.approx(1.0)  # the arithmetic mean says 1.25


@pytest.mark.parametrize("seed", range(5))
def test_identical_configurations_give_one_where_the_arithmetic_mean_is_biased(seed):
    ratios = rounds(1.0, 1000, 0.16, seed)
    geometric, arithmetic = Estimate.of_ratios(ratios), Estimate.of(ratios)
    assert geometric.low <= 1.0 <= geometric.high, geometric
    # E[X/Y] for independent lognormal noise of sigma 0.16 on each is exp(0.16**2) = 1.026
    assert arithmetic.mean > 1.01, arithmetic
    assert abs(math.log(geometric.mean)) < 0.015


@pytest.mark.parametrize("true_ratio", [0.6, 1.03, 1.2])
def test_a_known_ratio_is_recovered_within_its_interval(true_ratio):
    est = Estimate.of_ratios(rounds(true_ratio, 1000, 0.16, 7))
    assert est.low <= true_ratio <= est.high, est


def test_non_positive_ratios_fall_back_to_the_arithmetic_mean():
    est = Estimate.of_ratios([-0.1, 0.2, 0.3])
    assert est.mean == pytest.approx(0.4 / 3)
