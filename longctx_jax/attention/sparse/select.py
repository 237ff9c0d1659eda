"""Top-k key selection from scores [B, T, S]: per token (exact, approx, threshold) or per block.

Every selector returns (indices int32 [B, T, k], valid bool [B, T, k]): `valid` is False in the
slots a row could not fill (fewer than k visible keys). A hidden key is never valid: scores are
-inf where the `AttentionMask` hides the key, and -inf scores are never selected as valid.
Ties are broken deterministically: the lower key index wins.

  exact      `lax.top_k` (indices by descending score).
  approx     `lax.approx_max_k` (TPU's approximate top-k; exact on CPU / GPU).
  threshold  per-row threshold search (`threshold.py`), exact, ascending indices; rows are
             processed `block_rows` at a time, so its temporaries are O(block_rows * S).
`select_blocks` selects whole key blocks by their best score (block granularity); `block_tokens`
lists the keys of selected blocks.
`keep_always` forces a local window and the first tokens into any selection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.logits import tile_visible
from longctx_jax.attention.mask import AttentionMask
from longctx_jax.attention.sparse.threshold import compact, sortable_keys, threshold_select

METHODS = ("exact", "approx", "threshold")
DEFAULT_BLOCK_ROWS = 32


def select_topk(scores_BTS, k: int, *, mask=None, method: str = "exact", block_rows=None):
    """The k best-scoring visible keys of every query; see the module docstring."""
    scores_BTS = masked_scores(scores_BTS, mask)
    _check_k(k, scores_BTS.shape[-1])
    if method == "exact":
        values, indices = lax.top_k(scores_BTS, k)
        return indices.astype(jnp.int32), values > -jnp.inf
    if method == "approx":
        values, indices = lax.approx_max_k(scores_BTS, k)
        return indices.astype(jnp.int32), values > -jnp.inf
    if method == "threshold":
        return threshold_topk(scores_BTS, k, block_rows=block_rows or DEFAULT_BLOCK_ROWS)
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def threshold_topk(scores_BTS, k: int, *, block_rows: int = DEFAULT_BLOCK_ROWS):
    """Exact top-k by per-row thresholds, `block_rows` rows at a time (ascending indices)."""
    b, t, s = scores_BTS.shape
    rows = b * t
    n_blocks = -(-rows // block_rows)
    scores = jnp.pad(scores_BTS.reshape(rows, s), ((0, n_blocks * block_rows - rows), (0, 0)))

    def one_block(scores_RS):
        return compact(threshold_select(sortable_keys(scores_RS), k), k)

    indices, valid = lax.map(one_block, scores.reshape(n_blocks, block_rows, s))
    unblock = lambda x: x.reshape(-1, k)[:rows].reshape(b, t, k)  # noqa: E731
    return unblock(indices), unblock(valid)


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
    shape = tuple(getattr(scores_BTS, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"scores has shape {shape}: expected [batch, q_len, kv_len]")
    scores_BTS = jnp.asarray(scores_BTS, jnp.float32)
    if mask is None:
        return scores_BTS
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
    mask.validate(*shape)
    m = mask.resolved(*shape)
    ok = tile_visible(
        m.causal, m.window, m.q_positions, m.kv_positions, m.q_segment_ids, m.kv_segment_ids
    )[:, 0, 0]
    return jnp.where(ok, scores_BTS, -jnp.inf)


def _check_k(k, limit: int, *, what: str = "k", against: str = "keys") -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"{what}={k!r}: expected an int in [1, {limit}] ({limit} {against})")
