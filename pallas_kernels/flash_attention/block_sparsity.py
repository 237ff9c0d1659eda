"""Which (query block, key block) tiles a kernel visits, computed on device from positions.

Each tile is classified from per-block min/max of positions and segment ids, per batch row:
  EMPTY   no query in the block can see any key in it: neither loaded nor computed;
  FULL    every query sees every key: computed without mask work;
  PARTIAL anything else: computed with the elementwise mask.
The classes are then compacted into a schedule: for each query block (or key block, for the dK/dV
pass), the non-empty partner blocks first, in order. A kernel's inner grid axis walks the schedule;
steps past `counts` repeat the last block index, so the pipeline issues no new copy and the body
does nothing. Nothing here is a host-side mask: it is O(L / block) work inside the jitted program,
and because it reads positions, causal, windowed, packed and permuted layouts need no special case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EMPTY, FULL, PARTIAL = 0, 1, 2


def tile_classes(problem, q_pos, q_seg, kv_pos, kv_seg) -> jax.Array:
    """[B, nq, nkv] int32 tile classes; inputs are padded to whole blocks ([B, nq * bq] etc.)."""
    batch = q_pos.shape[0]

    def ranges(x, block):
        x = x.reshape(batch, -1, block)
        return x.min(-1), x.max(-1)

    (qp_lo, qp_hi), (qs_lo, qs_hi) = (ranges(x, problem.block_q) for x in (q_pos, q_seg))
    (kp_lo, kp_hi), (ks_lo, ks_hi) = (ranges(x, problem.block_kv) for x in (kv_pos, kv_seg))
    qp_lo, qp_hi, qs_lo, qs_hi = (x[:, :, None] for x in (qp_lo, qp_hi, qs_lo, qs_hi))
    kp_lo, kp_hi, ks_lo, ks_hi = (x[:, None, :] for x in (kp_lo, kp_hi, ks_lo, ks_hi))

    some = (qs_lo <= ks_hi) & (ks_lo <= qs_hi)
    every = (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    if problem.causal:
        some &= kp_lo <= qp_hi
        every &= kp_hi <= qp_lo
    if problem.window is not None:
        some &= qp_lo - kp_hi < problem.window
        every &= qp_hi - kp_lo < problem.window
    return jnp.where(some, jnp.where(every, FULL, PARTIAL), EMPTY).astype(jnp.int32)


def schedule(classes) -> tuple[jax.Array, jax.Array]:
    """(counts [B * n_outer], steps [B * n_outer * n_inner]) from classes [B, n_outer, n_inner].

    steps[b, o, j] = 2 * block + (1 if PARTIAL else 0) for the j-th non-empty inner block; for
    j >= counts[b, o] it repeats the last one (or block 0 when the row is empty). Flat int32, as
    TPU scalar memory and GPU scalar loads want it.
    """
    nonempty = classes != EMPTY
    order = jnp.argsort(~nonempty, axis=-1, stable=True)  # non-empty blocks first, in order
    counts = nonempty.sum(-1).astype(jnp.int32)
    last = jnp.take_along_axis(order, jnp.maximum(counts - 1, 0)[..., None], axis=-1)
    step = jnp.arange(classes.shape[-1])
    block = jnp.where(step < counts[..., None], order, last)
    partial = jnp.take_along_axis(classes, block, axis=-1) == PARTIAL
    return counts.reshape(-1), (2 * block + partial).astype(jnp.int32).reshape(-1)


def decode_step(step):
    """(block index, partial) of one schedule entry, the inverse of the encoding in `schedule`."""
    return step // 2, step % 2 == 1


def row_schedule(classes):
    """Per query block, the key blocks to visit (forward and dQ passes)."""
    return schedule(classes)


def column_schedule(classes):
    """Per key block, the query blocks to visit (dK/dV pass)."""
    return schedule(classes.swapaxes(1, 2))
