"""Decode attention in plain jnp: dequantise the whole cache, then dense masked softmax.

The `backend="xla"` path (the fast one on CPU, where the kernels only interpret) and the function
the kernels are compared with inside the package. Dequantisation is quantize.py's own, the
attention is longctx_jax.attention's dense reference; nothing here is decode-specific but the
plumbing. Memory is O(S * K * H) for the dequantised cache.
"""

from __future__ import annotations

from longctx_jax.attention.mask import ResolvedMask
from longctx_jax.attention.reference import reference_attention
from longctx_jax.inference.quantize import Quantized, dequantize


def dequantize_cache(codes, bits: int | None, scale, minimum, dtype):
    """A cache [B, S, K, W] -> float [B, S, K, H] in `dtype` (float caches pass through)."""
    if bits is None:
        return codes.astype(dtype)
    head_dim = codes.shape[-1] * 8 // bits
    packed = Quantized(codes, scale, minimum, bits=bits, axis=3, group_size=head_dim)
    return dequantize(packed, dtype)


def reference_decode(
    q,
    keys,
    values,
    *,
    q_positions,
    kv_positions,
    q_segment_ids,
    kv_segment_ids,
    causal,
    window,
    scale,
    soft_cap,
    slopes,
    bits,
    key_scale,
    key_minimum,
    value_scale,
    value_minimum,
):
    """[B, T, N, H] in q's dtype; arguments as `decode_attention`'s (validated there)."""
    k = dequantize_cache(keys, bits, key_scale, key_minimum, q.dtype)
    v = dequantize_cache(values, bits, value_scale, value_minimum, q.dtype)
    mask = ResolvedMask(
        causal=causal,
        window=window,
        q_positions=q_positions,
        kv_positions=kv_positions,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
    )
    return reference_attention(q, k, v, mask, scale=scale, soft_cap=soft_cap, slopes=slopes)
