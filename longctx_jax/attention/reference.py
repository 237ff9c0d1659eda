"""Dense reference attention: the whole [T, S] logit matrix, float32 softmax.

Simple on purpose: this is the function every other implementation is tested against, and the one
that returns attention probabilities for attention-map notebooks. Memory is O(T * S).
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from longctx_jax.attention.logits import masked_logits
from longctx_jax.attention.mask import ResolvedMask


def split_heads(q_BTNH, num_kv_heads: int) -> jax.Array:
    """[B, T, N, H] -> [B, K, G, T, H] with query head n = k * G + g (GQA groups)."""
    return einops.rearrange(q_BTNH, "b t (k g) h -> b k g t h", k=num_kv_heads)


def merge_heads(x_BKGTH) -> jax.Array:
    """[B, K, G, T, H] -> [B, T, K * G, H]."""
    return einops.rearrange(x_BKGTH, "b k g t h -> b t (k g) h")


def reference_weights(q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes):
    """Attention probabilities [B, N, T, S] in float32; rows with no visible key are all 0."""
    del v
    num_kv_heads = k.shape[2]
    q_BKGTH = split_heads(q, num_kv_heads)
    kT_BKHS = k.transpose(0, 2, 3, 1)
    slopes_KG = None if slopes is None else slopes.reshape(num_kv_heads, -1)
    parts = (
        mask.causal,
        mask.window,
        mask.q_positions,
        mask.kv_positions,
        mask.q_segment_ids,
        mask.kv_segment_ids,
    )
    s, ok = masked_logits(
        q_BKGTH, kT_BKHS, parts, scale=scale, soft_cap=soft_cap, slopes_KG=slopes_KG
    )
    return visible_softmax(s, ok)


def visible_softmax(s_BKGTS, ok) -> jax.Array:
    """Row softmax over the visible keys, [B, K, G, T, S] logits -> [B, K * G, T, S] float32;
    rows with no visible key are all 0."""
    row_max = jnp.max(s_BKGTS, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(ok, jnp.exp(s_BKGTS - row_max), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(denom > 0, denom, 1.0)
    b, kh, g, t, sl = p.shape
    return p.reshape(b, kh * g, t, sl)


def reference_attention(q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes):
    """Dense attention output [B, T, N, H] in q's dtype."""
    p = reference_weights(q, k, v, mask, scale=scale, soft_cap=soft_cap, slopes=slopes)
    return weighted_values(p, v).astype(q.dtype)


def weighted_values(p, v) -> jax.Array:
    """Probabilities p [B, N, T, S] times v [B, S, K, H] -> [B, T, N, H] float32."""
    num_kv_heads = v.shape[2]
    b, n, t, s = p.shape
    p_BKGTS = p.reshape(b, num_kv_heads, n // num_kv_heads, t, s)
    out = jnp.einsum(
        "bkgts,bksh->bkgth",
        p_BKGTS.astype(v.dtype),
        v.transpose(0, 2, 1, 3),
        preferred_element_type=jnp.float32,
    )
    return merge_heads(out)
