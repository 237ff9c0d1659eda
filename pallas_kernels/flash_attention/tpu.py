"""Flash attention as Pallas Mosaic TPU kernels: forward, dQ and dK/dV (see driver.py).

Grid: (batch, head, query block, schedule step) for forward and dQ; (batch, kv head, key block,
query head in group, schedule step) for dK/dV. The last axis is the reduction ("arbitrary"); the
schedule (block_sparsity.py) is scalar-prefetched into SMEM and read by the index maps, so a
step past the row's count maps to the block already in VMEM: no copy, and `pl.when` skips the
body. FULL tiles skip the mask arithmetic.

Layouts: query positions and segment ids are [B, T, 1] columns, key positions and segment ids
[B, 1, S] rows (so they broadcast against a [bq, bkv] tile without relayout); the per-row float32
state that lives in HBM between the passes (log-sum-exp, D = rowsum(dO * O), d/d slope) is stored
lane-dense as [B, N, 1, T] rows and turned into columns in VMEM, because a [T, 1] column in HBM is
padded to 128 lanes (128x the bytes). Both block sizes are multiples of 128 (Mosaic's lane tile).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.flash_attention import driver
from pallas_kernels.flash_attention.block_sparsity import decode_step
from pallas_kernels.flash_attention.problem import round_up, softcap_grad, tile_logits

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 512
LANES = 128

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _dot(a, b, dims=None):
    dims = (((1,), (0,)), ((), ())) if dims is None else dims
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _blocks(q_len, kv_len, head_dim, block_q, block_kv, *, backward: bool):
    """Validated (block_q, block_kv), the same for both passes: a block covering the whole padded
    length is always fine."""
    del backward
    block_q = DEFAULT_BLOCK_Q if block_q is None else block_q
    block_kv = DEFAULT_BLOCK_KV if block_kv is None else block_kv
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive int")
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if value % LANES:
            raise ValueError(
                f"{name}={value}: the TPU kernel needs a multiple of {LANES} (key positions and "
                "per-row statistics ride in the 128 lanes)"
            )
    return min(block_q, round_up(q_len, LANES)), min(block_kv, round_up(kv_len, LANES))


def _head_dim(head_dim: int) -> int:
    return head_dim  # a block's minor dim may equal the array's: no padding needed


def _mask_specs(problem, q_block, kv_block):
    """BlockSpecs of (q_pos, q_seg, kv_pos, kv_seg) given index functions for the two blocks."""
    col = pl.BlockSpec((None, problem.block_q, 1), lambda *a: (a[0], q_block(*a), 0))
    row = pl.BlockSpec((None, 1, problem.block_kv), lambda *a: (a[0], 0, kv_block(*a)))
    return [col, col, row, row]


def _mask_inputs(mask):
    q_pos, q_seg, kv_pos, kv_seg = mask
    return q_pos[:, :, None], q_seg[:, :, None], kv_pos[:, None, :], kv_seg[:, None, :]


def _slope_spec(problem):
    return [pl.BlockSpec(memory_space=pltpu.SMEM)] if problem.has_alibi else []


def _to_row(col):
    """[n, 1] -> [1, n] (n a multiple of 128) through one lane-broadcast transpose."""
    return jnp.broadcast_to(col, (col.shape[0], LANES)).T[:1]


def _to_col(row):
    """[1, n] -> [n, 1], the inverse of `_to_row`."""
    return jnp.broadcast_to(row, (LANES, row.shape[1])).T[:, :1]


def _row_spec(bq, index):
    """Spec of a lane-dense [B, N, 1, T] per-row array; `index` gives (b, head, q_block)."""
    return pl.BlockSpec((None, None, 1, bq), lambda *a: (*index(*a)[:2], 0, index(*a)[2]))


def _step(counts_ref, steps_ref, outer_row, j, n_steps):
    """(active, partial) of schedule step j of flattened row `outer_row`."""
    _, partial = decode_step(steps_ref[outer_row * n_steps + j])
    return j < counts_ref[outer_row], partial


def _scheduled_block(steps, outer_row, j, n_steps):
    """Index-map helper: the partner block at schedule step j of flattened row `outer_row`."""
    block, _ = decode_step(steps[outer_row * n_steps + j])
    return block


def _when_tile(active, partial, body):
    """Runs body(masked) for an active step: with the mask on PARTIAL tiles, without on FULL."""
    pl.when(active & jnp.logical_not(partial))(functools.partial(body, False))
    pl.when(active & partial)(functools.partial(body, True))


# ----------------------------------------------------------------------------- forward


def _forward_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    b, n, i, j = (pl.program_id(a) for a in range(4))

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    active, partial = _step(counts_ref, steps_ref, b * nq + i, j, nkv)

    def tile(masked):
        slope = None if slope_ref is None else slope_ref[n]
        qk = _dot(q_ref[...], k_ref[...], _NT)
        _, s = tile_logits(
            problem, qk, qp_ref[...], kp_ref[...], qs_ref[...], ks_ref[...], slope, masked
        )
        m_prev = m_scr[...]
        m_new = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe)
        corr = jnp.exp(m_prev - m_safe)
        l_scr[...] = corr * l_scr[...] + p.sum(axis=-1, keepdims=True)
        acc_scr[...] = corr * acc_scr[...] + _dot(p.astype(v_ref.dtype), v_ref[...])
        m_scr[...] = m_new

    _when_tile(active, partial, tile)

    @pl.when(j == nkv - 1)
    def _finish():
        m, l = m_scr[...], l_scr[...]
        seen = m != -jnp.inf  # the row saw at least one key
        l_safe = jnp.where(seen, l, 1.0)
        o_ref[...] = jnp.where(seen, acc_scr[...] / l_safe, 0.0).astype(o_ref.dtype)
        lse_ref[...] = _to_row(jnp.where(seen, m + jnp.log(l_safe), -jnp.inf))


def forward(problem, q, k, v, slopes, mask, rows, *, interpret):
    b, n, t, h = q.shape
    s = k.shape[2]
    bq, bkv, g = problem.block_q, problem.block_kv, problem.num_groups
    nq, nkv = t // bq, s // bkv
    counts, steps = rows

    def kv_block(b, n, i, j, counts, steps):
        return _scheduled_block(steps, b * nq + i, j, nkv)

    q_spec = pl.BlockSpec((None, None, bq, h), lambda b, n, i, j, *_: (b, n, i, 0))
    kv_spec = pl.BlockSpec(
        (None, None, bkv, h), lambda b, n, i, j, c, st: (b, n // g, kv_block(b, n, i, j, c, st), 0)
    )
    mask_specs = _mask_specs(problem, lambda b, n, i, *_: i, kv_block)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, n, nq, nkv),
        in_specs=[q_spec, kv_spec, kv_spec, *mask_specs, *_slope_spec(problem)],
        out_specs=[
            q_spec,
            _row_spec(bq, lambda b, n, i, *_: (b, n, i)),
        ],
        scratch_shapes=[
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, 1), jnp.float32),
            pltpu.VMEM((bq, h), jnp.float32),
        ],
    )
    kernel = functools.partial(_forward_kernel, problem=problem, nq=nq, nkv=nkv)
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, n, 1, t), jnp.float32),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="flash_attention_fwd",
    )(counts, steps, q, k, v, *_mask_inputs(mask), *([] if slopes is None else [slopes]))
    return out, lse[:, :, 0, :]


# ----------------------------------------------------------------------------- backward


def _backward_operands(schedule, q, k, v, slopes, mask, d_out, lse, delta):
    """Operands of the dQ and dK/dV calls: schedule, inputs, mask, slopes, dO, lse and D rows."""
    rows = (lse[:, :, None, :], delta[:, :, None, :])  # lane-dense [B, N, 1, T]
    extra = [] if slopes is None else [slopes]
    return (*schedule, q, k, v, *_mask_inputs(mask), *extra, d_out, *rows)


def _tile_backward(problem, q, k, v, do, lse, delta, masks, slope, masked):
    """One tile's (p, dS) in float32 [bq, bkv], recomputed from the saved log-sum-exp.

    dS is the gradient with respect to the final logits (what d/d slope needs); `dS * cap'` is the
    gradient with respect to q.k * scale (what dQ and dK need), returned third.
    """
    capped, s = tile_logits(problem, _dot(q, k, _NT), *masks, slope, masked)
    p = jnp.exp(s - jnp.where(lse == -jnp.inf, 0.0, lse))  # a row with no key: p = 0
    ds = p * (_dot(do, v, _NT) - delta)
    cap = softcap_grad(problem, capped)
    return p, ds, ds if cap is None else ds * cap


def _dq_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    do_ref, lse_ref, delta_ref, dq_ref, *refs = refs
    dslope_ref, dq_scr, dslope_scr = refs if problem.has_alibi else (None, refs[0], None)
    b, n, i, j = (pl.program_id(a) for a in range(4))

    @pl.when(j == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
        if dslope_scr is not None:
            dslope_scr[...] = jnp.zeros(dslope_scr.shape, jnp.float32)

    active, partial = _step(counts_ref, steps_ref, b * nq + i, j, nkv)

    def tile(masked):
        slope = None if slope_ref is None else slope_ref[n]
        masks = (qp_ref[...], kp_ref[...], qs_ref[...], ks_ref[...])
        k = k_ref[...]
        _, ds, ds_qk = _tile_backward(
            problem,
            q_ref[...],
            k,
            v_ref[...],
            do_ref[...],
            _to_col(lse_ref[...]),
            _to_col(delta_ref[...]),
            masks,
            slope,
            masked,
        )
        if dslope_scr is not None:  # d/d slope of -slope * (q_pos - kv_pos)
            distance = (masks[0] - masks[1]).astype(jnp.float32)
            dslope_scr[...] += jnp.sum(-ds * distance, axis=-1, keepdims=True)
        dq_scr[...] += _dot(ds_qk.astype(k.dtype), k)

    _when_tile(active, partial, tile)

    @pl.when(j == nkv - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * problem.scale).astype(dq_ref.dtype)
        if dslope_ref is not None:
            dslope_ref[...] = _to_row(dslope_scr[...])


def backward_dq(problem, q, k, v, slopes, mask, rows, d_out, lse, delta, *, interpret):
    b, n, t, h = q.shape
    s = k.shape[2]
    bq, bkv, g = problem.block_q, problem.block_kv, problem.num_groups
    nq, nkv = t // bq, s // bkv

    def kv_block(b, n, i, j, counts, steps):
        return _scheduled_block(steps, b * nq + i, j, nkv)

    q_spec = pl.BlockSpec((None, None, bq, h), lambda b, n, i, j, *_: (b, n, i, 0))
    row_spec = _row_spec(bq, lambda b, n, i, *_: (b, n, i))
    kv_spec = pl.BlockSpec(
        (None, None, bkv, h), lambda b, n, i, j, c, st: (b, n // g, kv_block(b, n, i, j, c, st), 0)
    )
    mask_specs = _mask_specs(problem, lambda b, n, i, *_: i, kv_block)
    alibi = problem.has_alibi
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, n, nq, nkv),
        in_specs=[q_spec, kv_spec, kv_spec, *mask_specs, *_slope_spec(problem)]
        + [q_spec, row_spec, row_spec],
        out_specs=[q_spec] + ([row_spec] if alibi else []),
        scratch_shapes=[pltpu.VMEM((bq, h), jnp.float32)]
        + ([pltpu.VMEM((bq, 1), jnp.float32)] if alibi else []),
    )
    kernel = functools.partial(_dq_kernel, problem=problem, nq=nq, nkv=nkv)
    outs = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)]
        + ([jax.ShapeDtypeStruct((b, n, 1, t), jnp.float32)] if alibi else []),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="flash_attention_dq",
    )(*_backward_operands(rows, q, k, v, slopes, mask, d_out, lse, delta))
    return outs[0], (outs[1][:, :, 0, :] if alibi else None)


def _dkv_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    b, kh, j, g, i = (pl.program_id(a) for a in range(5))
    last_g = problem.num_groups - 1

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    active, partial = _step(counts_ref, steps_ref, b * nkv + j, i, nq)

    def tile(masked):
        slope = None if slope_ref is None else slope_ref[kh * problem.num_groups + g]
        masks = (qp_ref[...], kp_ref[...], qs_ref[...], ks_ref[...])
        q, do = q_ref[...], do_ref[...]
        p, _, ds_qk = _tile_backward(
            problem,
            q,
            k_ref[...],
            v_ref[...],
            do,
            _to_col(lse_ref[...]),
            _to_col(delta_ref[...]),
            masks,
            slope,
            masked,
        )
        dv_scr[...] += _dot(p.astype(do.dtype), do, _TN)
        dk_scr[...] += _dot(ds_qk.astype(q.dtype), q, _TN)

    _when_tile(active, partial, tile)

    @pl.when((g == last_g) & (i == nq - 1))
    def _finish():
        dk_ref[...] = (dk_scr[...] * problem.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward_dkv(problem, q, k, v, slopes, mask, cols, d_out, lse, delta, *, interpret):
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    bq, bkv, g = problem.block_q, problem.block_kv, problem.num_groups
    nq, nkv = t // bq, s // bkv

    def q_block(b, kh, j, gi, i, counts, steps):
        return _scheduled_block(steps, b * nkv + j, i, nq)

    def q_index(b, kh, j, gi, i, c, st):
        return (b, kh * g + gi, q_block(b, kh, j, gi, i, c, st), 0)

    q_spec = pl.BlockSpec((None, None, bq, h), q_index)
    row_spec = _row_spec(bq, lambda *a: q_index(*a)[:3])
    kv_spec = pl.BlockSpec((None, None, bkv, h), lambda b, kh, j, *_: (b, kh, j, 0))
    mask_specs = _mask_specs(problem, q_block, lambda b, kh, j, *_: j)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, kh, nkv, g, nq),
        in_specs=[q_spec, kv_spec, kv_spec, *mask_specs, *_slope_spec(problem)]
        + [q_spec, row_spec, row_spec],
        out_specs=[kv_spec, kv_spec],
        scratch_shapes=[pltpu.VMEM((bkv, h), jnp.float32), pltpu.VMEM((bkv, h), jnp.float32)],
    )
    kernel = functools.partial(_dkv_kernel, problem=problem, nq=nq, nkv=nkv)
    dk, dv = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")
        ),
        interpret=interpret,
        name="flash_attention_dkv",
    )(*_backward_operands(cols, q, k, v, slopes, mask, d_out, lse, delta))
    return dk, dv


BACKEND = driver.Backend(
    platform="tpu",
    blocks=_blocks,
    padded_head_dim=_head_dim,
    forward=forward,
    backward_dq=backward_dq,
    backward_dkv=backward_dkv,
)


def flash_attention(q, k, v, **kwargs):
    """Flash attention on TPU (Mosaic); q [B, N, T, H], k, v [B, K, S, H]. See driver.py."""
    return driver.flash_attention(BACKEND, q, k, v, **kwargs)
