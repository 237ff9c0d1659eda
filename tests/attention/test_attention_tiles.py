"""Blockwise tiles: classification against brute force, and results independent of block size."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    F32_RTOL,
    SHAPES,
    Shape,
    assert_close,
    grid_case,
    impl_out_and_grads,
    make_mask,
    mask_arrays,
    reference_attention,
    reference_grads,
    visibility,
)

from longctx_jax.attention import AttentionMask
from longctx_jax.attention.blockwise import EMPTY, FULL, PARTIAL, classify_tiles

BLOCKS = ((16, 32), (32, 16), (8, 8), (24, 40))


def blocked(x, block: int):
    """[B, L] -> [n_blocks, B, block], the last block padded by repeating the last entry.

    This is the layout `blockwise_attention` hands to `classify_tiles`.
    """
    b, length = x.shape
    n = -(-length // block)
    x = np.pad(x, ((0, 0), (0, n * block - length)), mode="edge")
    return jnp.asarray(x.reshape(b, n, block).transpose(1, 0, 2), jnp.int32)


def classify(mask, b, t, s, block_q, block_kv):
    causal, window, q_pos, kv_pos, q_seg, kv_seg = mask_arrays(mask, b, t, s)
    tiles = classify_tiles(
        causal,
        window,
        blocked(q_pos, block_q),
        blocked(q_seg, block_q),
        blocked(kv_pos, block_kv),
        blocked(kv_seg, block_kv),
        s,
        block_kv,
    )
    return np.asarray(tiles)


def brute_force(vis, block_q: int, block_kv: int):
    """Tile classes from the [B, T, S] visibility: a key past kv_len is never visible."""
    _, t, s = vis.shape
    nq, nkv = -(-t // block_q), -(-s // block_kv)
    out = np.empty((nq, nkv), np.int32)
    for i in range(nq):
        for j in range(nkv):
            tile = vis[:, i * block_q : (i + 1) * block_q, j * block_kv : (j + 1) * block_kv]
            padded = (j + 1) * block_kv > s
            out[i, j] = EMPTY if not tile.any() else FULL if tile.all() and not padded else PARTIAL
    return out


@pytest.mark.parametrize(
    "kind", ["none", "causal", "window", "sliding", "segments", "kv_cache", "combined"]
)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_classify_tiles_exact(shape, kind, seed):
    """Contiguous positions, sorted segments: the per-block bounds are exact."""
    rng = np.random.default_rng(seed)
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    mask = make_mask(kind, rng, shape)
    vis = visibility(mask, b, t, s)
    for block_q, block_kv in BLOCKS:
        got = classify(mask, b, t, s, block_q, block_kv)
        want = brute_force(vis, block_q, block_kv)
        np.testing.assert_array_equal(
            got, want, err_msg=f"[seed={seed} mask={kind} blocks={block_q, block_kv}]"
        )
        if kind in ("causal", "sliding", "kv_cache", "combined") and block_q == block_kv == 8:
            assert (got == EMPTY).any(), f"[seed={seed} mask={kind}] no tile is skipped"


@pytest.mark.parametrize("kind", ["permuted", "unsorted_segments"])
def test_classify_tiles_conservative(kind, seed):
    """Any layout: EMPTY only if no pair is visible, FULL only if every pair is."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    if kind == "permuted":
        mask = make_mask(kind, rng, shape)
    else:
        mask = AttentionMask(
            causal=True,
            q_segment_ids=jnp.asarray(rng.integers(0, 3, (b, t)), jnp.int32),
            kv_segment_ids=jnp.asarray(rng.integers(0, 3, (b, s)), jnp.int32),
        )
    vis = visibility(mask, b, t, s)
    for block_q, block_kv in BLOCKS:
        got = classify(mask, b, t, s, block_q, block_kv)
        want = brute_force(vis, block_q, block_kv)
        what = f"[seed={seed} mask={kind} blocks={block_q, block_kv}]"
        assert (want[got == EMPTY] == EMPTY).all(), f"{what} a tile with visible pairs is EMPTY"
        assert (want[got == FULL] == FULL).all(), f"{what} a tile with hidden pairs is FULL"


@pytest.mark.parametrize("kind", ["sliding", "permuted"])
def test_blockwise_independent_of_block_size(kind, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]
    q, k, v, w, mask = grid_case(rng, shape, kind)
    expected, _ = reference_attention(q, k, v, mask)
    results = {}
    for blocks in ((8, 8), (16, 32), (40, 24), (512, 512)):
        results[blocks] = impl_out_and_grads(
            q, k, v, w, mask, impl="blockwise_tiled", blocks=blocks
        )
        what = f"[seed={seed} mask={kind} blocks={blocks}]"
        assert_close(results[blocks][0], expected, F32_RTOL, f"{what} out vs float64 numpy")
    (first, (out0, grads0)), *rest = results.items()
    for blocks, (out, grads) in rest:
        what = f"[seed={seed} mask={kind} blocks={blocks} vs {first}]"
        assert_close(out, out0, F32_RTOL, f"{what} out")
        for name, g, g0 in zip(("dq", "dk", "dv"), grads, grads0, strict=False):
            assert_close(g, g0, F32_RTOL, f"{what} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["blockwise", "auto"])
def test_default_blocks_with_several_tiles(impl, seed):
    """Lengths above the default 512 block: several tiles, the last one padded."""
    rng = np.random.default_rng(seed)
    shape = Shape(1, 600, 700, 2, 1, 64, window=300)
    q, k, v, w, mask = grid_case(rng, shape, "combined")
    what = f"[seed={seed} impl={impl} shape={shape}]"

    out, grads = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    assert_close(out, reference_attention(q, k, v, mask)[0], F32_RTOL, f"{what} out")
    expected = reference_grads(q, k, v, w, mask)
    for name, got, want in zip(("dq", "dk", "dv"), grads, expected, strict=False):
        assert_close(got, want, F32_RTOL, f"{what} {name} vs float64 jax.grad reference")
