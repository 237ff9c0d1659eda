"""What one flash-attention call computes, and the per-tile math every kernel shares.

Kernel layout: q [B, N, T, H], k and v [B, K, S, H] (query head n reads kv head n // (N // K)),
positions and segment ids [B, len] int32. Logits of a tile, in this order:
  s = scale * q.k;  s = cap * tanh(s / cap) (soft cap);  s -= slope[n] * (q_pos - kv_pos) (ALiBi);
  s = -inf where the key is hidden: visible iff q_seg == kv_seg, and kv_pos <= q_pos if causal,
  and q_pos - kv_pos < window if windowed.
A query that sees no key outputs 0 and gets zero gradients.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Problem:
    """Trace-time constants of one call (hashable: kernels are specialised on them)."""

    causal: bool
    window: int | None
    scale: float
    soft_cap: float | None
    has_alibi: bool
    block_q: int
    block_kv: int
    num_groups: int  # query heads per kv head


def visible(problem: Problem, q_pos, kv_pos, q_seg, kv_seg):
    """Visibility of keys to queries; q_* are columns [bq, 1], kv_* rows [1, bkv]."""
    ok = q_seg == kv_seg
    if problem.causal:
        ok &= kv_pos <= q_pos
    if problem.window is not None:
        ok &= q_pos - kv_pos < problem.window
    return ok


def tile_logits(problem: Problem, qk, q_pos, kv_pos, q_seg, kv_seg, slope, masked):
    """Raw q.k [bq, bkv] float32 -> (soft-capped scores, final logits with -inf where hidden).

    `masked` is a Python bool (the tile class is static) or a traced bool (GPU kernels branch-free:
    the mask is then applied where `masked` is true).
    """
    s = qk * problem.scale
    if problem.soft_cap is not None:
        s = problem.soft_cap * jnp.tanh(s / problem.soft_cap)
    capped = s
    if slope is not None:
        s = s - slope * (q_pos - kv_pos).astype(jnp.float32)
    if masked is False:
        return capped, s
    ok = visible(problem, q_pos, kv_pos, q_seg, kv_seg)
    if masked is not True:
        ok = ok | jnp.logical_not(masked)
    return capped, jnp.where(ok, s, -jnp.inf)


def softcap_grad(problem: Problem, capped):
    """d(capped)/d(scale * q.k) given the capped scores (1 without a soft cap)."""
    if problem.soft_cap is None:
        return None
    return 1.0 - jnp.square(capped / problem.soft_cap)


def check_inputs(q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, slopes):
    """ValueError naming the argument unless shapes follow the kernel layout."""
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"q {q.shape}, k {k.shape}: expected [B, N, T, H] and [B, K, S, H]")
    b, n, t, h = q.shape
    _, kh, s, _ = k.shape
    if v.shape != k.shape or k.shape[0] != b or k.shape[3] != h:
        raise ValueError(f"q {q.shape}, k {k.shape}, v {v.shape}: batch/head_dim mismatch")
    if n % kh:
        raise ValueError(f"num_heads={n} is not a multiple of num_kv_heads={kh}")
    for name, x, length in (
        ("q_positions", q_positions, t),
        ("kv_positions", kv_positions, s),
        ("q_segment_ids", q_segment_ids, t),
        ("kv_segment_ids", kv_segment_ids, s),
    ):
        if tuple(x.shape) != (b, length) or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"{name} {x.shape} {x.dtype}: expected int [batch, len] = {(b, length)}"
            )
    if slopes is not None and tuple(slopes.shape) != (n,):
        raise ValueError(f"slopes {slopes.shape}: expected [num_heads] = ({n},)")


def default_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def pad_axis(x: jax.Array, axis: int, size: int, value=None) -> jax.Array:
    """Pads `axis` to `size`: with `value`, or by repeating the last entry (value=None)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    if value is None:
        return jnp.pad(x, widths, mode="edge")
    return jnp.pad(x, widths, constant_values=value)


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
