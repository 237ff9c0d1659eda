"""`block_sparse_attention` against float64 numpy and `jax.nn.dot_product_attention` under the
equivalent dense mask (a key counts for a query iff its block is selected, valid, for the query's
block and the `AttentionMask` shows it), forward and gradients; all blocks = dense attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    BF16_RTOL,
    F32_RTOL,
    SHAPES,
    assert_equals_dense,
    assert_out_and_grads_close,
    distances,
    grid_case,
    reference_subset,
    visibility,
)

from longctx_jax.attention.sparse import block_sparse_attention

MASK_KINDS = ("causal", "segments", "sliding", "kv_cache", "combined")


@functools.partial(jax.jit, static_argnames="block_size")
def out_and_grads(q, k, v, w, blocks, mask, valid, *, block_size):
    def loss(q, k, v):
        out = block_sparse_attention(q, k, v, blocks, block_size=block_size, mask=mask, valid=valid)
        return jnp.sum(w * out.astype(jnp.float32)), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def random_blocks(rng, lead, n_kv_blocks, n):
    """int [*lead, n]: n distinct key blocks per row, fresh random."""
    rows = [rng.choice(n_kv_blocks, n, replace=False) for _ in range(int(np.prod(lead)))]
    return np.stack(rows).reshape(*lead, n)


def block_visibility(blocks, valid, vis, block_size, num_heads, per_kv_head):
    """Per query head, bool [B, T, S]: the AttentionMask's visibility restricted to the valid
    selected blocks of each query's block (written out key by key)."""
    b, t, s = vis.shape
    kh = blocks.shape[2] if per_kv_head else 1
    chosen = np.zeros((b, t, kh, s), bool)
    for i, query, head in np.ndindex(b, t, kh):
        row = (i, query // block_size, head) if per_kv_head else (i, query // block_size)
        for block, ok in zip(blocks[row], valid[row], strict=True):
            if ok:
                keys = np.arange(block * block_size, min((block + 1) * block_size, s))
                chosen[i, query, head, keys] = True
    group = num_heads // kh
    return [vis & chosen[:, :, n // group] for n in range(num_heads)]


def jax_nn_reference(q, k, v, w, vis_per_head):
    """jax.nn.dot_product_attention with the boolean mask: (out, grads) with the cotangent zeroed
    on rows that see nothing (jax.nn averages those rows instead of returning 0)."""
    vis = np.stack(vis_per_head, 1)  # [B, N, T, S]
    group = q.shape[2] // k.shape[2]
    rows = jnp.asarray(vis.any(-1).transpose(0, 2, 1)[..., None])  # [B, T, N, 1]

    def f(q, k, v):
        k_rep, v_rep = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        out = jax.nn.dot_product_attention(q, k_rep, v_rep, mask=jnp.asarray(vis))
        return jnp.where(rows, out, 0.0)

    out, pullback = jax.vjp(f, q, k, v)
    return out, pullback(w * rows)


@pytest.mark.parametrize("per_kv_head", (False, True))
@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)  # GQA 8/2 (T < S), MQA 4/1 (odd T)
def test_equals_dense_attention_under_the_block_mask(shape, kind, per_kv_head, seed):
    rng = np.random.default_rng(seed)
    b, t, s, kh = shape.batch, shape.q_len, shape.kv_len, shape.num_kv_heads
    q, k, v, w, mask = grid_case(rng, shape, kind)
    block_size = int(rng.choice((4, 8, 16)))
    n_q, n_kv = -(-t // block_size), -(-s // block_size)
    n = int(rng.integers(1, n_kv + 1))
    lead = (b, n_q, kh) if per_kv_head else (b, n_q)
    blocks = random_blocks(rng, lead, n_kv, n)
    valid = rng.random(blocks.shape) < 0.8
    what = f"[seed={seed} {shape} mask={kind} per_kv_head={per_kv_head} bs={block_size} n={n}]"

    vis_per_head = block_visibility(
        blocks, valid, visibility(mask, b, t, s), block_size, shape.num_heads, per_kv_head
    )
    out, grads = out_and_grads(
        q, k, v, w, jnp.asarray(blocks), mask, jnp.asarray(valid), block_size=block_size
    )
    want = reference_subset(q, k, v, w, vis_per_head, distances(mask, b, t, s))
    assert_out_and_grads_close((out, grads), want, F32_RTOL, f"{what} vs float64")
    want = jax_nn_reference(q, k, v, w, vis_per_head)
    assert_out_and_grads_close((out, grads), want, F32_RTOL, f"{what} vs jax.nn")


@pytest.mark.parametrize("kind", ("causal", "combined", "permuted"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_all_blocks_selected_equals_dense_attention(shape, kind, seed):
    rng = np.random.default_rng(seed)
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    q, k, v, w, mask = grid_case(rng, shape, kind)
    block_size = int(rng.choice((4, 8, 16)))
    n_kv = -(-s // block_size)
    blocks = jnp.asarray(random_blocks(rng, (b, -(-t // block_size)), n_kv, n_kv))
    what = f"[seed={seed} {shape} mask={kind} bs={block_size}]"

    out, grads = out_and_grads(
        q, k, v, w, blocks, mask, jnp.ones(blocks.shape, bool), block_size=block_size
    )
    assert_equals_dense(out, grads, q, k, v, w, mask, what)


def test_bfloat16_matches_the_float64_reference_loosely(seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    q, k, v, w, mask = grid_case(rng, shape, "combined", dtype=jnp.bfloat16)
    block_size, n_kv = 8, -(-s // 8)
    blocks = random_blocks(rng, (b, -(-t // 8)), n_kv, 4)
    valid = np.ones(blocks.shape, bool)
    vis_per_head = block_visibility(
        blocks, valid, visibility(mask, b, t, s), block_size, shape.num_heads, False
    )
    out, grads = out_and_grads(
        q, k, v, w, jnp.asarray(blocks), mask, jnp.asarray(valid), block_size=block_size
    )
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    want = reference_subset(q, k, v, w, vis_per_head, distances(mask, b, t, s))
    assert_out_and_grads_close((out, grads), want, BF16_RTOL, f"[seed={seed}] bf16")


def test_rows_with_nothing_counted_give_zero_output_and_gradients(seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]  # MQA, T = S = 67
    q, k, v, w, mask = grid_case(rng, shape, "causal")
    block_size = 8
    n_q = -(-shape.q_len // block_size)
    # Query block a selects only blocks after its own (hidden by the causal mask); every third
    # query block has no valid slot at all (including the last, whose later blocks do not exist).
    blocks = np.minimum(np.arange(n_q)[:, None] + 1 + np.arange(3), n_q - 1)[None]
    valid = np.broadcast_to((np.arange(n_q) % 3 != 0) & (np.arange(n_q) < n_q - 1), (3, n_q)).T
    out, grads = out_and_grads(
        q, k, v, w, jnp.asarray(blocks), mask, jnp.asarray(valid[None]), block_size=block_size
    )
    for name, x in (("out", out), *zip(("dq", "dk", "dv"), grads, strict=True)):
        assert np.isfinite(np.asarray(x)).all(), f"[seed={seed}] {name} has non-finite values"
        assert not np.asarray(x).any(), f"[seed={seed}] {name} is not all 0"


def test_bad_arguments_raise_value_error():
    q = jnp.zeros((1, 10, 2, 8))
    k = jnp.zeros((1, 12, 1, 8))
    blocks = jnp.zeros((1, 3, 2), jnp.int32)  # ceil(10 / 4) = 3 query blocks
    with pytest.raises(ValueError, match=r"expected \[batch, q_blocks, n\] = \(1, 3, n\)"):
        block_sparse_attention(q, k, k, jnp.zeros((1, 10, 2), jnp.int32), block_size=4)
    with pytest.raises(ValueError, match="indices has dtype"):
        block_sparse_attention(q, k, k, blocks.astype(jnp.float32), block_size=4)
    with pytest.raises(ValueError, match="valid has shape"):
        block_sparse_attention(q, k, k, blocks, block_size=4, valid=jnp.ones((1, 3)))
    with pytest.raises(ValueError, match="block_size=0"):
        block_sparse_attention(q, k, k, blocks, block_size=0)
    with pytest.raises(ValueError, match="k has shape"):
        block_sparse_attention(q, k[0], k, blocks, block_size=4)
