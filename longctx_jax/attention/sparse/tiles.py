"""Pieces shared by the sparse attention and selection loops: query rows split into blocks for a
`lax.map` / `lax.scan`, and the float32 exponentials of a masked softmax."""

from __future__ import annotations

import jax.numpy as jnp


def split_rows(x, size: int):
    """[B, T, ...] -> [ceil(T / size), B, size, ...], T padded with zeros (the loop axis first)."""
    b, t = x.shape[:2]
    n = -(-t // size)
    x = jnp.pad(x, [(0, 0), (0, n * size - t)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((b, n, size) + x.shape[2:]), 1, 0)


def merge_rows(x, length: int):
    """Inverse of `split_rows`: [n, B, size, ...] -> [B, length, ...]."""
    n, b, size = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape((b, n * size) + x.shape[3:])[:, :length]


def masked_exp(logits):
    """(exp(logits - row max), row max, row sum), float32 over the last axis, for logits that are
    -inf where a key does not count (its exponential is then exactly 0, with no select); a row
    with no counted key has max 0 and sum 0 (so callers output 0, not NaN)."""
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    e = jnp.exp(logits - row_max)
    return e, row_max, jnp.sum(e, axis=-1, keepdims=True)
