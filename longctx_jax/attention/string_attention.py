"""STRING: attention with far RoPE distances shifted onto well-trained ones (evaluation only).

An et al., 2024, "Why Does the Effective Context Length of LLMs Fall Short?" (arXiv:2410.18745,
Sec. 4): a model trained with RoPE at length N rarely sees relative distances near N, so they
stay undertrained. At inference STRING rewrites the relative position d = q_pos - kv_pos of
every (query, key) pair as

    d' = d - S + W   if d >= S        (S: shift offset, ~N / 3; W: local window, 0 < W < S)
    d' = d           otherwise

so the farthest keys are read at the well-trained distances W, W + 1, ... while the nearer keys
keep theirs. RoPE's q.k depends on positions only through their difference, so a query rotated
at q_pos - S + W (`q_far`) against keys rotated at kv_pos sees exactly d - S + W. Each logit comes
from `q_far` where d >= S and from `q` (rotated at q_pos) otherwise; scale, soft cap, mask and
the float32 softmax are those of `reference` attention.

Dense, O(T * S) memory: an evaluation-time option for small models. The flash formulation (the
paper's code) runs two attentions, `q` over the keys at d < S and `q_far` over those at d >= S,
and merges their outputs o1, o2 by their log-sum-exps: (o1 e^lse1 + o2 e^lse2) / (e^lse1 + e^lse2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longctx_jax.attention.api import _prepare
from longctx_jax.attention.logits import scores, tile_visible
from longctx_jax.attention.reference import split_heads, visible_softmax, weighted_values
from longctx_jax.checks import is_int


def string_weights(
    q, q_far, k, v=None, *, shift: int, mask=None, scale=None, logits_soft_cap=None
) -> jax.Array:
    """STRING attention probabilities [batch, num_heads, q_len, kv_len] (float32).

    q, q_far: [batch, q_len, num_heads, head_dim], the queries rotated at q_pos and at
    q_pos - shift + window; k (rotated at kv_pos), v: [batch, kv_len, num_kv_heads, head_dim].
    shift: S >= 1; pairs with q_pos - kv_pos >= S read their logit from q_far. The other
    arguments are `attention()`'s (no ALiBi: STRING shifts RoPE distances).
    """
    v = k if v is None else v
    if getattr(q_far, "shape", None) != q.shape or getattr(q_far, "dtype", None) != q.dtype:
        raise ValueError(
            f"q_far has shape {getattr(q_far, 'shape', None)}, dtype "
            f"{getattr(q_far, 'dtype', None)}: expected q's {q.shape}, {q.dtype}"
        )
    if not is_int(shift) or shift < 1:
        raise ValueError(f"shift={shift!r}: expected an int >= 1")
    resolved, scale = _prepare(q, k, v, mask, scale, logits_soft_cap, None)
    kT_BKHS = k.transpose(0, 2, 3, 1)
    near, far = (
        scores(split_heads(x, k.shape[2]), kT_BKHS, scale=scale, soft_cap=logits_soft_cap)
        for x in (q, q_far)
    )
    q_pos, kv_pos = resolved.q_positions, resolved.kv_positions
    is_far = (q_pos[:, :, None] - kv_pos[:, None, :] >= shift)[:, None, None]
    ok = tile_visible(
        resolved.causal,
        resolved.window,
        q_pos,
        kv_pos,
        resolved.q_segment_ids,
        resolved.kv_segment_ids,
    )
    return visible_softmax(jnp.where(ok, jnp.where(is_far, far, near), -jnp.inf), ok)


def string_attention(q, q_far, k, v, *, shift: int, mask=None, scale=None, logits_soft_cap=None):
    """STRING attention output [batch, q_len, num_heads, head_dim] in q's dtype (see
    `string_weights` for the arguments). A query that sees no key gets 0."""
    options = dict(shift=shift, mask=mask, scale=scale, logits_soft_cap=logits_soft_cap)
    return weighted_values(string_weights(q, q_far, k, v, **options), v).astype(q.dtype)
