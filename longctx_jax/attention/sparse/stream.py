"""Index scoring fused with selection, a block of queries at a time: the [T, S] scores are never
held whole, so memory is O(T * k) for the selection plus O(block_q * S) of temporaries. Under a
causal mask on default positions, each query block scores only the key prefix it can see."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.mask import AttentionMask, visible
from longctx_jax.attention.sparse.indexer import _check_features, score_tile
from longctx_jax.attention.sparse.select import _check_k, key_widths, select_blocks
from longctx_jax.attention.sparse.threshold import compact_words, topk_words

GRANULARITIES = ("token", "block")


def select_from_features(
    q_BTJI,
    k_BSI,
    w_BTJ,
    k: int,
    *,
    mask: AttentionMask | None = None,
    method: str = "threshold",
    granularity: str = "token",
    block_size: int = 64,
    block_q: int = 32,
):
    """(indices, valid) of the best index scores, scoring `block_q` queries at a time.

    granularity "token": [B, T, k] key indices by method "threshold" (exact, fast) or "exact"
    (lax.top_k per block); "block": [B, T, k // block_size] indices of the key blocks with the
    best max score (for `sparse_attention(..., block_size=block_size)`).
    """
    _check_features(q_BTJI, k_BSI, w_BTJ)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: expected one of {GRANULARITIES}")
    if method not in ("threshold", "exact"):
        raise ValueError(f"method={method!r}: expected 'threshold' or 'exact'")
    b, t, _, _ = q_BTJI.shape
    s = k_BSI.shape[1]
    _check_k(k, s)
    mask = AttentionMask() if mask is None else mask
    mask.validate(b, t, s)
    m = mask.resolved(b, t, s)
    bq = min(block_q, t)
    n = -(-t // bq)

    pad = n * bq - t

    def to_blocks(x):
        """[B, T, ...] -> [n, B, bq, ...] (T padded with zeros to n * bq)."""
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((b, n, bq) + x.shape[2:]), 1, 0)

    out_width = max(k // block_size, 1) if granularity == "block" else k

    def select_block(args, width: int):
        """Selection for one query block from the first `width` keys, padded to out_width."""
        q_blk, w_blk, q_pos, q_seg = args
        ok = visible(
            m.causal,
            m.window,
            q_pos[:, :, None],
            m.kv_positions[:, None, :width],
            q_seg[:, :, None],
            m.kv_segment_ids[:, None, :width],
        )
        scores = jnp.where(ok, score_tile(q_blk, k_BSI[:, :width], w_blk), -jnp.inf)
        if granularity == "block":
            n_sel = min(out_width, -(-width // block_size))
            indices, valid = select_blocks(scores, n_sel, block_size=block_size)
        elif method == "exact":
            values, indices = lax.top_k(scores, min(k, width))
            indices, valid = indices.astype(jnp.int32), values > -jnp.inf
        else:
            words = topk_words(scores.reshape(b * bq, width), min(k, width))
            indices, valid = compact_words(words, min(k, width))
            indices, valid = indices.reshape(b, bq, -1), valid.reshape(b, bq, -1)
        extra = ((0, 0), (0, 0), (0, out_width - indices.shape[-1]))
        return jnp.pad(indices, extra), jnp.pad(valid, extra)

    args = tuple(to_blocks(x) for x in (q_BTJI, w_BTJ, m.q_positions, m.q_segment_ids))
    results = []
    for lo, hi, width in key_widths(mask, t, s, bq):
        group = tuple(x[lo:hi] for x in args)
        results.append(lax.map(lambda a, w=width: select_block(a, w), group))
    indices, valid = (jnp.concatenate(parts) for parts in zip(*results, strict=True))
    unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n * bq, -1)[:, :t]  # noqa: E731
    return unblock(indices), unblock(valid)
