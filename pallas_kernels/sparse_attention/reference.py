"""Gather-based pure-JAX sparse attention in the kernel's terms: what tpu.py is tested against.

q [B, T, N, H]; k, v [B, S, K, H]; indices [B, T, K, k] int32, the keys each query attends to
per kv head (shared by the N // K query heads of that kv head); a slot holding -1 does not count.
A query with no counted slot outputs 0. Materialises the gathered keys, so for tests only.
"""

from __future__ import annotations

import jax.numpy as jnp


def reference_sparse_attention(q, k, v, indices, *, scale):
    """[B, T, N, H] in q's dtype."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q_BTKGH = q.reshape(b, t, kv_heads, n // kv_heads, h)
    rows = jnp.maximum(indices, 0)  # [B, T, K, k]
    batch = jnp.arange(b)[:, None, None, None]
    head = jnp.arange(kv_heads)[None, None, :, None]
    k_sel, v_sel = k[batch, rows, head], v[batch, rows, head]  # [B, T, K, k, H]
    s = jnp.einsum("btkgh,btknh->btkgn", q_BTKGH, k_sel, preferred_element_type=jnp.float32)
    ok = (indices >= 0)[:, :, :, None, :]
    s = jnp.where(ok, s * scale, -jnp.inf)
    row_max = s.max(-1, keepdims=True)
    p = jnp.where(ok, jnp.exp(s - jnp.where(jnp.isfinite(row_max), row_max, 0.0)), 0.0)
    total = p.sum(-1, keepdims=True)
    p = p / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum(
        "btkgn,btknh->btkgh", p.astype(v.dtype), v_sel, preferred_element_type=jnp.float32
    )
    return out.reshape(b, t, n, h).astype(q.dtype)
