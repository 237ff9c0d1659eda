"""The backend-independent half of flash attention: padding, block schedules, autodiff, dispatch.

A backend (tpu.py, gpu.py) supplies three kernels -- forward (out, log-sum-exp), dQ, and dK/dV --
and its block-size rules. The backward pass is two kernels rather than one fused pass: the dQ pass
walks key blocks per query block (the forward schedule), the dK/dV pass walks query blocks per key
block (the transposed schedule). Each recomputes the tile's probabilities from the saved
log-sum-exp. Two passes cost one extra q.k and exp per tile, but need no atomics (TPUs have none)
and no float32 dQ buffer shared across programs, and every output block is written by exactly one
program, so results are deterministic.

Padding: lengths are padded to whole blocks. Padded queries repeat the last position and segment
(their outputs are dropped; their output cotangent is 0, so they add nothing to dK, dV). Padded
keys get a segment id below every query's, so no query sees them and blocks made only of padding
are EMPTY.

`interpret=None` decides by the platform the computation is lowered for (`lax.platform_dependent`),
not the host's default backend: on TPU (or CUDA, for the GPU kernels) the compiled kernel runs,
elsewhere the same kernel runs in Pallas interpret mode. So an ahead-of-time compile for a TPU
topology from a CPU host gets the real Mosaic kernel.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.flash_attention import block_sparsity
from pallas_kernels.flash_attention.problem import (
    Problem,
    check_inputs,
    default_scale,
    pad_axis,
    round_up,
)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One hardware target: its kernels and its rules for block sizes and head_dim."""

    platform: str  # the lowering platform whose compiled kernel is the real one
    # (q_len, kv_len, head_dim, block_q, block_kv, *, backward) -> (block_q, block_kv) for the
    # forward or backward pass (user blocks, else the backend's defaults), or a ValueError
    blocks: Callable
    padded_head_dim: Callable[[int], int]
    forward: Callable  # (problem, interpret, q, k, v, slopes, mask, rows) -> (out, lse)
    backward_dq: Callable  # (..., q, k, v, slopes, mask, rows, d_out, lse, delta) -> (dq, dslope)
    backward_dkv: Callable  # (..., q, k, v, slopes, mask, cols, d_out, lse, delta) -> (dk, dv)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """Padded inputs, static problems (forward, backward) and schedules of one call."""

    problems: tuple[Problem, Problem]
    q: jax.Array
    k: jax.Array
    v: jax.Array
    slopes: jax.Array | None
    mask: tuple
    schedules: tuple  # forward rows, backward rows, backward columns
    q_len: int
    head_dim: int

    def pad_rows(self, x):
        """Pads a [B, N, T(, H)] per-query array like q, with zeros."""
        x = pad_axis(x, 2, self.q.shape[2], 0)
        return pad_axis(x, 3, self.q.shape[3], 0) if x.ndim == 4 else x

    def unpad(self, x):
        x = x[:, :, : self.q_len]
        return x[..., : self.head_dim] if x.ndim == 4 else x


def _prepare(
    backend: Backend,
    q,
    k,
    v,
    *,
    q_positions,
    kv_positions,
    q_segment_ids,
    kv_segment_ids,
    slopes=None,
    causal: bool = False,
    window: int | None = None,
    scale: float | None = None,
    soft_cap: float | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
) -> _Prepared:
    check_inputs(q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, slopes)
    _, n, t, h = q.shape
    s = k.shape[2]

    def problem_for(backward: bool) -> Problem:
        bq, bkv = backend.blocks(t, s, h, block_q, block_kv, backward=backward)
        return Problem(
            causal=bool(causal),
            window=window,
            scale=default_scale(h, scale),
            soft_cap=soft_cap,
            has_alibi=slopes is not None,
            block_q=bq,
            block_kv=bkv,
            num_groups=n // k.shape[1],
        )

    # The forward and backward passes may tile differently (their best blocks differ on GPUs);
    # lengths are padded to a multiple of both (block sizes are powers of two or of 128).
    forward, backward = problem_for(False), problem_for(True)
    t_pad = round_up(t, max(forward.block_q, backward.block_q))
    s_pad = round_up(s, max(forward.block_kv, backward.block_kv))
    h_pad = backend.padded_head_dim(h)
    q_pos, q_seg = (pad_axis(x.astype(jnp.int32), 1, t_pad) for x in (q_positions, q_segment_ids))
    kv_pos = pad_axis(kv_positions.astype(jnp.int32), 1, s_pad)
    hidden = jnp.min(q_seg) - 1  # a segment no query has
    kv_seg = pad_axis(kv_segment_ids.astype(jnp.int32), 1, s_pad, hidden)
    mask = (q_pos, q_seg, kv_pos, kv_seg)
    rows = block_sparsity.row_schedule(block_sparsity.tile_classes(forward, *mask))
    classes = block_sparsity.tile_classes(backward, *mask)
    schedules = (
        rows,
        block_sparsity.row_schedule(classes),
        block_sparsity.column_schedule(classes),
    )

    def pad(x, length):
        return pad_axis(pad_axis(x, 2, length, 0), 3, h_pad, 0)

    return _Prepared(
        problems=(forward, backward),
        q=pad(q, t_pad),
        k=pad(k, s_pad),
        v=pad(v, s_pad),
        slopes=None if slopes is None else slopes.astype(jnp.float32),
        mask=mask,
        schedules=schedules,
        q_len=t,
        head_dim=h,
    )


