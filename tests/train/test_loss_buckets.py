"""The training loss and its loss-by-position buckets (longctx_jax/train/step.py) against a plain
numpy loop in float64.

Buckets are [0, 64), [64, 128), [128, 256), ...: bucket 0 below 64, else the bit length of
position // 64, written here with Python integers (no floating-point log).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.train.step import loss_and_metrics, num_position_buckets, position_bucket


def reference_bucket(position: int) -> int:
    return 0 if position < 64 else (int(position) // 64).bit_length()


def edges(first_k: int, last_k: int) -> list[int]:
    """Every bucket edge 64 * 2**k for k in [first_k, last_k], with its neighbours."""
    return sorted(
        {e + d for k in range(first_k, last_k + 1) for e in [64 * 2**k] for d in (-1, 0, 1)}
    )


def mismatches(positions, got, want) -> list[tuple[int, int, int]]:
    """(position, bucket, expected bucket) wherever they differ."""
    return [(p, g, w) for p, g, w in zip(positions, got, want, strict=True) if g != w]


def buckets_of(positions) -> np.ndarray:
    return np.asarray(jax.jit(position_bucket)(jnp.asarray(positions, jnp.int32)))


def test_position_bucket_at_the_edges_and_everywhere_below_512k():
    positions = [0, 1, 62, 63, 64, 65, 127, 128, 129, 255, 256, 257, *edges(3, 12)]
    want = [reference_bucket(p) for p in positions]
    assert want[:12] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]  # the reference itself, by hand
    got = buckets_of(positions)
    assert got.tolist() == want, mismatches(positions, got, want)
    # every position of a 512Ki-token document
    everything = np.arange(64 * 2**13)
    want = np.asarray([reference_bucket(p) for p in everything.tolist()])
    got = buckets_of(everything)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"positions {bad[:10]} get buckets {got[bad[:10]]}, not {want[bad[:10]]}"


# A float32 log2 misplaced these (2**19 in bucket 13, 2**22 - 1 past num_position_buckets).
def test_position_bucket_at_long_context_edges():
    positions = edges(13, 24)  # 512Ki .. 1Gi
    got = buckets_of(positions)
    want = [reference_bucket(p) for p in positions]
    assert got.tolist() == want, mismatches(positions, got, want)


@pytest.mark.parametrize(
    "seq_len", [1, 2, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4096, 4097, 2**20, 2**20 + 1]
)
def test_num_position_buckets_covers_exactly_the_positions(seq_len):
    """Enough buckets for positions 0 .. seq_len - 1, and none that no position can reach."""
    assert num_position_buckets(seq_len) == reference_bucket(seq_len - 1) + 1


def packed_positions(rng, batch: int, length: int) -> np.ndarray:
    """Row 0: one document filling the row (positions 0 .. length-1, every bucket); the other rows:
    documents of random lengths packed back to back (positions restart at 0 per document)."""
    rows = [np.arange(length)]
    for _ in range(batch - 1):
        row = []
        while len(row) < length:
            row.extend(range(int(rng.integers(1, length))))
        rows.append(np.asarray(row[:length]))
    return np.stack(rows)


def reference_loss_and_buckets(logits, targets, weights, positions, num_buckets):
    """Plain loops, float64: cross entropy per token, weighted mean, per-bucket sums and counts."""
    logits = np.asarray(logits, np.float64)
    sums, counts = np.zeros(num_buckets), np.zeros(num_buckets)
    total_ce = 0.0
    b_size, t_size, _ = logits.shape
    for b in range(b_size):
        for t in range(t_size):
            row = logits[b, t]
            m = row.max()
            log_z = m + np.log(np.exp(row - m).sum())
            ce = log_z - row[targets[b, t]]
            w = float(weights[b, t])
            total_ce += w * ce
            k = reference_bucket(positions[b, t])
            sums[k] += w * ce
            counts[k] += w
    tokens = float(np.sum(weights, dtype=np.float64))
    return total_ce / max(tokens, 1.0), tokens, sums, counts


@pytest.mark.parametrize("extra_buckets", [0, 2])
def test_loss_and_bucket_sums_match_a_numpy_loop(seed, extra_buckets):
    rng = np.random.default_rng(seed)
    batch, length, vocab = 3, 300, 11
    logits = (3 * rng.standard_normal((batch, length, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, (batch, length))
    # 0 (padding / a document's last token), 1, and fractional weights
    weights = rng.choice([0.0, 1.0, 1.0, 0.5, 2.0], size=(batch, length)).astype(np.float32)
    positions = packed_positions(rng, batch, length)
    num_buckets = num_position_buckets(length) + extra_buckets
    assert num_buckets == 4 + extra_buckets  # 300 tokens: [0, 64) .. [256, 512)
    batch_arrays = dict(
        targets=jnp.asarray(targets, jnp.int32),
        weights=jnp.asarray(weights),
        positions=jnp.asarray(positions, jnp.int32),
    )
    fn = jax.jit(loss_and_metrics, static_argnums=2)
    loss, metrics = fn(jnp.asarray(logits), batch_arrays, num_buckets)
    want_loss, want_tokens, want_sums, want_counts = reference_loss_and_buckets(
        logits, targets, weights, positions, num_buckets
    )
    assert (want_counts[:4] > 0).all()  # every real bucket is exercised
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["tokens"]), want_tokens, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["bucket_sum"]), want_sums, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(metrics["bucket_count"]), want_counts, rtol=1e-6)
    # the buckets partition the weighted tokens
    np.testing.assert_allclose(
        np.asarray(metrics["bucket_sum"]).sum() / want_tokens, want_loss, 1e-5
    )


def test_all_weights_zero_gives_zero_loss_and_empty_buckets(seed):
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.standard_normal((2, 70, 5)), jnp.float32)
    batch = dict(
        targets=jnp.asarray(rng.integers(0, 5, (2, 70)), jnp.int32),
        weights=jnp.zeros((2, 70), jnp.float32),
        positions=jnp.asarray(np.tile(np.arange(70), (2, 1)), jnp.int32),
    )
    loss, metrics = loss_and_metrics(logits, batch, 2)
    assert float(loss) == 0.0 and float(metrics["tokens"]) == 0.0
    assert not np.asarray(metrics["bucket_sum"]).any()
    assert not np.asarray(metrics["bucket_count"]).any()
