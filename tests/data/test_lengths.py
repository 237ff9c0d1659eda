"""Length distributions: as_is untouched, truncated capped, power_law in bounds, heavy near min;
uniform and mixture crops follow their laws; upsampling keeps each source's share of tokens."""

import grain
import numpy as np
import pytest

from longctx_jax.data import (
    LengthDistribution,
    default_data_config,
    make_train_iterator,
    sample_power_law_length,
    train_documents,
    upsample_weights,
    upsampled_stream,
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


def crop_lengths(distribution, n):
    """Lengths of `distribution`'s crops of indices 0..n-1 of a document longer than any draw."""
    document = np.arange(70_000, dtype=np.int32)
    return np.array([len(distribution.map_with_index(i, document)) for i in range(n)])


def test_uniform_is_power_law_with_alpha_zero_and_uniform(seed):
    lo, hi, n = 10, 809, 4000
    uniform = LengthDistribution("uniform", min_len=lo, max_len=hi, alpha=2.0, seed=seed)
    power_law = LengthDistribution("power_law", min_len=lo, max_len=hi, alpha=0.0, seed=seed)
    document = np.arange(1000, dtype=np.int32)
    for i in range(50):
        np.testing.assert_array_equal(
            uniform.map_with_index(i, document), power_law.map_with_index(i, document)
        )
    lengths = crop_lengths(uniform, n)
    assert lengths.min() >= lo and lengths.max() <= hi
    # 8 equal bins of 100 lengths: chi-square with 7 degrees of freedom, P(> 30) ~ 1e-4.
    counts = np.bincount((lengths - lo) // 100, minlength=8)
    assert len(counts) == 8
    assert np.sum((counts - n / 8) ** 2 / (n / 8)) < 30, counts
    assert abs(lengths.mean() - (lo + hi) / 2) < 4 * (hi - lo) / np.sqrt(12 * n)


def test_mixture_draws_components_by_fraction_and_lengths_in_range(seed):
    fractions, ranges, n = (
        (0.3, 0.0, 0.5, 0.2),
        ((8, 16), (20, 30), (100, 200), (1000, 65536)),
        4000,
    )
    mixture = LengthDistribution("mixture", fractions=fractions, lengths=ranges, seed=seed)
    lengths = crop_lengths(mixture, n)
    for fraction, (lo, hi) in zip(fractions, ranges, strict=True):
        inside = lengths[(lengths >= lo) & (lengths <= hi)]
        standard_error = np.sqrt(fraction * (1 - fraction) / n)
        assert abs(len(inside) / n - fraction) <= 4 * standard_error + 1e-9, (lo, hi)
        if fraction:  # uniform within the component
            assert abs(inside.mean() - (lo + hi) / 2) < 4 * (hi - lo) / np.sqrt(12 * len(inside))
    in_some_range = np.zeros(n, bool)
    for lo, hi in ranges:
        in_some_range |= (lengths >= lo) & (lengths <= hi)
    assert in_some_range.all()
    again = LengthDistribution("mixture", fractions=fractions, lengths=ranges, seed=seed)
    np.testing.assert_array_equal(crop_lengths(again, 100), lengths[:100])


def test_mixture_parameters_are_checked():
    with pytest.raises(ValueError, match=r"LengthDistribution\.fractions=\(0\.5,\)"):
        LengthDistribution("mixture", fractions=(0.5,), lengths=((1, 2),))
    with pytest.raises(ValueError, match=r"LengthDistribution\.lengths=\(\(3, 2\),\)"):
        LengthDistribution("mixture", fractions=(1.0,), lengths=((3, 2),))


def test_upsample_weights_keep_each_domains_tokens():
    lengths = np.array([10, 10, 100, 50, 50, 400])
    domains = ["a", "a", "a", "b", "b", ""]
    weights = upsample_weights(lengths, domains, min_len=100, ratio=4.0)
    np.testing.assert_allclose(weights, [2 / 7, 2 / 7, 8 / 7, 1, 1, 1])  # a: 120 / 420
    for domain in set(domains):
        mine = np.array(domains) == domain
        np.testing.assert_allclose((weights * lengths)[mine].sum(), lengths[mine].sum())


def test_upsampled_epochs_draw_each_document_by_its_weight(seed):
    weights = np.array([0.5, 3.0, 1.0, 0.2, 2.3, 1.0, 1.0])
    n, epochs = len(weights), 6
    stream = upsampled_stream(grain.MapDataset.range(n), weights, seed)
    drawn = np.array([stream[i] for i in range(n * epochs)]).reshape(epochs, n)
    expected = n * weights / weights.sum()
    for epoch in drawn:  # systematic resampling: floor or ceil of the expected count
        counts = np.bincount(epoch, minlength=n)
        assert np.all((counts == np.floor(expected)) | (counts == np.ceil(expected))), counts
    assert len({tuple(epoch) for epoch in drawn}) > 1  # every epoch draws and shuffles afresh
    again = upsampled_stream(grain.MapDataset.range(n), weights, seed)
    assert [again[i] for i in range(2 * n, 3 * n)] == drawn[2].tolist()


def domain_corpus(tmp_path):
    """Three folders of numbered files, short (< 1000 bytes) and long: {id: (domain, length)}."""
    layout = {"a": [100, 100, 100, 1000], "b": [200, 200, 200, 200, 3000, 3000], "c": [300] * 5}
    files = {}
    for domain, lengths in layout.items():
        (tmp_path / domain).mkdir()
        for length in lengths:
            name = f"{len(files):03d}"
            (tmp_path / domain / f"{name}.txt").write_bytes(name.encode().ljust(length, b"."))
            files[name] = (domain, length)
    return files


def test_upsample_keeps_domain_shares_and_draws_long_documents_ratio_times(tmp_path, seed):
    files = domain_corpus(tmp_path)
    config = default_data_config()
    config.source, config.folder_glob = "folder", str(tmp_path / "**" / "*.txt")
    config.validation_fraction, config.seed = 0.0, seed
    config.length_distribution, config.upsample_min_len, config.upsample_ratio = (
        "upsample",
        1000,
        4.0,
    )
    stream = train_documents(config)
    draws = [stream[i] for i in range(400 * len(files))]
    counts = {name: 0 for name in files}
    for document in draws:
        name = document[:3].tobytes().decode()
        assert len(document) == files[name][1]  # whole documents
        counts[name] += 1
    total = sum(length for _, length in files.values())
    drawn_total = sum(counts[name] * length for name, (_, length) in files.items())
    for domain in "abc":
        mine = [name for name, (d, _) in files.items() if d == domain]
        share = sum(files[name][1] for name in mine) / total
        drawn = sum(counts[name] * files[name][1] for name in mine) / drawn_total
        assert abs(drawn - share) < 0.015, (domain, drawn, share)
        short = [counts[name] for name in mine if files[name][1] < 1000]
        long = [counts[name] for name in mine if files[name][1] >= 1000]
        if long:
            assert abs(np.mean(long) / np.mean(short) - 4.0) < 0.6, (domain, long, short)
    shard = train_documents(config, process_index=1, process_count=2)  # documents 1, 3, 5, ...
    odd = {f"{i:03d}" for i in range(1, len(files), 2)}
    assert {shard[i][:3].tobytes().decode() for i in range(100)} <= odd
