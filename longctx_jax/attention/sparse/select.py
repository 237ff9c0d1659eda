"""Top-k key selection from scores [B, T, S]: per token (exact, approx, threshold) or per block.

Every token selector returns (indices int32 [B, T, k], valid bool [B, T, k]): `valid` is False in
the slots a row could not fill (fewer than k visible keys). A hidden key is never valid: scores
are -inf where the `AttentionMask` hides the key, and -inf scores are never selected as valid.
Ties are broken deterministically: the lower key index wins.

  exact      `lax.top_k` (indices by descending score).
  approx     `lax.approx_max_k` (TPU's approximate top-k; exact on CPU / GPU).
  native     exact radix selection per row, a native CPU custom call (`native.py`; the
             threshold search on other platforms), ascending indices.
  threshold  per-row threshold search (`threshold.py`), exact, ascending indices; queries are
             processed `block_rows` at a time, so its temporaries are O(block_rows * S);
             the mask is applied per block, and under a causal mask on default positions a
             block reads only the key prefix it can see.

Block granularity (`select_blocks`, for `block_sparse_attention`): queries are grouped in
aligned blocks of block_size (query block a = queries [a * bs, (a + 1) * bs), the last padded),
and all queries of a block share one selection of n key blocks (key block j = keys
[j * bs, (j + 1) * bs)), made by the block's anchor, its first query a * bs: key blocks are
ranked by the max of the anchor's scores over the keys of the block the mask shows it. Only the
anchor may choose: a later query's index features depend on tokens after the anchor, so
ranking by them (or by a max over the block's queries) would let those later tokens change the
keys, hence the outputs, of the block's earlier queries. The block's own key block (the one
holding key anchor + S - T, the anchor's own index under the KV-cache alignment, clamped into
range) is always selected, so every query of the block sees its recent keys (all of them when
S - T is a multiple of block_size; otherwise a later query's newest keys can lie in the next
key block, which its anchor cannot see); it takes one of the n slots (slot 0). Ties: the lower
block index wins. `valid` is False for slots that cannot be filled (no other block holds a key
visible to the anchor). `block_tokens` lists each query's keys of a block selection.
`keep_always` forces a local window and the first tokens into any selection (for block
granularity, into the anchor's ranking).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.logits import tile_visible
from longctx_jax.attention.mask import AttentionMask, ResolvedMask, visible
from longctx_jax.attention.sparse.native import native_topk
from longctx_jax.attention.sparse.prepare import check_block_size
from longctx_jax.attention.sparse.threshold import compact_words, topk_words
from longctx_jax.attention.sparse.tiles import merge_rows, split_rows

METHODS = ("exact", "approx", "threshold", "native")
DEFAULT_BLOCK_ROWS = 32


def select_topk(scores_BTS, k: int, *, mask=None, method: str = "exact", block_rows=None):
    """The k best-scoring visible keys of every query; see the module docstring."""
    if method == "threshold":
        _check_scores(scores_BTS, mask)
        _check_k(k, scores_BTS.shape[-1])
        return threshold_topk(scores_BTS, k, mask=mask, block_rows=block_rows or DEFAULT_BLOCK_ROWS)
    scores_BTS = masked_scores(scores_BTS, mask)
    _check_k(k, scores_BTS.shape[-1])
    if method == "exact":
        values, indices = lax.top_k(scores_BTS, k)
        return indices.astype(jnp.int32), values > -jnp.inf
    if method == "approx":
        values, indices = lax.approx_max_k(scores_BTS, k)
        return indices.astype(jnp.int32), values > -jnp.inf
    if method == "native":
        b, t, s = scores_BTS.shape
        indices, valid = native_topk(scores_BTS.reshape(b * t, s), k)
        return indices.reshape(b, t, k), valid.reshape(b, t, k)
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def threshold_topk(scores_BTS, k: int, *, mask=None, block_rows: int = DEFAULT_BLOCK_ROWS):
    """Exact top-k by per-row thresholds, `block_rows` queries at a time (ascending indices).

    The mask is applied block by block, and under a causal mask on default positions a block
    reads only the key prefix its queries can see (`key_widths`)."""
    b, t, s = scores_BTS.shape
    m = (AttentionMask() if mask is None else mask).resolved(b, t, s)
    bq = min(block_rows, t)

    def one_block(args, width):
        scores, q_pos, q_seg = args
        scores = scores[:, :, :width].astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(prefix_visible(m, q_pos, q_seg, width), scores, -jnp.inf)
        return select_rows(scores, k, "threshold")

    rows = (scores_BTS, m.q_positions, m.q_segment_ids)
    return map_key_prefixes(one_block, rows, mask or AttentionMask(), t, s, bq)


def map_key_prefixes(fn, rows, mask: AttentionMask, t: int, s: int, bq: int):
    """fn(block, width) over blocks of `bq` queries of each [B, T, ...] array in `rows`, a
    `lax.map` per group of blocks that `key_widths` gives the same key prefix; fn's outputs
    (a tuple of [B, bq, ...] arrays) are merged back to [B, T, ...]."""
    args = tuple(split_rows(x, bq) for x in rows)
    results = [
        lax.map(lambda a, w=width: fn(a, w), tuple(x[lo:hi] for x in args))
        for lo, hi, width in key_widths(mask, t, s, bq)
    ]
    return tuple(merge_rows(jnp.concatenate(parts), t) for parts in zip(*results, strict=True))


def select_rows(scores_BQW, k: int, method: str):
    """(indices, valid) [B, Q, k] of one block of masked scores by `METHODS`; when the block has
    fewer than k keys the extra slots are invalid."""
    b, q, width = scores_BQW.shape
    n = min(k, width)
    if method in ("exact", "approx"):
        top = lax.top_k if method == "exact" else lax.approx_max_k
        values, indices = top(scores_BQW, n)
        indices, valid = indices.astype(jnp.int32), values > -jnp.inf
    else:
        rows = scores_BQW.reshape(b * q, width)
        if method == "native":
            indices, valid = native_topk(rows, n)
        else:
            indices, valid = compact_words(topk_words(rows, n), n)
        indices, valid = indices.reshape(b, q, n), valid.reshape(b, q, n)
    extra = ((0, 0), (0, 0), (0, k - n))
    return jnp.pad(indices, extra), jnp.pad(valid, extra)


def prefix_visible(m: ResolvedMask, q_pos_BQ, q_seg_BQ, width: int) -> jax.Array:
    """Bool [B, Q, width]: which of the first `width` keys each query of a block sees."""
    return visible(
        m.causal,
        m.window,
        q_pos_BQ[:, :, None],
        m.kv_positions[:, None, :width],
        q_seg_BQ[:, :, None],
        m.kv_segment_ids[:, None, :width],
    )


def key_widths(mask: AttentionMask, t: int, s: int, bq: int):
    """[(first block, end block, keys to read)]: query blocks grouped by how many leading keys
    they can see. With a causal mask on default positions (t == s), block i sees only keys
    below (i + 1) * bq, so groups of blocks read doubling prefixes (about 2/3 of the work of
    reading every key); any other mask reads every key."""
    n = -(-t // bq)
    if not (mask.causal and mask.q_positions is None and mask.kv_positions is None and t == s):
        return [(0, n, s)]
    groups, start, width = [], 0, bq
    while start < n:
        end = n if width >= s else min(n, width // bq)
        groups.append((start, end, min(width, s)))
        start, width = end, width * 2
    return groups


def select_blocks(scores_BTS, num_blocks: int, *, block_size: int = 64, mask=None):
    """Block granularity (see the module docstring): each query block's anchor ranks the key
    blocks by its best visible score; returns (block indices int32 [B, nQ, num_blocks], valid),
    nQ = ceil(T / block_size), for `block_sparse_attention`."""
    b, t, s = _scores_shape(scores_BTS)
    check_block_size(block_size)
    _check_k(num_blocks, -(-s // block_size), what="num_blocks", against="key blocks")
    anchors = masked_scores(
        jnp.asarray(scores_BTS)[:, ::block_size], anchor_mask(mask, b, t, s, block_size)
    )
    return top_blocks(block_maxima(anchors, block_size), num_blocks, own_blocks(t, s, block_size))


def anchor_mask(mask: AttentionMask | None, b: int, t: int, s: int, block_size: int):
    """The `AttentionMask` of the query blocks' anchors (queries 0, bs, 2 bs, ...) over the keys."""
    mask = AttentionMask() if mask is None else mask
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
    mask.validate(b, t, s)
    m = mask.resolved(b, t, s)
    return AttentionMask(
        causal=m.causal,
        window=m.window,
        q_segment_ids=m.q_segment_ids[:, ::block_size],
        kv_segment_ids=m.kv_segment_ids,
        q_positions=m.q_positions[:, ::block_size],
        kv_positions=m.kv_positions,
    )


