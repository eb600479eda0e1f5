"""Streaming reductions against eager numpy over all the data, whatever the split into shards and batches."""

import numpy as np
import pytest

from attnlab.core.reduce import Histogram, Reservoir, RunningSum, merge_all, sample_priority


def split(n, parts, rng):
    """Random cut points: ``parts`` contiguous chunks of ``range(n)`` (some may be empty)."""
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    return np.split(np.arange(n), cuts)


def round_trip(reducer):
    return type(reducer).from_state({k: np.array(v) for k, v in reducer.state().items()})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_running_sum_and_mean_match_numpy(seed):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(97, 3, 4)) * 10.0 ** rng.integers(-3, 3, size=(97, 1, 1))
    shards = []
    for chunk in split(len(data), 5, rng):
        acc = RunningSum((3, 4))
        for batch in np.array_split(data[chunk], 3):
            acc.update(batch)
        shards.append(round_trip(acc))
    total = merge_all(reversed(shards))
    assert total.count == len(data)
    np.testing.assert_allclose(total.sum, data.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.mean, data.mean(0), rtol=1e-12, atol=1e-12)
    assert np.isnan(RunningSum((2,)).mean).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_matches_numpy_per_cell(seed):
    rng = np.random.default_rng(seed)
    edges = np.concatenate([[0.0], np.logspace(-4, 0, 9)])
    values = rng.uniform(-0.2, 1.2, size=(2, 3, 500)) ** 3  # (L, H, n): some below 0, some above 1
    values[0, 0, :5] = edges[-1]  # the last edge belongs to the last bin
    values[1, 2, :5] = edges[3]  # an inner edge belongs to the bin on its right
    values[0, 1, 7] = np.nan
    valid = rng.random((1, 1, 500)) > 0.2  # e.g. padding keys, shared by every cell
    hist = None
    for chunk in split(500, 4, rng):
        part = Histogram(edges, (2, 3))
        part.update(values[..., chunk], valid[..., chunk])
        hist = round_trip(part) if hist is None else hist.merge(round_trip(part))
    for l in range(2):
        for h in range(3):
            v = values[l, h][valid[0, 0] & ~np.isnan(values[l, h])]
            expected, _ = np.histogram(v, bins=edges)
            np.testing.assert_array_equal(hist.counts[l, h], expected)
            assert hist.below[l, h] == (v < edges[0]).sum() and hist.above[l, h] == (v > edges[-1]).sum()


def test_histogram_refuses_other_edges():
    with pytest.raises(ValueError, match="same edges"):
        Histogram(np.array([0.0, 1.0]), (2,)).merge(Histogram(np.array([0.0, 2.0]), (2,)))
    with pytest.raises(ValueError, match="increasing"):
        Histogram(np.array([1.0, 0.0]))


def eager_sample(ids, payload, size, seed):
    order = np.lexsort((ids, sample_priority(ids, seed)))[:size]
    keep = np.sort(ids[order])
    return keep, payload[np.searchsorted(ids, keep)]


@pytest.mark.parametrize("seed", [0, 7])
def test_reservoir_is_the_eager_bottom_k_whatever_the_sharding(seed):
    rng = np.random.default_rng(seed)
    ids = np.arange(3000, dtype=np.int64) * 3 + 5  # sparse, non-contiguous ids
    payload = rng.normal(size=(3000, 2, 4)).astype(np.float32)
    want_ids, want_payload = eager_sample(ids, payload, 200, seed)
    perm = rng.permutation(3000)  # any order of arrival
    shards, entrants = [], []
    for chunk in split(3000, 3, rng):
        running = Reservoir(200, seed, (2, 4))
        for batch in np.array_split(perm[chunk], 7):
            kept = running.update(ids[batch], payload[batch])
            entrants.append(ids[batch][kept])
        shards.append(round_trip(running))
    got_ids, got_payload = merge_all(shards).sorted_by_id()
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_payload, want_payload)
    # Entrants (what a shard writes per batch) always contain the final sample.
    assert set(want_ids) <= set(np.concatenate(entrants))
    # A different seed draws a different sample; a repeat offer changes nothing.
    assert not np.array_equal(eager_sample(ids, payload, 200, seed + 1)[0], want_ids)
    again = Reservoir(200, seed, (2, 4))
    again.update(ids, payload)
    again.update(ids[:50], payload[:50])
    np.testing.assert_array_equal(again.sorted_by_id()[0], want_ids)


def test_reservoir_is_roughly_uniform_and_small_inputs_are_kept_whole():
    ids = np.arange(10000)
    res = Reservoir(1000, 3)
    res.update(ids, np.zeros((10000,)))
    assert 0.45 < (res.ids < 5000).mean() < 0.55
    small = Reservoir(10, 0)
    small.update(np.arange(4), np.arange(4.0))
    assert small.sorted_by_id()[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="non-negative"):
        small.update(np.array([-1]), np.zeros(1))
