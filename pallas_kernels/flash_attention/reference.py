"""Dense pure-JAX attention in the kernels' layout: the function the kernels are tested against.

Written from the definition in problem.py's docstring, with the whole [T, S] logit matrix in
float32; O(T * S) memory, so for tests and small inputs only.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.flash_attention.problem import default_scale


def reference_flash_attention(
    q,
    k,
    v,
    *,
    q_positions,
    kv_positions,
    q_segment_ids,
    kv_segment_ids,
    slopes=None,
    causal=False,
    window=None,
    scale=None,
    soft_cap=None,
):
    """[B, N, T, H] in q's dtype; q [B, N, T, H], k, v [B, K, S, H]."""
    b, n, t, h = q.shape
    groups = n // k.shape[1]
    k_rep = jnp.repeat(k, groups, axis=1)
    v_rep = jnp.repeat(v, groups, axis=1)
    s = jnp.einsum("bnth,bnsh->bnts", q, k_rep, preferred_element_type=jnp.float32)
    s = s * default_scale(h, scale)
    if soft_cap is not None:
        s = soft_cap * jnp.tanh(s / soft_cap)
    distance = (q_positions[:, :, None] - kv_positions[:, None, :]).astype(jnp.float32)
    if slopes is not None:
        s = s - slopes.astype(jnp.float32)[None, :, None, None] * distance[:, None]
    ok = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        ok &= distance >= 0
    if window is not None:
        ok &= distance < window
    ok = ok[:, None]
    s = jnp.where(ok, s, -jnp.inf)
    row_max = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.where(ok, jnp.exp(s - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
    total = p.sum(-1, keepdims=True)
    p = p / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum(
        "bnts,bnsh->bnth", p.astype(v.dtype), v_rep, preferred_element_type=jnp.float32
    )
    return out.astype(q.dtype)
