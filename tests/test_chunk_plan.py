"""How DetachableSites cuts units into chunks (gotrace.bpf.uprobes.plan_chunks), on numbers given directly.

A chunk is one uprobe_multi link per program, so the plan must fit in the
file descriptors given; the units likely to be detached get chunks of their
own as far as that allows (detaching one then registers nothing again).
The real attaching and detaching run in test_guard and test_tracer_bpf.
"""

from __future__ import annotations

import random

import pytest

from gotrace.bpf.uprobes import SMALL_CHUNK_SITES, _count_chunks, _cut, plan_chunks


def _units(n: int, sites=lambda unit: 1 + unit % 5) -> dict[int, int]:
    return {unit: sites(unit) for unit in range(n)}


def _check_partition(chunks, units, hot=()) -> None:
    flat = [unit for chunk in chunks for unit in chunk]
    assert sorted(flat) == sorted(units) and len(flat) == len(set(flat))  # every unit once
    for chunk in chunks:
        assert chunk == sorted(chunk)
    rank = {unit: i for i, unit in enumerate(hot)}
    cold = [chunk for chunk in chunks if not set(chunk) & set(rank)]
    warm = chunks[:len(chunks) - len(cold)]
    likeliest = [min(rank[unit] for unit in chunk if unit in rank) for chunk in warm]
    assert likeliest == sorted(likeliest)  # the chunks with a likely hot unit first, the likeliest first
    assert chunks[len(warm):] == cold  # then the others, in attach order
    assert [chunk[0] for chunk in cold] == sorted(chunk[0] for chunk in cold)


def test_with_room_every_likely_hot_unit_is_alone_and_the_rest_fill_chunks():
    units = _units(1000)
    hot = list(range(0, 1000, 7))
    chunks = plan_chunks(units, hot, room_links=10_000, n_programs=2, chunk_sites=64)
    _check_partition(chunks, units, hot)
    assert [chunk[0] for chunk in chunks[:len(hot)]] == hot
    alone = {chunk[0] for chunk in chunks if len(chunk) == 1}
    assert set(hot) <= alone
    for chunk in chunks:
        if len(chunk) > 1:
            assert not set(chunk) & set(hot)
            assert sum(units[unit] for unit in chunk) <= 64


@pytest.mark.parametrize("room, shared", [(1400, "small chunks"), (800, "the others' chunks")])
def test_short_of_descriptors_the_likeliest_stay_alone_and_the_plan_fits(room, shared):
    """3,000 units, 1,000 of them likely hot: alone they would need 2,300 links. With 1,400, the likeliest stay
    alone and the rest of them share chunks of SMALL_CHUNK_SITES; with 800, too few for that, they share the
    others' chunks."""
    units = _units(3000)
    hot = list(range(2999, 0, -3))  # the likeliest first: here, the last units
    chunks = plan_chunks(units, hot, room_links=room, n_programs=2, chunk_sites=64)
    _check_partition(chunks, units, hot)
    assert len(chunks) * 2 <= room
    alone = [chunk[0] for chunk in chunks if len(chunk) == 1 and chunk[0] in hot]
    assert 0 < len(alone) < len(hot)
    assert set(alone) == set(hot[:len(alone)])  # a prefix of hot_first: the likeliest
    hot_only = [chunk for chunk in chunks if len(chunk) > 1 and set(chunk) <= set(hot)]
    mixed = [chunk for chunk in chunks if set(chunk) & set(hot) and not set(chunk) <= set(hot)]
    if shared == "small chunks":
        assert hot_only and not mixed
        assert all(sum(units[unit] for unit in chunk) <= SMALL_CHUNK_SITES for chunk in hot_only)
    else:
        assert mixed and not hot_only
        assert all(sum(units[unit] for unit in chunk) <= 64 for chunk in mixed)


@pytest.mark.parametrize("room", [40, 2])
def test_far_too_few_descriptors_make_every_chunk_larger(room):
    units = _units(3000)
    chunks = plan_chunks(units, list(range(500)), room_links=room, n_programs=2, chunk_sites=64)
    _check_partition(chunks, units, list(range(500)))
    assert len(chunks) * 2 <= max(room, 2)


def test_a_unit_larger_than_a_chunk_is_never_split():
    units = {0: 3, 1: 200, 2: 3, 3: 70}
    chunks = plan_chunks(units, [], room_links=100, n_programs=1, chunk_sites=64)
    _check_partition(chunks, units)
    assert [1] in chunks and [3] in chunks and [0, 2] in chunks


@pytest.mark.parametrize("seed", range(5))
def test_counting_a_cut_agrees_with_making_it(seed):
    """plan_chunks searches with _count_chunks, which counts what _cut would make without making it."""
    rng = random.Random(seed)
    units = _units(2000, sites=lambda unit: rng.choice([1, 1, 2, 3, 5, 9, 70]))
    hot = rng.sample(range(2000), 600)
    rank = {unit: i for i, unit in enumerate(hot)}
    for n_solo in (0, 1, 17, 300, 600):
        for small in (True, False):
            for chunk_sites in (8, 64):
                made = _cut(units, set(hot[:n_solo]), set(hot[n_solo:]) if small else set(), chunk_sites)
                assert _count_chunks(units, rank, n_solo, small, chunk_sites) == len(made)
