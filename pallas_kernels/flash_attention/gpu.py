"""Flash attention as Pallas GPU kernels (Triton lowering): forward, dQ and dK/dV (see driver.py).

Pallas' Triton lowering is deprecated upstream; everything Triton-specific (the `pallas_call`s
and their compiler parameters) stays in this file, so a Mosaic GPU version can replace it.

One program per (batch, head, query block) for forward and dQ, and per (batch, kv head, key
block) for dK/dV. K/V (or Q, dO) for the whole sequence stay in HBM; a program loops over its
schedule (block_sparsity.py), loading only the non-empty partner blocks, so empty blocks cost
neither loads nor compute. Masking is branch-free: the mask is applied where the step is PARTIAL.
Triton needs power-of-two block shapes: head_dim is zero-padded to a power of two >= 16 (zeros
change no dot product) and blocks must be powers of two >= 16.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.flash_attention import driver
from pallas_kernels.flash_attention.block_sparsity import decode_step
from pallas_kernels.flash_attention.problem import softcap_grad, tile_logits

# Default (block_q, block_kv) per (head_dim up to, pass), from benchmarks/pallas_gpu_blocks.py on
# an H100 (bf16, causal, L = 16k, head_dim 128, 4 warps): the forward runs best at 128 x 64
# (274 TFLOP/s), the backward at 64 x 64 (128-row blocks spill); head_dim 64: 128 x 64 for both.
DEFAULT_BLOCKS = {
    (64, "forward"): (128, 64),
    (64, "backward"): (128, 64),
    (256, "forward"): (128, 64),
    (256, "backward"): (64, 64),
}
NUM_WARPS, NUM_STAGES = 4, 2
MIN_BLOCK = 16

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b


def _dot(a, b, dims=None):
    """a @ b (or the `dims` contraction) accumulated in float32; float32 inputs get full float32
    products (Triton would otherwise use TF32)."""
    dims = (((1,), (0,)), ((), ())) if dims is None else dims
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _is_pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def _blocks(q_len, kv_len, head_dim, block_q, block_kv, *, backward: bool):
    """Validated (block_q, block_kv): powers of two >= 16, shrunk for short inputs."""
    size = 64 if head_dim <= 64 else 256
    default_q, default_kv = DEFAULT_BLOCKS[size, "backward" if backward else "forward"]
    block_q = default_q if block_q is None else block_q
    block_kv = default_kv if block_kv is None else block_kv
    for name, value in (("block_q", block_q), ("block_kv", block_kv)):
        if not isinstance(value, int) or not _is_pow2(value) or value < MIN_BLOCK:
            raise ValueError(
                f"{name}={value!r}: the GPU (Triton) kernel needs a power of two >= {MIN_BLOCK}"
            )
    if head_dim > 256:
        raise ValueError(f"head_dim={head_dim}: the GPU kernel supports head_dim <= 256")

    def shrink(block, length):
        return max(MIN_BLOCK, min(block, 1 << (length - 1).bit_length()))

    return shrink(block_q, q_len), shrink(block_kv, kv_len)


def _head_dim(head_dim: int) -> int:
    return max(MIN_BLOCK, 1 << (head_dim - 1).bit_length())


def _params():
    return plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _step(steps_ref, row, n_steps, j):
    """(block index, partial) of schedule step j of flattened row `row`."""
    return decode_step(steps_ref[row * n_steps + j])


def _whole(x):
    """A BlockSpec handing the kernel the whole array (indexed inside the kernel)."""
    return pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)


# ----------------------------------------------------------------------------- forward


def _forward_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    o_ref, lse_ref = refs
    b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bq, bkv = problem.block_q, problem.block_kv
    row = b * nq + i
    q = q_ref[...]
    q_pos, q_seg = qp_ref[...][:, None], qs_ref[...][:, None]
    slope = None if slope_ref is None else slope_ref[n]

    def body(j, carry):
        acc, m_prev, l_prev = carry
        block, partial = _step(steps_ref, row, nkv, j)
        keys = pl.ds(pl.multiple_of(block * bkv, bkv), bkv)
        qk = _dot(q, k_ref[keys, :], _NT)
        kv_pos, kv_seg = kp_ref[keys][None, :], ks_ref[keys][None, :]
        _, s = tile_logits(problem, qk, q_pos, kv_pos, q_seg, kv_seg, slope, partial)
        m_new = jnp.maximum(m_prev, s.max(axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe[:, None])
        corr = jnp.exp(m_prev - m_safe)
        acc = corr[:, None] * acc + _dot(p.astype(v_ref.dtype), v_ref[keys, :])
        return acc, m_new, corr * l_prev + p.sum(axis=-1)

    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full((bq,), -jnp.inf, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    acc, m, l = lax.fori_loop(0, counts_ref[row], body, init)
    seen = m != -jnp.inf
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / l_safe[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)


def forward(problem, q, k, v, slopes, mask, rows, *, interpret):
    b, n, t, h = q.shape
    s = k.shape[2]
    bq, g = problem.block_q, problem.num_groups
    nq, nkv = t // bq, s // problem.block_kv
    counts, steps = rows
    q_pos, q_seg, kv_pos, kv_seg = mask
    q_spec = pl.BlockSpec((None, None, bq, h), lambda b, n, i: (b, n, i, 0))
    kv_spec = pl.BlockSpec((None, None, s, h), lambda b, n, i: (b, n // g, 0, 0))
    q_row = pl.BlockSpec((None, bq), lambda b, n, i: (b, i))
    kv_row = pl.BlockSpec((None, s), lambda b, n, i: (b, 0))
    extra = [] if slopes is None else [slopes]
    kernel = functools.partial(_forward_kernel, problem=problem, nq=nq, nkv=nkv)
    return pl.pallas_call(
        kernel,
        grid=(b, n, nq),
        in_specs=[_whole(counts), _whole(steps), q_spec, kv_spec, kv_spec]
        + [q_row, q_row, kv_row, kv_row]
        + [_whole(x) for x in extra],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i))],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, n, t), jnp.float32),
        ],
        compiler_params=_params(),
        interpret=interpret,
        name="flash_attention_fwd",
    )(counts, steps, q, k, v, q_pos, q_seg, kv_pos, kv_seg, *extra)


# ----------------------------------------------------------------------------- backward


def _tile_backward(problem, q, k, v, do, lse, delta, masks, slope, partial):
    """One tile's (p, dS, dS * cap') in float32 [bq, bkv]; see tpu.py's twin for the terms."""
    capped, s = tile_logits(problem, _dot(q, k, _NT), *masks, slope, partial)
    p = jnp.exp(s - jnp.where(lse == -jnp.inf, 0.0, lse)[:, None])  # a row with no key: p = 0
    ds = p * (_dot(do, v, _NT) - delta[:, None])
    cap = softcap_grad(problem, capped)
    return p, ds, ds if cap is None else ds * cap