def flash_attention(backend: Backend, q, k, v, *, interpret: bool | None = None, **options):
    """Attention output [B, N, T, H] in q's dtype, differentiable; see problem.py.

    options: q_positions, kv_positions, q_segment_ids, kv_segment_ids ([B, len] int), slopes,
    causal, window, scale, soft_cap, block_q, block_kv.
    """
    p = _prepare(backend, q, k, v, **options)
    out = _flash(p.problems, backend, interpret, p.q, p.k, p.v, p.slopes, p.mask, p.schedules)
    return p.unpad(out)


def flash_forward(backend: Backend, q, k, v, *, interpret: bool | None = None, **options):
    """(out [B, N, T, H] in q's dtype, lse [B, N, T] float32, -inf for a row with no key).

    Not differentiable: with `flash_backward`, the two halves a caller that combines partial
    results over disjoint key sets (context-parallel ring attention) needs.
    """
    p = _prepare(backend, q, k, v, **options)
    out, lse = _run_forward(
        p.problems[0], backend, interpret, p.q, p.k, p.v, p.slopes, p.mask, p.schedules[0]
    )
    return p.unpad(out), p.unpad(lse)


def flash_backward(
    backend: Backend, q, k, v, out, lse, d_out, *, interpret: bool | None = None, **options
):
    """(dq, dk, dv, d_slopes or None) for these keys, given the whole row's `out` and `lse`.

    `out` [B, N, T, H] and `lse` [B, N, T] may come from attention over more keys than k, v
    (a ring step), so gradients over disjoint key sets add up to the full gradient.
    """
    p = _prepare(backend, q, k, v, **options)
    grads = _backward(
        p.problems[1],
        backend,
        interpret,
        (p.q, p.k, p.v, p.slopes, p.mask, p.schedules),
        p.pad_rows(out),
        p.pad_rows(lse),
        p.pad_rows(d_out),
    )
    dq, dk, dv, d_slopes = grads
    kv_len, head_dim = k.shape[2], k.shape[3]
    return p.unpad(dq), dk[:, :, :kv_len, :head_dim], dv[:, :, :kv_len, :head_dim], d_slopes


def dispatch(backend: Backend, interpret: bool | None, kernel: Callable, *args):
    """Runs `kernel(*args, interpret=...)`, compiled on the backend's platform, else interpreted."""
    if interpret is not None:
        return kernel(*args, interpret=interpret)
    return lax.platform_dependent(
        *args,
        **{backend.platform: functools.partial(kernel, interpret=False)},
        default=functools.partial(kernel, interpret=True),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _flash(problems, backend, interpret, q, k, v, slopes, mask, schedules):
    out, _ = _run_forward(problems[0], backend, interpret, q, k, v, slopes, mask, schedules[0])
    return out


def _run_forward(problem, backend, interpret, q, k, v, slopes, mask, rows):
    kernel = functools.partial(backend.forward, problem)
    return dispatch(backend, interpret, kernel, q, k, v, slopes, mask, rows)


def _flash_fwd(problems, backend, interpret, q, k, v, slopes, mask, schedules):
    out, lse = _run_forward(problems[0], backend, interpret, q, k, v, slopes, mask, schedules[0])
    return out, (q, k, v, slopes, mask, schedules, out, lse)


def _flash_bwd(problems, backend, interpret, residuals, d_out):
    q, k, v, slopes, mask, schedules, out, lse = residuals
    inputs = (q, k, v, slopes, mask, schedules)
    return (*_backward(problems[1], backend, interpret, inputs, out, lse, d_out), None, None)


def _backward(problem, backend, interpret, inputs, out, lse, d_out):
    """(dq, dk, dv, d_slopes) from the backward kernels, in the inputs' dtypes."""
    q, k, v, slopes, mask, (_, rows, cols) = inputs
    d_out = d_out.astype(q.dtype)
    # D = rowsum(dO * O), the softmax-gradient correction, float32 [B, N, T].
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    common = (q, k, v, slopes, mask)
    dq_kernel = functools.partial(backend.backward_dq, problem)
    dq, dslope_rows = dispatch(backend, interpret, dq_kernel, *common, rows, d_out, lse, delta)
    dkv_kernel = functools.partial(backend.backward_dkv, problem)
    dk, dv = dispatch(backend, interpret, dkv_kernel, *common, cols, d_out, lse, delta)
    dslopes = None if slopes is None else dslope_rows.sum(axis=(0, 2))
    return dq, dk, dv, dslopes


_flash.defvjp(_flash_fwd, _flash_bwd)
