"""`impl="cudnn"`: NVIDIA's fused attention through jax.nn.dot_product_attention.

cuDNN's kernel knows causal and sliding-window masks on the implicit layout (query i, key j at
positions i and j) and nothing else, so this path takes only masks without arrays, equal query
and key lengths, bf16/fp16 inputs, no soft cap and no ALiBi; `unsupported` names what rules it out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longctx_jax.attention.mask import AttentionMask


def unsupported(q, k, mask: AttentionMask | None, soft_cap, slopes) -> str | None:
    """Why cuDNN cannot compute this call, or None if it can."""
    mask = AttentionMask() if mask is None else mask
    arrays = (mask.q_positions, mask.kv_positions, mask.q_segment_ids, mask.kv_segment_ids)
    if any(x is not None for x in arrays):
        return "mask positions / segment ids (cuDNN masks only the implicit layout)"
    if mask.window is not None and not mask.causal:
        return "a bidirectional window"
    if q.shape[1] != k.shape[1]:
        return f"q_len={q.shape[1]} != kv_len={k.shape[1]}"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype} (cuDNN takes bfloat16 / float16)"
    if soft_cap is not None:
        return "logits_soft_cap"
    if slopes is not None:
        return "alibi_slopes"
    return None


def cudnn_attention(q, k, v, mask: AttentionMask | None, *, scale):
    """Attention output [B, T, N, H] from cuDNN (GPU only; see `unsupported`)."""
    mask = AttentionMask() if mask is None else mask
    window = None if mask.window is None else (mask.window - 1, 0)
    return jax.nn.dot_product_attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=mask.causal,
        local_window_size=window,
        implementation="cudnn",
    )
