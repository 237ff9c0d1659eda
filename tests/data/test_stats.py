"""Length statistics and trained pair distances against brute-force numpy on fresh inputs."""

import grain
import numpy as np
import pytest

from longctx_jax.data.packing import finalize_row
from longctx_jax.data.stats import (
    StatsIterator,
    TrainedDistances,
    length_statistics,
    pair_distance_histogram,
)


def brute_force_pairs(segment_ids, positions, max_distance):
    """Every (query, key) pair checked one by one: same segment > 0, kv_pos <= q_pos."""
    counts = np.zeros(max_distance + 1, np.int64)
    for ids, pos in zip(np.atleast_2d(segment_ids), np.atleast_2d(positions), strict=True):
        for q in range(len(ids)):
            for k in range(len(ids)):
                d = int(pos[q]) - int(pos[k])
                if ids[q] > 0 and ids[q] == ids[k] and 0 <= d <= max_distance:
                    counts[d] += 1
    return counts


def packed_rows(rng, num_rows, seq_len, *, document_masking):
    """Rows as packing makes them: random document pieces, padding at the end of some rows."""
    rows = []
    for _ in range(num_rows):
        lengths = []
        while sum(lengths) < seq_len:
            lengths.append(int(rng.integers(1, seq_len // 2)))
        used = seq_len - int(rng.integers(0, 4))  # some rows end in padding
        segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[:used]
        positions = np.concatenate([np.arange(n) for n in lengths])[:used]
        pad = seq_len - used
        packed = dict(
            tokens=np.concatenate([rng.integers(1, 256, used), np.zeros(pad, int)]),
            tokens_segment_ids=np.concatenate([segment_ids, np.zeros(pad, int)]),
            tokens_positions=np.concatenate([positions, np.zeros(pad, int)]),
        )
        rows.append(finalize_row(packed, document_masking=document_masking))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("document_masking", [True, False])
def test_histogram_of_packed_rows_matches_brute_force(document_masking):
    rng = np.random.default_rng()
    batch = packed_rows(rng, 3, 48, document_masking=document_masking)
    for max_distance in (47, 10, 100):
        got = pair_distance_histogram(
            batch["segment_ids"], batch["positions"], max_distance=max_distance
        )
        want = brute_force_pairs(batch["segment_ids"], batch["positions"], max_distance)
        np.testing.assert_array_equal(got, want)
    if not document_masking:  # one segment per row: seq_len - d pairs at every d, minus padding
        real = (batch["segment_ids"] > 0).sum(1)
        expected = sum(np.maximum(n - np.arange(48), 0) for n in real)
        np.testing.assert_array_equal(got[:48], expected)


def test_histogram_ignores_token_order_and_counts_arbitrary_positions():
    rng = np.random.default_rng()
    batch = packed_rows(rng, 2, 40, document_masking=True)
    order = rng.permutation(40)  # a context-parallel layout permutes tokens, not pairs
    np.testing.assert_array_equal(
        pair_distance_histogram(
            batch["segment_ids"][:, order], batch["positions"][:, order], max_distance=39
        ),
        pair_distance_histogram(batch["segment_ids"], batch["positions"], max_distance=39),
    )
    # gaps, repeated positions and -1 padding (the inference convention)
    segment_ids = rng.integers(-1, 4, size=(2, 30))
    positions = rng.integers(0, 25, size=(2, 30))
    np.testing.assert_array_equal(
        pair_distance_histogram(segment_ids, positions, max_distance=30),
        brute_force_pairs(segment_ids, positions, 30),
    )


def test_histogram_rejects_bad_input():
    with pytest.raises(ValueError, match="max_distance"):
        pair_distance_histogram(np.ones(4), np.arange(4), max_distance=-1)
    with pytest.raises(ValueError, match="same shape"):
        pair_distance_histogram(np.ones(4), np.arange(5), max_distance=3)


def test_length_statistics_against_formulas():
    rng = np.random.default_rng()
    lengths = rng.integers(1, 5000, size=200).astype(np.float64)
    stats = length_statistics(lengths)
    assert stats["document_mean"] == pytest.approx(lengths.mean())
    assert stats["token_weighted_mean"] == pytest.approx((lengths**2).mean() / lengths.mean())
    assert stats["tokens"] == lengths.sum() and stats["max"] == lengths.max()
    # the token-weighted median: the length of the document holding the middle token
    tokens_by_length = np.repeat(np.sort(lengths), np.sort(lengths).astype(int))
    assert stats["token_weighted_median"] == tokens_by_length[(len(tokens_by_length) - 1) // 2]
    # a histogram gives the same numbers as the list of lengths it counts
    values, counts = np.unique(lengths, return_counts=True)
    assert length_statistics(values, counts) == pytest.approx(stats)
    # the inspection paradox on a small case: three 1-token documents and one of 97 tokens
    paradox = length_statistics([1, 1, 1, 97])
    assert paradox["document_mean"] == 25.0
    assert paradox["token_weighted_mean"] == pytest.approx((3 + 97**2) / 100)
    assert paradox["document_median"] == 1.0 and paradox["token_weighted_median"] == 97.0


@pytest.mark.parametrize(
    "lengths, counts, match",
    [
        ([], None, "at least one"),
        ([0, 3], None, ">= 1"),
        ([2, 3], [1], "shape"),
        ([2, 3], [1, -1], "non-negative"),
    ],
)
def test_length_statistics_rejects_bad_input(lengths, counts, match):
    with pytest.raises(ValueError, match=match):
        length_statistics(lengths, counts)


def test_trained_distances_accumulate_and_restore():
    rng = np.random.default_rng()
    batches = [packed_rows(rng, 2, 32, document_masking=True) for _ in range(5)]
    it = StatsIterator(
        iter(grain.MapDataset.source(batches).to_iter_dataset()), TrainedDistances(32)
    )
    for _ in range(3):
        next(it)
    state = it.get_state()
    resumed = StatsIterator(
        iter(grain.MapDataset.source(batches).to_iter_dataset()), TrainedDistances(32)
    )
    resumed.set_state(state)
    for _ in range(2):
        next(it), next(resumed)
    np.testing.assert_array_equal(it.stats.pairs, resumed.stats.pairs)
    np.testing.assert_array_equal(
        it.stats.pairs,
        sum(brute_force_pairs(b["segment_ids"], b["positions"], 31) for b in batches),
    )
    pieces = [  # every row's segment sizes, counted here
        n
        for b in batches
        for row in b["segment_ids"]
        for n in np.unique(row[row > 0], return_counts=True)[1]
    ]
    summary = it.stats.summary()
    assert summary["batches"] == 5
    assert summary["piece_lengths_stats"] == pytest.approx(length_statistics(pieces))
    with pytest.raises(ValueError, match="seq_len=16"):
        TrainedDistances(16).load(state["trained_distances"])
