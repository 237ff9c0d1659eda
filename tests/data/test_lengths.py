"""Length distributions: as_is untouched, truncated capped, power_law in bounds, heavy near min."""

import grain
import numpy as np
import pytest

from longctx_jax.data import (
    LengthDistribution,
    default_data_config,
    make_train_iterator,
    sample_power_law_length,
)
from longctx_jax.data.lengths import apply_length_distribution


def power_law_cdf(m, lo, hi, alpha):
    """P(L <= m) for L = floor(X), X with density ~ x^-alpha on [lo, hi + 1), in float64."""
    top = hi + 1.0
    if alpha == 1.0:
        return np.log((m + 1.0) / lo) / np.log(top / lo)
    a = 1.0 - alpha
    return ((m + 1.0) ** a - lo**a) / (top**a - lo**a)


def test_as_is_is_untouched_and_truncated_keeps_the_prefix(seed):
    rng = np.random.default_rng(seed)
    documents = [rng.integers(0, 256, n).astype(np.uint8) for n in rng.integers(1, 300, 50)]
    as_is = LengthDistribution("as_is", min_len=1, max_len=100, seed=seed)
    truncated = LengthDistribution("truncated", min_len=1, max_len=100, seed=seed)
    assert apply_length_distribution(grain.MapDataset.source(documents), as_is)[7] is documents[7]
    cropped = list(apply_length_distribution(grain.MapDataset.source(documents), truncated))
    for document, crop in zip(documents, cropped, strict=True):
        assert len(crop) == min(len(document), 100)
        np.testing.assert_array_equal(crop, document[: len(crop)])


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, 2.5])
def test_power_law_lengths_follow_the_law(seed, alpha):
    lo, hi, n = 16, 1024, 4000
    distribution = LengthDistribution("power_law", min_len=lo, max_len=hi, alpha=alpha, seed=seed)
    document = np.arange(5000, dtype=np.int32)  # longer than max_len: every crop is the drawn L
    crops = [distribution.map_with_index(i, document) for i in range(n)]
    lengths = np.array([len(c) for c in crops])
    assert lengths.min() >= lo and lengths.max() <= hi
    for crop in crops[:200]:  # a contiguous window of the document
        np.testing.assert_array_equal(crop, np.arange(crop[0], crop[0] + len(crop)))
    # Empirical CDF against the law, a generous 0.035 (~4 standard errors at n=4000).
    for m in (lo, 32, 64, 128, 256, 512, hi):
        assert abs(np.mean(lengths <= m) - power_law_cdf(m, lo, hi, alpha)) < 0.035, m
    middle = (lo + hi) / 2
    if alpha > 0:  # heavier near min_len than a uniform draw
        assert np.mean(lengths < middle) > 0.6
    else:
        assert abs(np.mean(lengths < middle) - 0.5) < 0.035


def test_power_law_is_deterministic_per_seed_and_index(seed):
    document = np.arange(3000, dtype=np.int32)
    a = LengthDistribution("power_law", min_len=8, max_len=2000, alpha=1.0, seed=seed)
    b = LengthDistribution("power_law", min_len=8, max_len=2000, alpha=1.0, seed=seed)
    other = LengthDistribution("power_law", min_len=8, max_len=2000, alpha=1.0, seed=seed ^ 1)
    crops = [a.map_with_index(i, document) for i in range(20)]
    for i in range(20):
        np.testing.assert_array_equal(crops[i], b.map_with_index(i, document))
    assert len({(c[0], len(c)) for c in crops}) > 10  # indices draw differently
    assert any(not np.array_equal(crops[i], other.map_with_index(i, document)) for i in range(20))
    short = np.arange(5, dtype=np.int32)  # shorter than any draw: left whole
    np.testing.assert_array_equal(a.map_with_index(3, short), short)


def test_sample_power_law_length_handles_a_point_interval(seed):
    rng = np.random.default_rng(seed)
    assert {sample_power_law_length(rng, 7, 7, 1.3) for _ in range(20)} == {7}


def test_bad_parameters():
    with pytest.raises(ValueError, match="kind='zipf'"):
        LengthDistribution("zipf")
    with pytest.raises(ValueError, match="min_len=5, max_len=4"):
        LengthDistribution("truncated", min_len=5, max_len=4)


def test_pipeline_pieces_respect_the_distribution():
    """Through the train pipeline: truncated documents make no piece longer than max_doc_len."""
    config = default_data_config()
    config.seq_len, config.batch_size, config.prefetch_batches = 256, 4, 0
    config.length_distribution, config.max_doc_len = "truncated", 100
    iterator = make_train_iterator(config)
    for _ in range(5):
        segment_ids = next(iterator)["segment_ids"]
        for row in segment_ids:
            assert np.bincount(row[row > 0]).max() <= 100
