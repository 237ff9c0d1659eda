"""Token-granular sparse attention forward as a Pallas Mosaic TPU kernel (see reference.py).

One program per (batch, query, kv head): the query heads of the kv head ([G, H]) attend to the
query's selected keys, `chunk` at a time. Keys and values stay in HBM; the selected rows of each
chunk are copied into a VMEM buffer by one DMA per row (indices read from SMEM), so gathered K/V
never exist in HBM. Online softmax in float32 across chunks, as in flash attention. Slots holding
-1 are skipped (no copy) and masked; a query with no counted slot outputs 0.

`interpret=None` runs the compiled kernel when lowered for TPU and Pallas interpret mode elsewhere.
Forward only: callers differentiate through a gather-based backward (longctx_jax.attention.sparse).
Not yet timed on a TPU: one DMA per selected row, issued and awaited per chunk without double
buffering, is the simple first version.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

DEFAULT_CHUNK = 128


def sparse_attention(q, k, v, indices, *, scale: float, chunk: int = DEFAULT_CHUNK, interpret=None):
    """Forward only: [B, T, N, H] in q's dtype; q [B, T, N, H], k, v [B, S, K, H],
    indices [B, T, K, k] int32 (-1: slot does not count)."""
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    if n % kv_heads or indices.shape[:3] != (b, t, kv_heads):
        raise ValueError(
            f"q {q.shape}, k {k.shape}, indices {indices.shape}: expected "
            "indices [B, T, K, k] and num_heads a multiple of num_kv_heads"
        )
    if not isinstance(chunk, int) or chunk < 1 or chunk % 8:
        raise ValueError(f"chunk={chunk!r}: expected a positive multiple of 8")
    slots = -(-indices.shape[-1] // chunk) * chunk
    indices = jnp.pad(
        indices.astype(jnp.int32),
        [(0, 0)] * 3 + [(0, slots - indices.shape[-1])],
        constant_values=-1,
    )
    q_BTKGH = q.reshape(b, t, kv_heads, n // kv_heads, h)
    run = functools.partial(_forward, scale=float(scale), chunk=chunk)
    if interpret is None:
        out = lax.platform_dependent(
            q_BTKGH,
            k,
            v,
            indices,
            tpu=functools.partial(run, interpret=False),
            default=functools.partial(run, interpret=True),
        )
    else:
        out = run(q_BTKGH, k, v, indices, interpret=interpret)
    return out.reshape(b, t, n, h)


def _kernel(q_ref, idx_ref, ok_ref, k_hbm, v_hbm, o_ref, k_buf, v_buf, sems, *, scale, chunk):
    b, kh = pl.program_id(0), pl.program_id(2)  # axis 1 (the query) only moves q, o blocks
    q = q_ref[...]  # [G, H]
    groups = q.shape[0]

    def copy(j, row, which):
        src, dst = (k_hbm, k_buf) if which == 0 else (v_hbm, v_buf)
        return pltpu.make_async_copy(
            src.at[b, pl.ds(row, 1), kh], dst.at[pl.ds(j, 1)], sems.at[which]
        )

    m = jnp.full((groups, 1), -jnp.inf, jnp.float32)
    l = jnp.zeros((groups, 1), jnp.float32)
    acc = jnp.zeros(q.shape, jnp.float32)
    for c in range(idx_ref.shape[0] // chunk):  # static: a handful of chunks per query

        def start(j, carry, c=c):
            row = jnp.maximum(idx_ref[c * chunk + j], 0)
            copy(j, row, 0).start()
            copy(j, row, 1).start()
            return carry

        def wait(j, carry):
            copy(j, 0, 0).wait()
            copy(j, 0, 1).wait()
            return carry

        lax.fori_loop(0, chunk, start, 0)
        lax.fori_loop(0, chunk, wait, 0)
        ok = ok_ref[:, c * chunk : (c + 1) * chunk] != 0  # [1, chunk]
        s = (
            lax.dot_general(
                q, k_buf[:, 0, :], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )
            * scale
        )
        s = jnp.where(ok, s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
        m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_safe)
        corr = jnp.exp(m - m_safe)
        l = corr * l + p.sum(axis=-1, keepdims=True)
        acc = corr * acc + lax.dot_general(
            p.astype(v_buf.dtype),
            v_buf[:, 0, :],
            (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        m = m_new
    seen = m != -jnp.inf
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, l, 1.0), 0.0).astype(o_ref.dtype)


def _forward(q_BTKGH, k, v, indices, *, scale, chunk, interpret):
    b, t, kv_heads, groups, h = q_BTKGH.shape
    slots = indices.shape[-1]
    ok = (indices >= 0).astype(jnp.int32)[:, :, :, None, :]  # [B, T, K, 1, slots]
    q_spec = pl.BlockSpec((None, None, None, groups, h), lambda b, t, kh: (b, t, kh, 0, 0))
    kernel = functools.partial(_kernel, scale=scale, chunk=chunk)
    return pl.pallas_call(
        kernel,
        grid=(b, t, kv_heads),
        in_specs=[
            q_spec,
            pl.BlockSpec(
                (None, None, None, slots), lambda b, t, kh: (b, t, kh, 0), memory_space=pltpu.SMEM
            ),
            pl.BlockSpec((None, None, None, 1, slots), lambda b, t, kh: (b, t, kh, 0, 0)),
            pl.BlockSpec(memory_space=pltpu.HBM),
            pl.BlockSpec(memory_space=pltpu.HBM),
        ],
        out_specs=q_spec,
        out_shape=jax.ShapeDtypeStruct(q_BTKGH.shape, q_BTKGH.dtype),
        scratch_shapes=[
            # Rows of K/V are copied as [1, H] tiles of [B, S, K, 1, H] views: a one-row copy
            # then never splits a packed (bf16) tile.
            pltpu.VMEM((chunk, 1, h), k.dtype),
            pltpu.VMEM((chunk, 1, h), v.dtype),
            pltpu.SemaphoreType.DMA((2,)),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel")
        ),
        interpret=interpret,
        name="sparse_attention_fwd",
    )(q_BTKGH, indices, ok, k[:, :, :, None, :], v[:, :, :, None, :])
