"""Attention logits for one (query block, key block) tile, shared by every implementation.

Order of operations (the definition every implementation follows):
  s = scale * q.k;  s = cap * tanh(s / cap) if a soft cap is set;  s += -slope * (q_pos - kv_pos)
  (ALiBi, from positions);  s = -inf where the mask hides the key.
Layouts: q [B, K, G, T, H] (query head n = k * G + g), k transposed [B, K, H, S] (so the matmul
reads both operands in their stored layout); logits [B, K, G, T, S].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longctx_jax.attention.mask import visible


def scores(q_BKGTH, kT_BKHS, *, scale: float, soft_cap: float | None) -> jax.Array:
    """Scaled (and soft-capped) q.k in float32, before bias and mask."""
    s = jnp.einsum("bkgth,bkhs->bkgts", q_BKGTH, kT_BKHS, preferred_element_type=jnp.float32)
    if scale != 1.0:
        s = s * scale
    if soft_cap is not None:
        s = soft_cap * jnp.tanh(s / soft_cap)
    return s


def alibi_bias(slopes_KG, q_pos_BT, kv_pos_BS) -> jax.Array:
    """-slope * (q_pos - kv_pos), [B, K, G, T, S], computed from positions for this tile only."""
    distance = (q_pos_BT[:, :, None] - kv_pos_BS[:, None, :]).astype(jnp.float32)
    return -slopes_KG.astype(jnp.float32)[None, :, :, None, None] * distance[:, None, None]


def tile_visible(causal, window, q_pos_BT, kv_pos_BS, q_seg_BT, kv_seg_BS) -> jax.Array:
    """Boolean visibility [B, 1, 1, T, S] for one tile."""
    ok = visible(
        causal,
        window,
        q_pos_BT[:, :, None],
        kv_pos_BS[:, None, :],
        q_seg_BT[:, :, None],
        kv_seg_BS[:, None, :],
    )
    return ok[:, None, None]


def masked_logits(q_BKGTH, kT_BKHS, mask_parts, *, scale, soft_cap, slopes_KG):
    """Full logits for a tile: returns (logits with -inf where hidden, visibility)."""
    causal, window, q_pos, kv_pos, q_seg, kv_seg = mask_parts
    s = scores(q_BKGTH, kT_BKHS, scale=scale, soft_cap=soft_cap)
    if slopes_KG is not None:
        s = s + alibi_bias(slopes_KG, q_pos, kv_pos)
    ok = tile_visible(causal, window, q_pos, kv_pos, q_seg, kv_seg)
    return jnp.where(ok, s, -jnp.inf), ok
