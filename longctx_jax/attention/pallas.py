"""`impl="pallas_tpu"` / `"pallas_gpu"`: the Pallas flash-attention kernels behind `attention()`.

The kernels (pallas_kernels/flash_attention) take head-major [B, N, T, H] inputs and explicit
positions and segment ids; this adapter transposes, hands over the resolved mask, and transposes
back (O(L) work). On a platform other than the kernel's own, the same kernel runs in Pallas
interpret mode, decided by the platform the computation is lowered for.

`pallas_forward` / `pallas_backward` are the (out, lse) and backward-from-statistics halves that
context-parallel ring attention runs per step (see ring.py).
"""

from __future__ import annotations

import jax.numpy as jnp

from longctx_jax.attention.mask import ResolvedMask
from pallas_kernels.flash_attention import driver, gpu, tpu

BACKENDS = dict(pallas_tpu=tpu.BACKEND, pallas_gpu=gpu.BACKEND)


def unsupported(kernel: str, q, k) -> str | None:
    """Why `kernel` cannot take these shapes with its default blocks (the backend's ValueError
    message), or None if it can."""
    t, h, s = q.shape[1], q.shape[3], k.shape[1]
    try:
        for backward in (False, True):
            BACKENDS[kernel].blocks(t, s, h, None, None, backward=backward)
    except ValueError as error:
        return str(error)
    return None


def _heads_first(x):
    return x.transpose(0, 2, 1, 3)  # [B, L, N, H] <-> [B, N, L, H]


def _options(mask: ResolvedMask, scale, soft_cap, slopes, blocks):
    return dict(
        q_positions=mask.q_positions,
        kv_positions=mask.kv_positions,
        q_segment_ids=mask.q_segment_ids,
        kv_segment_ids=mask.kv_segment_ids,
        slopes=slopes,
        causal=mask.causal,
        window=mask.window,
        scale=scale,
        soft_cap=soft_cap,
        **blocks,
    )


def pallas_attention(
    kernel: str, q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes, **blocks
):
    """Attention output [B, T, N, H] in q's dtype via `kernel`: "pallas_tpu" or "pallas_gpu"."""
    out = driver.flash_attention(
        BACKENDS[kernel],
        *map(_heads_first, (q, k, v)),
        **_options(mask, scale, soft_cap, slopes, blocks),
    )
    return _heads_first(out)


def pallas_forward(kernel: str, q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes):
    """(out [B, T, N, H] in q's dtype, lse [B, T, N] float32, -inf where a row sees no key)."""
    out, lse = driver.flash_forward(
        BACKENDS[kernel],
        *map(_heads_first, (q, k, v)),
        **_options(mask, scale, soft_cap, slopes, {}),
    )
    return _heads_first(out), lse.transpose(0, 2, 1)


def pallas_backward(
    kernel: str, q, k, v, mask: ResolvedMask, out, lse, d_out, *, scale, soft_cap, slopes
):
    """float32 (dq, dk, dv, d_slopes or None) for these keys, given the whole row's out and lse."""
    dq, dk, dv, d_slopes = driver.flash_backward(
        BACKENDS[kernel],
        *map(_heads_first, (q, k, v, out)),
        lse.transpose(0, 2, 1),
        _heads_first(d_out),
        **_options(mask, scale, soft_cap, slopes, {}),
    )
    f32 = lambda x: _heads_first(x).astype(jnp.float32)  # noqa: E731
    return f32(dq), f32(dk), f32(dv), d_slopes
