"""Argument checks shared by `sparse_attention` (token selections) and `block_sparse_attention`
(key-block selections per query block): ValueErrors naming the argument, before any compilation.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from longctx_jax.attention.mask import AttentionMask


def check_block_size(block_size) -> None:
    """ValueError unless block_size is a positive int."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: expected a positive int")


def prepare(q, k, v, indices, mask, valid, scale, block_size: int = 1):
    """Validates the arguments; returns (indices [B, R, K, n] int32, valid, resolved mask, scale).

    block_size 1: indices name keys, one row per query (R = q_len). block_size > 1: indices name
    key blocks (keys [j * block_size, (j + 1) * block_size)), one row per block of block_size
    queries (R = ceil(q_len / block_size)). Indices out of range become invalid slots.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"{name} has shape {getattr(x, 'shape', None)}, dtype {getattr(x, 'dtype', None)}: "
                "expected a floating [batch, len, heads, head_dim] array"
            )
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.shape[0] != b or k.shape[3] != h or v.shape != k.shape or n % kh:
        raise ValueError(
            f"q {q.shape}, k {k.shape}, v {v.shape}: expected k and v [batch, kv_len, "
            "num_kv_heads, head_dim] with q's batch and head_dim, num_heads % num_kv_heads == 0"
        )
    check_block_size(block_size)
    rows = -(-t // block_size)
    rows_name, slots = ("q_len", "k") if block_size == 1 else ("q_blocks", "n")
    idx_shape = tuple(getattr(indices, "shape", ()))
    if (
        idx_shape[:2] != (b, rows)
        or len(idx_shape) not in (3, 4)
        or (len(idx_shape) == 4 and idx_shape[2] != kh)
    ):
        raise ValueError(
            f"indices has shape {idx_shape}: expected [batch, {rows_name}, {slots}] = "
            f"({b}, {rows}, {slots}) or [batch, {rows_name}, num_kv_heads, {slots}] = "
            f"({b}, {rows}, {kh}, {slots})"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices has dtype {indices.dtype}: expected an integer dtype")
    if valid is not None and tuple(getattr(valid, "shape", ())) != idx_shape:
        raise ValueError(
            f"valid has shape {tuple(getattr(valid, 'shape', ()))}: expected indices' {idx_shape}"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    mask = AttentionMask() if mask is None else mask
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
    mask.validate(b, t, s)
    valid = jnp.ones(idx_shape, bool) if valid is None else jnp.asarray(valid, bool)
    targets = -(-s // block_size)
    in_range = (indices >= 0) & (indices < targets)
    indices = jnp.clip(indices, 0, targets - 1).astype(jnp.int32)
    valid = valid & in_range
    if len(idx_shape) == 3:
        indices = jnp.broadcast_to(indices[:, :, None], (b, rows, kh, idx_shape[2]))
        valid = jnp.broadcast_to(valid[:, :, None], (b, rows, kh, idx_shape[2]))
    return indices, valid, mask.resolved(b, t, s), float(scale)
