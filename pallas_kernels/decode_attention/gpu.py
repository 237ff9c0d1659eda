"""Split-K decode attention as a Pallas GPU kernel (Triton lowering; see driver.py).

Pallas' Triton lowering is deprecated upstream: everything Triton-specific is in this file, so a
Mosaic GPU version can replace it. One program per (batch, kv head, split) -- the split axis is
what fills the GPU when batch * kv heads is small, the usual decode case. A program loops over the
live blocks of its split (driver.py's (first, last) range), reading one head's packed rows
[bkv, W] straight from the [B, S, K, W] cache, unpacking and scaling them in registers. A block
that would run past the cache is moved back to end at its last key, and keys an earlier block
already counted are masked, so no load leaves the arrays. Triton's dots need power-of-two shapes
>= 16: query rows are padded to one, the packed width W and the block must be one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.decode_attention.problem import Decode, dequantize_part, optional_refs
from pallas_kernels.flash_attention.gpu import _NT, MIN_BLOCK, NUM_STAGES, NUM_WARPS, _dot, _whole
from pallas_kernels.flash_attention.problem import pad_axis, tile_logits

DEFAULT_BLOCK_KV = 64
# Default splits: enough (batch, kv head, split) programs to fill a GPU (an H100 has 132 SMs).
TARGET_PROGRAMS = 256


def _is_pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def plan(kv_len, width, block_kv, num_splits, *, batch, kv_heads):
    """(block_kv, num_splits) for this call: the user's or the defaults, checked."""
    block_kv = DEFAULT_BLOCK_KV if block_kv is None else block_kv
    if not _is_pow2(block_kv) or block_kv < MIN_BLOCK:
        raise ValueError(f"block_kv={block_kv}: the GPU kernel needs a power of two >= {MIN_BLOCK}")
    if not _is_pow2(width) or width < MIN_BLOCK:
        raise ValueError(
            f"keys last dim {width} (head_dim * bits // 8): the GPU kernel needs a power of two "
            f">= {MIN_BLOCK}"
        )
    block_kv = max(MIN_BLOCK, min(block_kv, 1 << (kv_len.bit_length() - 1)))  # <= kv_len if can
    if num_splits is None:
        num_splits = -(-TARGET_PROGRAMS // (batch * kv_heads))
    return block_kv, num_splits


def rows(r: int) -> int:
    return max(MIN_BLOCK, 1 << (r - 1).bit_length())


def _kernel(
    first_ref, last_ref, q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs, d, length
):
    (k_scale, k_min, v_scale, v_min, slope_ref), refs = optional_refs(d, refs)
    acc_ref, m_ref, l_ref = refs
    b, split = pl.program_id(0), pl.program_id(2)
    bkv, per_split = d.block_kv, d.blocks_per_split
    lo = jnp.maximum(split * per_split, first_ref[b])
    hi = jnp.minimum((split + 1) * per_split, last_ref[b] + 1)
    queries = [q_ref[p] for p in range(d.parts)]
    q_pos, q_seg = qp_ref[...][:, None], qs_ref[...][:, None]
    slope = None if slope_ref is None else slope_ref[...][:, None]

    def body(block, carry):
        *acc, m_prev, l_prev = carry
        start = jnp.minimum(block * bkv, length - bkv)
        keys = pl.ds(start, bkv)

        def tile(ref, part, scale, minimum):
            col = lambda x: None if x is None else x[keys][:, None]  # noqa: E731
            codes = ref[keys, :]
            return dequantize_part(codes, part, d.bits, col(scale), col(minimum), q_ref.dtype)

        qk = sum(
            _dot(queries[part], tile(k_ref, part, k_scale, k_min), _NT) for part in range(d.parts)
        )
        kv_pos, kv_seg = kp_ref[keys][None, :], ks_ref[keys][None, :]
        _, s = tile_logits(d.logits, qk, q_pos, kv_pos, q_seg, kv_seg, slope, True)
        fresh = start + lax.broadcasted_iota(jnp.int32, (1, bkv), 1) >= block * bkv
        s = jnp.where(fresh, s, -jnp.inf)
        m_new = jnp.maximum(m_prev, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[:, None])
        corr = jnp.exp(m_prev - m_safe)
        acc = [
            corr[:, None] * a + _dot(p.astype(q_ref.dtype), tile(v_ref, part, v_scale, v_min))
            for part, a in enumerate(acc)
        ]
        return (*acc, m_new, corr * l_prev + p.sum(axis=-1))

    r, width = queries[0].shape
    init = (
        *[jnp.zeros((r, width), jnp.float32)] * d.parts,
        jnp.full((r,), -jnp.inf, jnp.float32),
        jnp.zeros((r,), jnp.float32),
    )
    *acc, m, l = lax.fori_loop(lo, hi, body, init)
    for part, a in enumerate(acc):
        acc_ref[part] = a
    m_ref[...] = m
    l_ref[...] = l


def decode_kernel(
    d: Decode, q, keys, values, q_pos, q_seg, kv_pos, kv_seg, stats, slopes, live, *, interpret
):
    """Split-K partials (acc [B, splits, K, parts, R, W], m, l [B, splits, K, R]); driver.py."""
    length = max(d.kv_len, d.block_kv)  # a cache shorter than one block (< 16 keys) is padded
    keys, values = (pad_axis(x, 1, length, 0) for x in (keys, values))
    stats = [pad_axis(x[..., 0], 1, length, 0) for x in stats if x is not None]
    batch, _, kv_heads, width = keys.shape
    parts, r = q.shape[2], q.shape[3]
    splits, padded = d.num_splits, kv_pos.shape[1]
    cache_spec = pl.BlockSpec((None, length, None, width), lambda b, h, s: (b, 0, h, 0))
    stat_spec = pl.BlockSpec((None, length, None), lambda b, h, s: (b, 0, h))
    query_row = pl.BlockSpec((None, r), lambda b, h, s: (b, 0))
    key_row = pl.BlockSpec((None, padded), lambda b, h, s: (b, 0))
    extra = [] if slopes is None else [slopes]
    acc, m, l = pl.pallas_call(
        functools.partial(_kernel, d=d, length=length),
        grid=(batch, kv_heads, splits),
        in_specs=[_whole(live[0]), _whole(live[1])]
        + [pl.BlockSpec((None, None, parts, r, width), lambda b, h, s: (b, h, 0, 0, 0))]
        + [cache_spec, cache_spec, query_row, query_row, key_row, key_row]
        + [stat_spec] * len(stats)
        + [pl.BlockSpec((None, r), lambda b, h, s: (h, 0))] * len(extra),
        out_specs=[
            pl.BlockSpec((None, None, None, parts, r, width), lambda b, h, s: (b, s, h, 0, 0, 0)),
            pl.BlockSpec((None, None, None, r), lambda b, h, s: (b, s, h, 0)),
            pl.BlockSpec((None, None, None, r), lambda b, h, s: (b, s, h, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, splits, kv_heads, parts, r, width), jnp.float32),
            jax.ShapeDtypeStruct((batch, splits, kv_heads, r), jnp.float32),
            jax.ShapeDtypeStruct((batch, splits, kv_heads, r), jnp.float32),
        ],
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
        interpret=interpret,
        name="decode_attention",
    )(*live, q, keys, values, q_pos, q_seg, kv_pos, kv_seg, *stats, *extra)
    return acc, m, l
