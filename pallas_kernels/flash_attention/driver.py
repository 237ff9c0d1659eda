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

    name: str
    platform: str  # the lowering platform whose compiled kernel is the real one
    # (q_len, kv_len, head_dim, block_q, block_kv, *, backward) -> (block_q, block_kv) for the
    # forward or backward pass (user blocks, else the backend's defaults), or a ValueError
    blocks: Callable
    padded_head_dim: Callable[[int], int]
    forward: Callable  # (problem, interpret, q, k, v, slopes, mask, rows) -> (out, lse)
    backward_dq: Callable  # (..., q, k, v, slopes, mask, rows, d_out, lse, delta) -> (dq, dslope)
    backward_dkv: Callable  # (..., q, k, v, slopes, mask, cols, d_out, lse, delta) -> (dk, dv)


def flash_attention(
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
    interpret: bool | None = None,
):
    """Attention output [B, N, T, H] in q's dtype; see problem.py for the exact function."""
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

    out = _flash(
        (forward, backward),
        backend,
        interpret,
        pad(q, t_pad),
        pad(k, s_pad),
        pad(v, s_pad),
        None if slopes is None else slopes.astype(jnp.float32),
        mask,
        schedules,
    )
    return out[:, :, :t, :h]


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
    q, k, v, slopes, mask, (_, rows, cols), out, lse = residuals
    problem = problems[1]
    d_out = d_out.astype(q.dtype)
    # D = rowsum(dO * O), the softmax-gradient correction, float32 [B, N, T].
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    common = (q, k, v, slopes, mask)
    dq_kernel = functools.partial(backend.backward_dq, problem)
    dq, dslope_rows = dispatch(backend, interpret, dq_kernel, *common, rows, d_out, lse, delta)
    dkv_kernel = functools.partial(backend.backward_dkv, problem)
    dk, dv = dispatch(backend, interpret, dkv_kernel, *common, cols, d_out, lse, delta)
    dslopes = None if slopes is None else dslope_rows.sum(axis=(0, 2))
    return dq, dk, dv, dslopes, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