def _dq_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    do_ref, lse_ref, delta_ref, dq_ref, *refs = refs
    dslope_ref = refs[0] if problem.has_alibi else None
    b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bkv = problem.block_kv
    row = b * nq + i
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    q_pos, q_seg = qp_ref[...][:, None], qs_ref[...][:, None]
    slope = None if slope_ref is None else slope_ref[n]

    def body(j, carry):
        dq, dslope = carry
        block, partial = _step(steps_ref, row, nkv, j)
        keys = pl.ds(pl.multiple_of(block * bkv, bkv), bkv)
        k = k_ref[keys, :]
        kv_pos, kv_seg = kp_ref[keys][None, :], ks_ref[keys][None, :]
        masks = (q_pos, kv_pos, q_seg, kv_seg)
        _, ds, ds_qk = _tile_backward(
            problem, q, k, v_ref[keys, :], do, lse, delta, masks, slope, partial
        )
        if dslope is not None:  # d/d slope of -slope * (q_pos - kv_pos)
            dslope = dslope + jnp.sum(-ds * (q_pos - kv_pos).astype(jnp.float32), axis=-1)
        return dq + _dot(ds_qk.astype(k.dtype), k), dslope

    init = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.zeros(lse.shape, jnp.float32) if problem.has_alibi else None,
    )
    dq, dslope = lax.fori_loop(0, counts_ref[row], body, init)
    dq_ref[...] = (dq * problem.scale).astype(dq_ref.dtype)
    if dslope_ref is not None:
        dslope_ref[...] = dslope