def own_blocks(q_len: int, kv_len: int, block_size: int) -> jax.Array:
    """int32 [nQ]: the key block holding each query block's anchor index + (S - T), clamped."""
    anchors = jnp.arange(-(-q_len // block_size), dtype=jnp.int32) * block_size
    own = (anchors + (kv_len - q_len)) // block_size
    return jnp.clip(own, 0, -(-kv_len // block_size) - 1)


def block_maxima(scores_BQS, block_size: int) -> jax.Array:
    """[B, Q, ceil(S / block_size)]: each key block's max score (-inf past the last key)."""
    b, q, s = scores_BQS.shape
    n = -(-s // block_size)
    padded = jnp.pad(
        scores_BQS, ((0, 0), (0, 0), (0, n * block_size - s)), constant_values=-jnp.inf
    )
    return padded.reshape(b, q, n, block_size).max(-1)


def top_blocks(maxima_BQn, num_blocks: int, own_Q):
    """(blocks int32 [B, Q, num_blocks], valid): each row's own block in slot 0, then the other
    num_blocks - 1 blocks by descending max (ties: lower index); valid iff the max is > -inf."""
    b, q, n = maxima_BQn.shape
    own = jnp.broadcast_to(own_Q[None, :, None], (b, q, 1)).astype(jnp.int32)
    others = jnp.where(jnp.arange(n) == own, -jnp.inf, maxima_BQn)
    values, blocks = lax.top_k(others, num_blocks - 1)
    return (
        jnp.concatenate([own, blocks.astype(jnp.int32)], -1),
        jnp.concatenate([jnp.ones((b, q, 1), bool), values > -jnp.inf], -1),
    )


def block_tokens(blocks, valid, *, block_size: int, q_len: int, kv_len: int):
    """Per-query keys of a block selection: blocks, valid [B, nQ, ..., n] -> (token indices
    [B, q_len, ..., n * block_size], valid), each query taking its query block's row. Keys past
    kv_len are invalid (index 0); visibility within a block is left to the mask."""
    tokens = (blocks[..., None] * block_size + jnp.arange(block_size)).reshape(
        blocks.shape[:-1] + (-1,)
    )
    ok = jnp.repeat(valid, block_size, axis=-1) & (tokens < kv_len)
    per_query = lambda x: jnp.repeat(x, block_size, axis=1)[:, :q_len]  # noqa: E731
    return per_query(jnp.where(ok, tokens, 0).astype(jnp.int32)), per_query(ok)


def keep_always(scores_BTS, mask: AttentionMask | None, *, local_window: int, first_tokens: int):
    """Scores with +inf on visible keys within `local_window` of the query or among the first
    `first_tokens` positions, so every selector picks them first (0 turns a rule off)."""
    b, t, s = scores_BTS.shape
    m = (AttentionMask() if mask is None else mask).resolved(b, t, s)
    return kept(scores_BTS, m.q_positions, m.kv_positions, local_window, first_tokens)


def kept(scores_BQW, q_pos_BQ, kv_pos_BW, local_window: int, first_tokens: int):
    """`keep_always` on a tile: scores [B, Q, W] of queries at q_pos over keys at kv_pos."""
    if not (local_window or first_tokens):
        return scores_BQW
    distance = q_pos_BQ[:, :, None] - kv_pos_BW[:, None, :]
    keep = (distance < local_window) | (kv_pos_BW[:, None, :] < first_tokens)
    return jnp.where(keep & (scores_BQW > -jnp.inf), jnp.inf, scores_BQW)


def masked_scores(scores_BTS, mask: AttentionMask | None) -> jax.Array:
    """float32 scores with -inf where `mask` hides the key (scores unchanged if mask is None)."""
    _check_scores(scores_BTS, mask)
    scores_BTS = jnp.asarray(scores_BTS, jnp.float32)
    if mask is None:
        return scores_BTS
    m = mask.resolved(*scores_BTS.shape)
    ok = tile_visible(
        m.causal, m.window, m.q_positions, m.kv_positions, m.q_segment_ids, m.kv_segment_ids
    )[:, 0, 0]
    return jnp.where(ok, scores_BTS, -jnp.inf)


def _check_scores(scores_BTS, mask) -> None:
    shape = _scores_shape(scores_BTS)
    if mask is not None:
        if not isinstance(mask, AttentionMask):
            raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
        mask.validate(*shape)


def _scores_shape(scores_BTS) -> tuple:
    shape = tuple(getattr(scores_BTS, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"scores has shape {shape}: expected [batch, q_len, kv_len]")
    return shape


def _check_k(k, limit: int, *, what: str = "k", against: str = "keys") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"{what}={k!r}: expected an int in [1, {limit}] ({limit} {against})")
