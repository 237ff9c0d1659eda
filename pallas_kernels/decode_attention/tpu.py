"""Split-K decode attention as a Pallas Mosaic TPU kernel (see driver.py for the entry point).

Grid (batch, split, block within split); the last axis is the reduction ("arbitrary"). One
program reads one block of keys for *all* kv heads, keys [bkv, K * W] of the cache viewed as
[B, S, K * W] (a free reshape): one contiguous DMA in the stored layout, and a block whose lane
dim is the whole row, which Mosaic accepts for any W (a [bkv, W] block of one head is not a legal
tile when K > 1). Heads are static lane slices; packed codes are unpacked and scaled in VMEM, so
HBM carries only the packed bytes and [bkv, K] float32 scales.

The live block range (first, last) is scalar-prefetched: index maps clamp to it, so blocks outside
it map to a block already in VMEM (no copy) and `pl.when` skips their compute. A last block that
runs past the cache holds undefined rows: their logits are masked by the padded key segment ids,
their values zeroed (0 * NaN would leak). The block size is a multiple of 128 (key positions ride
in the lanes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.decode_attention.problem import Decode, dequantize_part, optional_refs
from pallas_kernels.flash_attention.problem import round_up, tile_logits
from pallas_kernels.flash_attention.tpu import _NT, LANES, _dot

DEFAULT_BLOCK_KV = 512
# Two splits let a two-core chip (v4, v5p) share one sequence; one core runs them in turn.
DEFAULT_SPLITS = 2


def plan(kv_len, width, block_kv, num_splits, *, batch, kv_heads):
    """(block_kv, num_splits) for this call: the user's or the defaults, checked."""
    del width, batch, kv_heads
    block_kv = DEFAULT_BLOCK_KV if block_kv is None else block_kv
    if block_kv % LANES:
        raise ValueError(
            f"block_kv={block_kv}: the TPU kernel needs a multiple of {LANES} (key positions ride "
            "in the 128 lanes)"
        )
    num_splits = DEFAULT_SPLITS if num_splits is None else num_splits
    return min(block_kv, round_up(kv_len, LANES)), num_splits


def rows(r: int) -> int:
    return r  # a block's second-minor dim may equal the array's


def _kernel(first_ref, last_ref, q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs, d):
    (k_scale, k_min, v_scale, v_min, slope_ref), refs = optional_refs(d, refs)
    acc_ref, m_ref, l_ref, acc_scr, m_scr, l_scr = refs
    b, split, j = (pl.program_id(a) for a in range(3))
    block = split * d.blocks_per_split + j
    bkv, width = d.block_kv, q_ref.shape[-1]

    @pl.when(j == 0)
    def _init():
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)

    def column(ref, h):  # head h's per-token statistic, [bkv, 1]
        return None if ref is None else ref[:, h : h + 1]

    @pl.when((block >= first_ref[b]) & (block <= last_ref[b]))
    def _block():
        masks = (qp_ref[...], kp_ref[...], qs_ref[...], ks_ref[...])
        valid = None
        if d.kv_len % bkv:  # the last block runs past the cache
            valid = block * bkv + lax.broadcasted_iota(jnp.int32, (bkv, 1), 0) < d.kv_len
        for h in range(d.num_kv_heads):
            lanes = slice(h * width, (h + 1) * width)

            def tile(ref, part, scale, minimum, h=h, lanes=lanes):
                codes = ref[:, lanes]
                return dequantize_part(codes, part, d.bits, scale, minimum, q_ref.dtype)

            qk = sum(
                _dot(q_ref[h, part], tile(k_ref, part, column(k_scale, h), column(k_min, h)), _NT)
                for part in range(d.parts)
            )
            slope = None if slope_ref is None else slope_ref[h]
            _, s = tile_logits(d.logits, qk, *masks, slope, True)
            m_prev = m_scr[h]
            m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe)
            corr = jnp.exp(m_prev - m_safe)
            l_scr[h] = corr * l_scr[h] + p.sum(axis=-1, keepdims=True)
            m_scr[h] = m_new
            for part in range(d.parts):
                v = tile(v_ref, part, column(v_scale, h), column(v_min, h))
                if valid is not None:
                    v = jnp.where(valid, v, jnp.zeros_like(v))
                acc_scr[h, part] = corr * acc_scr[h, part] + _dot(p.astype(v.dtype), v)

    @pl.when(j == d.blocks_per_split - 1)
    def _finish():
        acc_ref[...] = acc_scr[...]
        m_ref[...] = m_scr[...]
        l_ref[...] = l_scr[...]


def decode_kernel(
    d: Decode, q, keys, values, q_pos, q_seg, kv_pos, kv_seg, stats, slopes, live, *, interpret
):
    """Split-K partials (acc [B, splits, K, parts, R, W], m, l [B, splits, K, R]); driver.py."""
    batch, kv_len, kv_heads, width = keys.shape
    parts, r = q.shape[2], q.shape[3]
    bkv, per_split, splits = d.block_kv, d.blocks_per_split, d.num_splits

    def block(b, split, j, first, last):
        return jnp.minimum(
            jnp.maximum(split * per_split + j, first[b]), jnp.maximum(first[b], last[b])
        )

    cache_spec = pl.BlockSpec((None, bkv, kv_heads * width), lambda b, *a: (b, block(b, *a), 0))
    stat_spec = pl.BlockSpec((None, bkv, kv_heads), lambda b, *a: (b, block(b, *a), 0))
    key_row = pl.BlockSpec((None, 1, bkv), lambda b, *a: (b, 0, block(b, *a)))
    query_col = pl.BlockSpec((None, r, 1), lambda b, *_: (b, 0, 0))
    whole_q = pl.BlockSpec((None, kv_heads, parts, r, width), lambda b, *_: (b, 0, 0, 0, 0))
    present = [x.reshape(batch, kv_len, kv_heads) for x in stats if x is not None]
    extra = [] if slopes is None else [slopes[:, :, None]]

    def per_split_out(*shape):  # one block of the [B, splits, ...] partials per (b, split)
        return pl.BlockSpec(
            (None, None, *shape), lambda b, split, *_: (b, split, *[0] * len(shape))
        )

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(batch, splits, per_split),
        in_specs=[whole_q, cache_spec, cache_spec, query_col, query_col, key_row, key_row]
        + [stat_spec] * len(present)
        + [pl.BlockSpec((kv_heads, r, 1), lambda *_: (0, 0, 0))] * len(extra),
        out_specs=[
            per_split_out(kv_heads, parts, r, width),
            per_split_out(kv_heads, r, 1),
            per_split_out(kv_heads, r, 1),
        ],
        scratch_shapes=[
            pltpu.VMEM((kv_heads, parts, r, width), jnp.float32),
            pltpu.VMEM((kv_heads, r, 1), jnp.float32),
            pltpu.VMEM((kv_heads, r, 1), jnp.float32),
        ],
    )
    stat_shape = (batch, splits, kv_heads, r, 1)
    acc, m, l = pl.pallas_call(
        functools.partial(_kernel, d=d),
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct((batch, splits, kv_heads, parts, r, width), jnp.float32),
            jax.ShapeDtypeStruct(stat_shape, jnp.float32),
            jax.ShapeDtypeStruct(stat_shape, jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="decode_attention",
    )(
        *live,
        q,
        keys.reshape(batch, kv_len, kv_heads * width),
        values.reshape(batch, kv_len, kv_heads * width),
        q_pos[:, :, None],
        q_seg[:, :, None],
        kv_pos[:, None, :],
        kv_seg[:, None, :],
        *present,
        *extra,
    )
    return acc, m[..., 0], l[..., 0]