def backward_dq(problem, q, k, v, slopes, mask, rows, d_out, lse, delta, *, interpret):
    b, n, t, h = q.shape
    s = k.shape[2]
    bq, g = problem.block_q, problem.num_groups
    nq, nkv = t // bq, s // problem.block_kv
    counts, steps = rows
    q_spec = pl.BlockSpec((None, None, bq, h), lambda b, n, i: (b, n, i, 0))
    row_spec = pl.BlockSpec((None, None, bq), lambda b, n, i: (b, n, i))
    kv_spec = pl.BlockSpec((None, None, s, h), lambda b, n, i: (b, n // g, 0, 0))
    q_row = pl.BlockSpec((None, bq), lambda b, n, i: (b, i))
    kv_row = pl.BlockSpec((None, s), lambda b, n, i: (b, 0))
    extra = [] if slopes is None else [slopes]
    alibi = problem.has_alibi
    kernel = functools.partial(_dq_kernel, problem=problem, nq=nq, nkv=nkv)
    outs = pl.pallas_call(
        kernel,
        grid=(b, n, nq),
        in_specs=[_whole(counts), _whole(steps), q_spec, kv_spec, kv_spec]
        + [q_row, q_row, kv_row, kv_row]
        + [_whole(x) for x in extra]
        + [q_spec, row_spec, row_spec],
        out_specs=[q_spec] + ([row_spec] if alibi else []),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)]
        + ([jax.ShapeDtypeStruct((b, n, t), jnp.float32)] if alibi else []),
        compiler_params=_params(),
        interpret=interpret,
        name="flash_attention_dq",
    )(counts, steps, q, k, v, *mask, *extra, d_out, lse, delta)
    return outs[0], (outs[1] if alibi else None)


def _dkv_kernel(counts_ref, steps_ref, *refs, problem, nq, nkv):
    q_ref, k_ref, v_ref, qp_ref, qs_ref, kp_ref, ks_ref, *refs = refs
    slope_ref, *refs = refs if problem.has_alibi else (None, *refs)
    do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
    b, kh, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bq, groups = problem.block_q, problem.num_groups
    col = b * nkv + j
    k, v = k_ref[...], v_ref[...]
    kv_pos, kv_seg = kp_ref[...][None, :], ks_ref[...][None, :]
    count = counts_ref[col]

    def group(g, carry):
        slope = None if slope_ref is None else slope_ref[kh * groups + g]

        def body(i, carry):
            dk, dv = carry
            block, partial = _step(steps_ref, col, nq, i)
            rows = pl.ds(pl.multiple_of(block * bq, bq), bq)
            q, do = q_ref[g, rows, :], do_ref[g, rows, :]
            masks = (qp_ref[rows][:, None], kv_pos, qs_ref[rows][:, None], kv_seg)
            p, _, ds_qk = _tile_backward(
                problem, q, k, v, do, lse_ref[g, rows], delta_ref[g, rows], masks, slope, partial
            )
            dv = dv + _dot(p.astype(do.dtype), do, _TN)
            return dk + _dot(ds_qk.astype(q.dtype), q, _TN), dv

        return lax.fori_loop(0, count, body, carry)

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, groups, group, (zeros, zeros))
    dk_ref[...] = (dk * problem.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward_dkv(problem, q, k, v, slopes, mask, cols, d_out, lse, delta, *, interpret):
    b, n, t, h = q.shape
    kh, s = k.shape[1], k.shape[2]
    bkv, g = problem.block_kv, problem.num_groups
    nq, nkv = t // problem.block_q, s // bkv
    counts, steps = cols
    grouped = lambda x: x.reshape(b, kh, g, *x.shape[2:])  # noqa: E731
    q_spec = pl.BlockSpec((None, None, g, t, h), lambda b, kh, j: (b, kh, 0, 0, 0))
    row_spec = pl.BlockSpec((None, None, g, t), lambda b, kh, j: (b, kh, 0, 0))
    kv_spec = pl.BlockSpec((None, None, bkv, h), lambda b, kh, j: (b, kh, j, 0))
    q_row = pl.BlockSpec((None, t), lambda b, kh, j: (b, 0))
    kv_row = pl.BlockSpec((None, bkv), lambda b, kh, j: (b, j))
    extra = [] if slopes is None else [slopes]
    kernel = functools.partial(_dkv_kernel, problem=problem, nq=nq, nkv=nkv)
    return pl.pallas_call(
        kernel,
        grid=(b, kh, nkv),
        in_specs=[_whole(counts), _whole(steps), q_spec, kv_spec, kv_spec]
        + [q_row, q_row, kv_row, kv_row]
        + [_whole(x) for x in extra]
        + [q_spec, row_spec, row_spec],
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_params(),
        interpret=interpret,
        name="flash_attention_dkv",
    )(counts, steps, grouped(q), k, v, *mask, *extra, grouped(d_out), grouped(lse), grouped(delta))


BACKEND = driver.Backend(
    platform="cuda",
    blocks=_blocks,
    padded_head_dim=_head_dim,
    forward=forward,
    backward_dq=backward_dq,
    backward_dkv=backward_dkv,
)


def flash_attention(q, k, v, **kwargs):
    """Flash attention on NVIDIA GPUs (Pallas Triton); q [B, N, T, H], k, v [B, K, S, H]."""
    return driver.flash_attention(BACKEND, q, k, v, **kwargs)
