"""`sparse_attention` against the float64 reference: every key selected = dense attention; a
subset = dense attention restricted to that subset; rows with nothing selected give 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    F32_RTOL,
    SHAPES,
    assert_close,
    assert_equals_dense,
    assert_out_and_grads_close,
    distances,
    grid_case,
    reference_subset,
    visibility,
)

from longctx_jax.attention.sparse import sparse_attention, sparse_attention_weights

KINDS = ("causal", "combined", "permuted")


def out_and_grads(q, k, v, w, indices, mask, valid=None, block_q=16, impl="gather"):
    def loss(q, k, v):
        out = sparse_attention(q, k, v, indices, mask=mask, valid=valid, block_q=block_q, impl=impl)
        return jnp.sum(w * out), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def shuffled_all_keys(rng, b, t, s):
    """indices [B, T, S]: every key, in a fresh random order per query."""
    return jnp.asarray(np.stack([[rng.permutation(s) for _ in range(t)] for _ in range(b)]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_all_keys_selected_equals_dense_attention(shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    indices = shuffled_all_keys(rng, shape.batch, shape.q_len, shape.kv_len)
    what = f"[seed={seed} shape={shape} mask={kind}]"

    out, grads = out_and_grads(q, k, v, w, indices, mask)
    assert_equals_dense(out, grads, q, k, v, w, mask, what)


@pytest.mark.parametrize(
    "per_kv_head,impl", [(False, "gather"), (True, "gather"), (True, "pallas_tpu")]
)
def test_subset_equals_dense_attention_under_the_subset_mask(per_kv_head, impl, seed):
    """impl="pallas_tpu": the Pallas kernel's forward (interpret mode here), gather gradients."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]  # GQA: 8 query heads over 2 KV heads
    b, t, s, kh = shape.batch, shape.q_len, shape.kv_len, shape.num_kv_heads
    q, k, v, w, mask = grid_case(rng, shape, "combined")
    n_sel = 11
    lead = (b, t, kh) if per_kv_head else (b, t)
    indices = np.stack([rng.choice(s, n_sel, replace=False) for _ in range(np.prod(lead))])
    indices = indices.reshape(*lead, n_sel)
    valid = rng.random(indices.shape) < 0.8
    what = f"[seed={seed} per_kv_head={per_kv_head} impl={impl}]"

    # The equivalent dense mask: visible under `mask` and selected in a valid slot.
    chosen = np.zeros((*lead, s), bool)
    np.put_along_axis(chosen, indices, valid, axis=-1)
    vis = visibility(mask, b, t, s)
    group = shape.num_heads // kh
    per_head = [vis & (chosen[:, :, n // group] if per_kv_head else chosen) for n in range(8)]

    out, grads = out_and_grads(
        q, k, v, w, jnp.asarray(indices), mask, jnp.asarray(valid), impl=impl
    )
    want = reference_subset(q, k, v, w, per_head, distances(mask, b, t, s))
    assert_out_and_grads_close((out, grads), want, F32_RTOL, what)

    probs = sparse_attention_weights(q, k, jnp.asarray(indices), mask=mask, valid=valid)
    _, want_probs = reference_subset(q, k, v, w, per_head, distances(mask, b, t, s), probs=True)
    got_dense = np.zeros(want_probs.shape)
    for n in range(8):
        idx = indices[:, :, n // group] if per_kv_head else indices
        np.put_along_axis(got_dense[:, n], idx, np.asarray(probs[:, n]), axis=-1)
    assert_close(got_dense, want_probs, F32_RTOL, f"{what} sparse_attention_weights")


def test_rows_with_nothing_selected_give_zero_output_and_gradients(seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]
    q, k, v, w, mask = grid_case(rng, shape, "causal")
    b, t = shape.batch, shape.q_len
    # Query t selects keys after it (hidden); odd queries and the last have every slot invalid.
    indices = jnp.asarray(np.minimum(np.arange(t)[:, None] + 1 + np.arange(4), t - 1))
    indices = jnp.broadcast_to(indices, (b, t, 4))
    rows = np.arange(t)
    valid = jnp.broadcast_to(jnp.asarray((rows % 2 == 0) & (rows < t - 1))[:, None], (b, t, 4))
    out, (dq, dk, dv) = out_and_grads(q, k, v, w, indices, mask, valid)
    for name, x in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert np.isfinite(np.asarray(x)).all(), f"[seed={seed}] {name} has non-finite values"
        assert not np.asarray(x).any(), f"[seed={seed}] {name} is not all 0"


def test_bad_indices_raise_value_error():
    q = jnp.zeros((1, 4, 2, 8))
    k = jnp.zeros((1, 6, 1, 8))
    with pytest.raises(ValueError, match="indices has shape"):
        sparse_attention(q, k, k, jnp.zeros((1, 4, 2, 3, 1), jnp.int32))
    with pytest.raises(ValueError, match="indices has dtype"):
        sparse_attention(q, k, k, jnp.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match="valid has shape"):
        sparse_attention(q, k, k, jnp.zeros((1, 4, 3), jnp.int32), valid=jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="impl='triton'"):
        sparse_attention(q, k, k, jnp.zeros((1, 4, 3), jnp.int32), impl="triton")
