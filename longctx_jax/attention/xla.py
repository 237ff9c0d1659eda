"""`impl="xla"`: jax.nn.dot_product_attention with the mask and ALiBi bias built densely.

The baseline the other implementations are measured against (what a model gets from JAX's own
attention). It materialises [B, T, S] masks and the [B, N, T, S] logits, so memory is O(T * S).
jax.nn has no logit soft cap (the API rejects one for this impl), and a row with no visible key
would come back as the mean of V: it is zeroed here, which also zeroes its gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longctx_jax.attention.logits import alibi_bias, tile_visible
from longctx_jax.attention.mask import ResolvedMask


def xla_attention(q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes):
    """Attention output [B, T, N, H] in q's dtype via jax.nn.dot_product_attention."""
    del soft_cap  # rejected by the API before we get here
    ok_B1TS = tile_visible(
        mask.causal,
        mask.window,
        mask.q_positions,
        mask.kv_positions,
        mask.q_segment_ids,
        mask.kv_segment_ids,
    )[:, 0]
    bias = None
    if slopes is not None:
        b, t, n, _ = q.shape
        kv_heads = k.shape[2]
        bias_BKGTS = alibi_bias(
            slopes.reshape(kv_heads, n // kv_heads), mask.q_positions, mask.kv_positions
        )
        bias = bias_BKGTS.reshape(b, n, t, -1).astype(q.dtype)
    out = jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=ok_B1TS, scale=scale, implementation="xla"
    )
    seen_BT = ok_B1TS[:, 0].any(-1)
    return jnp.where(seen_BT[:, :, None, None], out, jnp.zeros_like(out))
