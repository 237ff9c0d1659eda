"""`decode_attention`: attention of a decode step's few new queries over a (quantised) KV cache.

Decode reads the whole cache to produce T (1..16) tokens, so it is bound by HBM bandwidth: the
kernels read the cache once, in its stored layout and width (packed 4/8-bit codes and their
float32 per-token scales, longctx_jax/inference/quantize.py), and dequantise on chip. The keys
are cut into `num_splits` chunks reduced in parallel (split-K, "flash decoding": with batch x kv
heads programs alone a GPU would sit mostly idle) and merged by log-sum-exp in float32. Only
the blocks between the first and last key that some query can see are read (an empty cache tail,
a sliding window). Semantics are the flash kernels' (pallas_kernels/flash_attention/problem.py):
same logits, mask rule and GQA head mapping; a query that sees no key outputs 0.

Backends: "tpu" (tpu.py, Mosaic), "gpu" (gpu.py, Triton), "xla" (reference.py: dequantise, then
dense jnp attention; the CPU path) and "auto", chosen by the platform the call is lowered for
(`lax.platform_dependent`), falling back to "xla" where a kernel cannot take the shapes. A kernel
on another platform runs in Pallas interpret mode (`interpret=None`), as the flash kernels do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.reference import split_heads
from pallas_kernels.decode_attention import gpu, tpu
from pallas_kernels.decode_attention.problem import (
    BITS,
    Decode,
    live_blocks,
    merge,
    plan_splits,
)
from pallas_kernels.decode_attention.reference import reference_decode
from pallas_kernels.flash_attention.driver import dispatch
from pallas_kernels.flash_attention.problem import Problem, pad_axis

BACKENDS = ("auto", "tpu", "gpu", "xla")


@dataclasses.dataclass(frozen=True)
class Backend:
    """One kernel: its platform, block / split rules, query-row padding, and the kernel."""

    platform: str
    plan: Callable  # (kv_len, width, block_kv, num_splits, *, batch, kv_heads) -> (bkv, splits)
    rows: Callable[[int], int]  # rows per kv head -> padded rows
    kernel: Callable  # (decode, q, keys, values, q_pos, q_seg, kv_pos, kv_seg, stats, slopes,
    #                    live, *, interpret) -> (acc, m, l); see problem.py for the layout


KERNELS = dict(
    tpu=Backend("tpu", tpu.plan, tpu.rows, tpu.decode_kernel),
    gpu=Backend("cuda", gpu.plan, gpu.rows, gpu.decode_kernel),
)


def decode_attention(
    q,
    keys,
    values,
    *,
    q_positions,
    kv_positions,
    q_segment_ids,
    kv_segment_ids,
    causal: bool = True,
    window: int | None = None,
    scale: float,
    soft_cap: float | None = None,
    slopes=None,
    bits: int | None = None,
    key_scale=None,
    key_minimum=None,
    value_scale=None,
    value_minimum=None,
    backend: str = "auto",
    block_kv: int | None = None,
    num_splits: int | None = None,
    interpret: bool | None = None,
):
    """Attention output [B, T, N, H] in q's dtype.

    Args:
      q: [B, T, N, H] float, the step's new queries.
      keys, values: the cache, float [B, S, K, H] (q's dtype) or, with `bits`, packed uint8
        codes [B, S, K, H * bits // 8] (quantize.pack's split order); N % K == 0, query head
        n reads kv head n // (N // K).
      q_positions, kv_positions, q_segment_ids, kv_segment_ids: int [B, T] and [B, S]; a key is
        visible iff its segment equals the query's (an empty slot has segment -1), and
        kv_pos <= q_pos if causal, and q_pos - kv_pos < window if windowed.
      scale, soft_cap, slopes: logits scale * q.k, soft-capped, minus slope[n] * (q_pos - kv_pos).
      bits: None (float cache), 8 or 4.
      key_scale, value_scale: float32 [B, S, K, 1] per-token scales (required with bits);
      key_minimum, value_minimum: the same for asymmetric codes (None = symmetric).
      backend: "auto", "tpu", "gpu" or "xla" (see the module docstring).
      block_kv, num_splits: keys per block and the number of splits (kernel defaults if None;
        ignored by "xla").
      interpret: Pallas interpret mode for the kernels; None = unless on their own platform.
    """
    _check(locals())
    quantized = dict(key_scale=key_scale, key_minimum=key_minimum)
    quantized.update(value_scale=value_scale, value_minimum=value_minimum)
    mask = dict(q_positions=q_positions, kv_positions=kv_positions)
    mask.update(q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids)
    mask = {name: x.astype(jnp.int32) for name, x in mask.items()}
    logits = dict(causal=bool(causal), window=window, scale=float(scale), soft_cap=soft_cap)

    def xla(q, keys, values, mask, quantized, slopes):
        return reference_decode(
            q, keys, values, **mask, **quantized, **logits, bits=bits, slopes=slopes
        )

    def kernel(name, q, keys, values, mask, quantized, slopes):
        static = dict(logits=logits, bits=bits, blocks=(block_kv, num_splits))
        return _run_kernel(
            KERNELS[name], interpret, q, keys, values, mask, quantized, slopes, **static
        )

    args = (q, keys, values, mask, quantized, slopes)
    if backend == "xla":
        return xla(*args)
    if backend != "auto":
        return kernel(backend, *args)
    # A kernel whose rules reject these shapes (say a head width Triton cannot tile) gives way;
    # `bits` and the other Python values stay out of the (traced) branch arguments.
    branches = {
        KERNELS[name].platform: xla
        if _rejects(name, keys, block_kv, num_splits)
        else functools.partial(kernel, name)
        for name in KERNELS
    }
    return lax.platform_dependent(*args, **branches, default=xla)


def _rejects(name, keys, block_kv, num_splits) -> bool:
    b, s, k, w = keys.shape
    try:
        KERNELS[name].plan(s, w, block_kv, num_splits, batch=b, kv_heads=k)
    except ValueError:
        return True
    return False


def _run_kernel(
    backend, interpret, q, keys, values, mask, quantized, slopes, *, logits, bits, blocks
):
    b, t, n, h = q.shape
    _, s, kv_heads, width = keys.shape
    block_kv, num_splits = backend.plan(s, width, *blocks, batch=b, kv_heads=kv_heads)
    splits, per_split = plan_splits(s, block_kv, num_splits)
    groups = n // kv_heads
    decode = Decode(
        logits=Problem(
            **logits,
            has_alibi=slopes is not None,
            block_q=groups * t,
            block_kv=block_kv,
            num_groups=groups,
        ),
        bits=bits,
        key_minimum=quantized["key_minimum"] is not None,
        value_minimum=quantized["value_minimum"] is not None,
        kv_len=s,
        block_kv=block_kv,
        num_splits=splits,
        blocks_per_split=per_split,
        num_kv_heads=kv_heads,
    )
    rows, padded_rows = groups * t, backend.rows(groups * t)
    # q [B, T, N, H] -> [B, K, parts, R, W]: row r = g * T + t, part p = elements [p*W, (p+1)*W)
    q_rows = split_heads(q, kv_heads).reshape(b, kv_heads, rows, decode.parts, width)
    q_rows = pad_axis(q_rows.transpose(0, 1, 3, 2, 4), 3, padded_rows, 0)
    q_pos, q_seg = (
        pad_axis(jnp.tile(mask[name], (1, groups)), 1, padded_rows)
        for name in ("q_positions", "q_segment_ids")
    )
    hidden = jnp.min(mask["q_segment_ids"]) - 1  # a segment no query has: padded keys
    kv_pos = pad_axis(mask["kv_positions"], 1, decode.padded_len, 0)
    kv_seg = pad_axis(mask["kv_segment_ids"], 1, decode.padded_len, hidden)
    if slopes is not None:  # slope of row r of kv head k: slopes[k * G + r // T]
        slopes = jnp.repeat(slopes.astype(jnp.float32).reshape(kv_heads, groups), t, axis=1)
        slopes = pad_axis(slopes, 1, padded_rows, 0)
    stats = tuple(
        quantized[name] for name in ("key_scale", "key_minimum", "value_scale", "value_minimum")
    )
    stats = tuple(None if x is None else x.astype(jnp.float32) for x in stats)
    live = live_blocks(decode, q_pos, q_seg, kv_pos, kv_seg)
    acc, m, l = dispatch(
        backend,
        interpret,
        functools.partial(backend.kernel, decode),
        q_rows,
        keys,
        values,
        q_pos,
        q_seg,
        kv_pos,
        kv_seg,
        stats,
        slopes,
        live,
    )
    out = merge(acc[..., :rows, :], m[..., :rows], l[..., :rows])  # [B, K, parts, R, W]
    out = out.transpose(0, 1, 3, 2, 4).reshape(b, kv_heads, groups, t, h)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)


def _check(args) -> None:
    """ValueError naming the argument, the value and what was expected; before any tracing."""
    q, keys, values, bits = args["q"], args["keys"], args["values"], args["bits"]
    if args["backend"] not in BACKENDS:
        raise ValueError(f"backend={args['backend']!r}: expected one of {BACKENDS}")
    if getattr(q, "ndim", None) != 4 or not jnp.issubdtype(q.dtype, jnp.floating):
        raise ValueError(f"q {_describe(q)}: expected a float [B, T, N, H] array")
    b, t, n, h = q.shape
    if bits is not None and (isinstance(bits, bool) or bits not in BITS):
        raise ValueError(f"bits={bits!r}: expected None (a float cache) or one of {BITS}")
    width = h if bits is None else h * bits // 8
    dtype = q.dtype if bits is None else jnp.uint8
    for name, x in (("keys", keys), ("values", values)):
        if getattr(x, "ndim", None) != 4 or x.dtype != dtype:
            raise ValueError(
                f"{name} {_describe(x)}: expected a {jnp.dtype(dtype).name} "
                f"[B, S, K, {width}] array (bits={bits})"
            )
        if x.shape[0] != b or x.shape[3] != width or x.shape != keys.shape:
            raise ValueError(
                f"{name} {_describe(x)}: expected [B={b}, S, K, {width}] "
                f"(head_dim={h}, bits={bits}), equal for keys and values"
            )
    s, kv_heads = keys.shape[1], keys.shape[2]
    if s < 1 or kv_heads < 1 or n % kv_heads:
        raise ValueError(f"keys {_describe(keys)}: expected S >= 1 and kv heads dividing N={n}")
    if bits is not None and h * bits % 8:
        raise ValueError(f"q head_dim={h}: expected a multiple of {8 // bits} for bits={bits}")
    for name, length in (
        ("q_positions", t),
        ("q_segment_ids", t),
        ("kv_positions", s),
        ("kv_segment_ids", s),
    ):
        x = args[name]
        if getattr(x, "shape", None) != (b, length) or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} {_describe(x)}: expected int [B, len] = {(b, length)}")
    for name in ("key_scale", "key_minimum", "value_scale", "value_minimum"):
        x, needed = args[name], bits is not None and name.endswith("scale")
        if x is None and needed:
            raise ValueError(f"{name}=None: required with bits={bits} (float32 [B, S, K, 1])")
        if x is not None and bits is None:
            raise ValueError(f"{name} given with bits=None: scales belong to a quantised cache")
        if x is not None and (
            getattr(x, "shape", None) != (b, s, kv_heads, 1)
            or not jnp.issubdtype(x.dtype, jnp.floating)
        ):
            raise ValueError(
                f"{name} {_describe(x)}: expected float [B, S, K, 1] = {(b, s, kv_heads, 1)}"
            )
    slopes = args["slopes"]
    if slopes is not None and getattr(slopes, "shape", None) != (n,):
        raise ValueError(f"slopes {_describe(slopes)}: expected [num_heads] = ({n},)")
    if not _real(args["scale"]) or not math.isfinite(args["scale"]):
        raise ValueError(f"scale={args['scale']!r}: expected a finite Python float")
    cap = args["soft_cap"]
    if cap is not None and (not _real(cap) or not math.isfinite(cap) or cap <= 0):
        raise ValueError(f"soft_cap={cap!r}: expected None or a finite float > 0")
    for name in ("window", "block_kv", "num_splits"):
        x = args[name]
        if x is not None and (not isinstance(x, numbers.Integral) or isinstance(x, bool) or x < 1):
            raise ValueError(f"{name}={x!r}: expected None or an int >= 1")


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _describe(x) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__}" if shape is None else f"{tuple(shape)} {x.dtype}"
