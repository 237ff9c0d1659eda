"""Top-k key selection from scores [B, T, S]: per token (exact, approx, threshold) or per block.

Every selector returns (indices int32 [B, T, k], valid bool [B, T, k]): `valid` is False in the
slots a row could not fill (fewer than k visible keys). A hidden key is never valid: scores are
-inf where the `AttentionMask` hides the key, and -inf scores are never selected as valid.
Ties are broken deterministically: the lower key index wins.

  exact      `lax.top_k` (indices by descending score).
  approx     `lax.approx_max_k` (TPU's approximate top-k; exact on CPU / GPU).
  threshold  per-row threshold search (`threshold.py`), exact, ascending indices; queries are
             processed `block_rows` at a time, so its temporaries are O(block_rows * S);
             the mask is applied per block, and under a causal mask on default positions a
             block reads only the key prefix it can see.
`select_blocks` selects whole key blocks by their best score (block granularity); `block_tokens`
lists the keys of selected blocks.
`keep_always` forces a local window and the first tokens into any selection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.logits import tile_visible
from longctx_jax.attention.mask import AttentionMask, visible
from longctx_jax.attention.sparse.threshold import compact_words, topk_words

METHODS = ("exact", "approx", "threshold")
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
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def threshold_topk(scores_BTS, k: int, *, mask=None, block_rows: int = DEFAULT_BLOCK_ROWS):
    """Exact top-k by per-row thresholds, `block_rows` queries at a time (ascending indices).

    The mask is applied block by block, and under a causal mask on default positions a block
    reads only the key prefix its queries can see (`key_widths`)."""
    b, t, s = scores_BTS.shape
    m = (AttentionMask() if mask is None else mask).resolved(b, t, s)
    bq = min(block_rows, t)
    n = -(-t // bq)
    pad = n * bq - t

    def to_blocks(x):
        """[B, T, ...] -> [n, B, bq, ...] (T padded to n * bq)."""
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((b, n, bq) + x.shape[2:]), 1, 0)

    def one_block(args, width):
        scores, q_pos, q_seg = args
        scores = scores[:, :, :width].astype(jnp.float32)
        if mask is not None:
            ok = visible(
                m.causal,
                m.window,
                q_pos[:, :, None],
                m.kv_positions[:, None, :width],
                q_seg[:, :, None],
                m.kv_segment_ids[:, None, :width],
            )
            scores = jnp.where(ok, scores, -jnp.inf)
        width_k = min(k, width)
        words = topk_words(scores.reshape(b * bq, width), width_k)
        indices, valid = compact_words(words, width_k)
        extra = ((0, 0), (0, k - width_k))
        return jnp.pad(indices, extra).reshape(b, bq, k), jnp.pad(valid, extra).reshape(b, bq, k)

    args = tuple(to_blocks(x) for x in (scores_BTS, m.q_positions, m.q_segment_ids))
    widths = key_widths(mask, t, s, bq) if mask is not None else [(0, n, s)]
    results = [
        lax.map(lambda a, w=width: one_block(a, w), tuple(x[lo:hi] for x in args))
        for lo, hi, width in widths
    ]
    indices, valid = (jnp.concatenate(parts) for parts in zip(*results, strict=True))
    unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n * bq, k)[:, :t]  # noqa: E731
    return unblock(indices), unblock(valid)


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
    """Block granularity: the `num_blocks` key blocks with the best max score.

    Returns (block indices [B, T, num_blocks], valid: the block holds a visible key), for
    `sparse_attention(..., block_size=block_size)`; `block_tokens` lists their keys.
    """
    scores_BTS = masked_scores(scores_BTS, mask)
    b, t, s = scores_BTS.shape
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: expected a positive int")
    n = -(-s // block_size)
    _check_k(num_blocks, n, what="num_blocks", against="key blocks")
    padded = jnp.pad(
        scores_BTS, ((0, 0), (0, 0), (0, n * block_size - s)), constant_values=-jnp.inf
    )
    values, blocks = lax.top_k(padded.reshape(b, t, n, block_size).max(-1), num_blocks)
    return blocks.astype(jnp.int32), values > -jnp.inf


def block_tokens(blocks, valid, *, block_size: int, kv_len: int):
    """(token indices [..., n * block_size], valid) of selected blocks; keys past kv_len are
    invalid (index 0). Visibility within a block is left to the mask."""
    tokens = (blocks[..., None] * block_size + jnp.arange(block_size)).reshape(
        blocks.shape[:-1] + (-1,)
    )
    ok = jnp.repeat(valid, block_size, axis=-1) & (tokens < kv_len)
    return jnp.where(ok, tokens, 0).astype(jnp.int32), ok


def keep_always(scores_BTS, mask: AttentionMask | None, *, local_window: int, first_tokens: int):
    """Scores with +inf on visible keys within `local_window` of the query or among the first
    `first_tokens` positions, so every selector picks them first (0 turns a rule off)."""
    b, t, s = scores_BTS.shape
    m = (AttentionMask() if mask is None else mask).resolved(b, t, s)
    distance = m.q_positions[:, :, None] - m.kv_positions[:, None, :]
    keep = (distance < local_window) | (m.kv_positions[:, None, :] < first_tokens)
    return jnp.where(keep & (scores_BTS > -jnp.inf), jnp.inf, scores_BTS)


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
    shape = tuple(getattr(scores_BTS, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"scores has shape {shape}: expected [batch, q_len, kv_len]")
    if mask is not None:
        if not isinstance(mask, AttentionMask):
            raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
        mask.validate(*shape)


def _check_k(k, limit: int, *, what: str = "k", against: str = "keys") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"{what}={k!r}: expected an int in [1, {limit}] ({limit} {against})")
