"""Index scoring fused with selection, a block of queries at a time: the [T, S] scores are never
held whole, so memory is O(T * k) for the selection plus O(block_q * S) of temporaries. Under a
causal mask on default positions, each query block scores only the key prefix it can see.
Block granularity scores only the query blocks' anchors ([B, T / block_size, S] scores, a
block_size-th of the work; see select.py for why only the anchor chooses)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.mask import AttentionMask
from longctx_jax.attention.sparse.indexer import _check_features, score_tile
from longctx_jax.attention.sparse.prepare import check_block_size
from longctx_jax.attention.sparse.select import (
    METHODS,
    _check_k,
    anchor_mask,
    block_maxima,
    kept,
    map_key_prefixes,
    own_blocks,
    prefix_visible,
    select_rows,
    top_blocks,
)
from longctx_jax.attention.sparse.tiles import merge_rows, split_rows

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
    local_window: int = 0,
    first_tokens: int = 0,
):
    """(indices, valid) of the best index scores, scoring `block_q` queries at a time.

    granularity "token": [B, T, k] key indices by a method of `METHODS` ("threshold": exact and
    fast); "block": [B, ceil(T / block_size), k // block_size] key-block indices chosen by each
    query block's anchor (as `select_blocks`; for `block_sparse_attention`). local_window and
    first_tokens force keys into the selection as `keep_always` does.
    """
    _check_features(q_BTJI, k_BSI, w_BTJ)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: expected one of {GRANULARITIES}")
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    b, t, _, _ = q_BTJI.shape
    s = k_BSI.shape[1]
    _check_k(k, s)
    if granularity == "block":
        maxima = anchor_block_maxima(
            q_BTJI,
            k_BSI,
            w_BTJ,
            mask=mask,
            block_size=block_size,
            block_q=block_q,
            keep=(local_window, first_tokens),
        )
        num_blocks = min(max(k // block_size, 1), maxima.shape[-1])
        return top_blocks(maxima, num_blocks, own_blocks(t, s, block_size))
    mask = AttentionMask() if mask is None else mask
    mask.validate(b, t, s)
    m = mask.resolved(b, t, s)
    bq = min(block_q, t)

    def select_block(args, width: int):
        """Selection for one query block from the first `width` keys, padded to k."""
        scores = _masked_tile(m, k_BSI[:, :width], *args, keep=(local_window, first_tokens))
        return select_rows(scores, k, method)

    rows = (q_BTJI, w_BTJ, m.q_positions, m.q_segment_ids)
    return map_key_prefixes(select_block, rows, mask, t, s, bq)


def anchor_block_maxima(
    q_BTJI,
    k_BSI,
    w_BTJ,
    *,
    mask: AttentionMask | None = None,
    block_size: int,
    block_q: int = 32,
    keep=(0, 0),
):
    """[B, nQ, nS]: each query block's anchor's index scores reduced to per-key-block maxima (-inf
    where the anchor sees no key of the block), scored `block_q` anchors at a time. This is all
    the scoring block granularity does. keep = (local_window, first_tokens) as `keep_always`."""
    _check_features(q_BTJI, k_BSI, w_BTJ)
    check_block_size(block_size)
    b, t, _, _ = q_BTJI.shape
    s = k_BSI.shape[1]
    n_q = -(-t // block_size)
    m = anchor_mask(mask, b, t, s, block_size).resolved(b, n_q, s)

    def one(args):
        return block_maxima(_masked_tile(m, k_BSI, *args, keep=keep), block_size)

    anchors = (q_BTJI[:, ::block_size], w_BTJ[:, ::block_size], m.q_positions, m.q_segment_ids)
    bq = min(block_q, n_q)
    return merge_rows(lax.map(one, tuple(split_rows(x, bq) for x in anchors)), n_q)


def _masked_tile(m, k_BWI, q_BQJI, w_BQJ, q_pos_BQ, q_seg_BQ, *, keep):
    """Index scores [B, Q, W] of a block of queries over the first W keys; -inf where hidden,
    +inf on the keys `keep` = (local_window, first_tokens) forces in."""
    width = k_BWI.shape[1]
    ok = prefix_visible(m, q_pos_BQ, q_seg_BQ, width)
    scores = jnp.where(ok, score_tile(q_BQJI, k_BWI, w_BQJ), -jnp.inf)
    return kept(scores, q_pos_BQ, m.kv_positions[:, :width], *keep)
