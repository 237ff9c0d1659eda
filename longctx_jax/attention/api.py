"""`attention()`: the one entry point; every implementation computes the same function.

Implementations differ in cost only: `reference` (dense, O(T*S) memory), `blockwise` (pure-JAX
online softmax with a recomputing backward, O(T+S) memory, empty tiles skipped), `xla` (JAX's own
jax.nn.dot_product_attention: the baseline; no soft cap), `cudnn` (NVIDIA's fused kernel; causal /
sliding-window masks on the implicit layout only), `pallas_tpu` / `pallas_gpu` (the Pallas
flash-attention kernels; interpreted on other platforms) and `auto`: `pallas_tpu` on TPU,
`AUTO_GPU` on CUDA GPUs, `blockwise` elsewhere -- chosen by the platform the computation is
lowered for (`lax.platform_dependent`), so an ahead-of-time compile for TPU gets the TPU kernel.
Inputs are checked here, on shapes and dtypes, before any compilation.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from longctx_jax.attention import cudnn, pallas
from longctx_jax.attention.blockwise import blockwise_attention
from longctx_jax.attention.mask import AttentionMask
from longctx_jax.attention.reference import reference_attention, reference_weights
from longctx_jax.attention.xla import xla_attention

IMPLEMENTATIONS = ("reference", "blockwise", "xla", "cudnn", "pallas_tpu", "pallas_gpu", "auto")
# What `auto` runs on CUDA GPUs when cuDNN can take the call: cuDNN was 2-3x faster than the
# Pallas GPU kernel on an H100 (docs/figures/bench_attention_gpu_h*). Otherwise: pallas_gpu.
AUTO_GPU = "cudnn"


def attention(
    q,
    k,
    v,
    *,
    mask: AttentionMask | None = None,
    impl: str = "auto",
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes=None,
):
    """Multi-head attention with GQA/MQA, masks on positions, soft cap and ALiBi.

    Args:
      q: [batch, q_len, num_heads, head_dim].
      k, v: [batch, kv_len, num_kv_heads, head_dim]; num_heads % num_kv_heads == 0.
      mask: an `AttentionMask` (causal, window, segment ids, positions); None = all visible.
      impl: one of IMPLEMENTATIONS (see the module docstring); "auto" = best for the platform.
      scale: logit scale, default 1 / sqrt(head_dim).
      logits_soft_cap: c > 0 turns scaled logits s into c * tanh(s / c).
      alibi_slopes: [num_heads]; adds -slope * (q_pos - kv_pos) to the logits.

    Returns [batch, q_len, num_heads, head_dim] in q's dtype. A query that sees no key gets 0.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")
    resolved, scale = _prepare(q, k, v, mask, scale, logits_soft_cap, alibi_slopes)
    if impl == "xla" and logits_soft_cap is not None:
        raise ValueError(
            f"logits_soft_cap={logits_soft_cap!r}: impl='xla' (jax.nn.dot_product_attention) has "
            "no soft cap; use impl='reference' or 'blockwise'"
        )
    no_cudnn = cudnn.unsupported(q, k, mask, logits_soft_cap, alibi_slopes)
    if impl == "cudnn" and no_cudnn:
        raise ValueError(f"impl='cudnn' cannot take {no_cudnn}; use 'pallas_gpu' or 'blockwise'")

    def run(name, q, k, v, resolved, slopes):
        if name == "cudnn":
            return cudnn.cudnn_attention(q, k, v, mask, scale=scale)
        kwargs = dict(scale=scale, soft_cap=logits_soft_cap, slopes=slopes)
        if name.startswith("pallas_"):
            return pallas.pallas_attention(name, q, k, v, resolved, **kwargs)
        implementation = dict(
            reference=reference_attention, blockwise=blockwise_attention, xla=xla_attention
        )[name]
        return implementation(q, k, v, resolved, **kwargs)

    args = (q, k, v, resolved, alibi_slopes)
    if impl != "auto":
        return run(impl, *args)
    # A kernel that cannot take these shapes (say head_dim > 256 on GPU) falls back to blockwise.
    tpu = "blockwise" if pallas.unsupported("pallas_tpu", q, k) else "pallas_tpu"
    gpu = "blockwise" if pallas.unsupported("pallas_gpu", q, k) else "pallas_gpu"
    gpu = gpu if no_cudnn else AUTO_GPU
    return lax.platform_dependent(
        *args,
        tpu=functools.partial(run, tpu),
        cuda=functools.partial(run, gpu),
        default=functools.partial(run, "blockwise"),
    )


def attention_weights(
    q, k, v=None, *, mask=None, scale=None, logits_soft_cap=None, alibi_slopes=None
):
    """Attention probabilities [batch, num_heads, q_len, kv_len] (float32), for attention maps."""
    v = k if v is None else v
    resolved, scale = _prepare(q, k, v, mask, scale, logits_soft_cap, alibi_slopes)
    return reference_weights(
        q, k, v, resolved, scale=scale, soft_cap=logits_soft_cap, slopes=alibi_slopes
    )


def _prepare(q, k, v, mask, scale, soft_cap, slopes):
    """Validates every argument (ValueError naming it) and resolves the mask and scale."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"{name} has shape {getattr(x, 'shape', None)}: expected 4 dims "
                "[batch, len, heads, head_dim]"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} has dtype {x.dtype}: expected a floating dtype")
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype}: expected one dtype")
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes q={b}, k={k.shape[0]}, v={v.shape[0]}: expected equal")
    if k.shape[3] != h:
        raise ValueError(f"k head_dim={k.shape[3]}: expected q's head_dim {h}")
    if v.shape != k.shape:
        raise ValueError(f"v has shape {v.shape}: expected k's shape {k.shape}")
    if kh < 1 or n % kh:
        raise ValueError(
            f"num_heads={n}, num_kv_heads={kh}: expected num_heads a multiple of num_kv_heads"
        )
    if t < 1 or s < 1:
        raise ValueError(f"q_len={t}, kv_len={s}: expected at least one query and one key")
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    elif not _is_real(scale) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r}: expected a finite Python float")
    if soft_cap is not None and (
        not _is_real(soft_cap) or not math.isfinite(soft_cap) or not soft_cap > 0
    ):
        raise ValueError(f"logits_soft_cap={soft_cap!r}: expected None or a finite float > 0")
    if slopes is not None and tuple(getattr(slopes, "shape", ())) != (n,):
        raise ValueError(
            f"alibi_slopes has shape {getattr(slopes, 'shape', None)}: "
            f"expected [num_heads] = ({n},)"
        )
    mask = AttentionMask() if mask is None else mask
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
    mask.validate(b, t, s)
    return mask.resolved(b, t, s), float(scale)


def _is_real(x) -> bool:
    """A Python or numpy real number (a static value), not a bool and not a traced array."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool | np.bool_)
