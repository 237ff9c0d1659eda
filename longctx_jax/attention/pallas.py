"""`impl="pallas_tpu"` / `"pallas_gpu"`: the Pallas flash-attention kernels behind `attention()`.

The kernels (pallas_kernels/flash_attention) take head-major [B, N, T, H] inputs and explicit
positions and segment ids; this adapter transposes, hands over the resolved mask, and transposes
back (O(L) work). On a platform other than the kernel's own, the same kernel runs in Pallas
interpret mode, decided by the platform the computation is lowered for.
"""

from __future__ import annotations

from longctx_jax.attention.mask import ResolvedMask
from pallas_kernels.flash_attention import gpu, tpu

KERNELS = dict(pallas_tpu=tpu.flash_attention, pallas_gpu=gpu.flash_attention)


def pallas_attention(
    kernel: str, q, k, v, mask: ResolvedMask, *, scale, soft_cap, slopes, **blocks
):
    """Attention output [B, T, N, H] in q's dtype via `kernel`: "pallas_tpu" or "pallas_gpu"."""
    out = KERNELS[kernel](
        q.transpose(0, 2, 1, 3),
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
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
    return out.transpose(0, 2, 1, 3)
