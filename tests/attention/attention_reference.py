"""Independent references and shared helpers for the attention tests.

Nothing here reuses the implementation's math (`logits.py`, `mask.visible`, `reference.py`): the
visibility rule, the GQA head mapping (query head n reads key/value head n // (N // K)), the soft
cap, ALiBi and "a query with no visible key outputs 0" are written out again from the contract in
DESIGN.md §2. Three references:
  * `reference_attention`: float64 numpy, explicit loops (the mask pair by pair, head by head);
  * `reference_grads`: the same function differentiated by `jax.grad` in float64 (x64 enabled);
  * `jax_nn_out_and_grads`: `jax.nn.dot_product_attention` with a boolean mask and an ALiBi bias.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import AttentionMask, attention
from longctx_jax.attention.blockwise import blockwise_attention
from longctx_jax.attention.pallas import pallas_attention

# "blockwise_tiled" calls the blockwise kernel directly with small tiles, so lengths are not
# multiples of the block (padding) and causal / windowed / packed masks skip whole tiles.
IMPLS = ("reference", "blockwise", "blockwise_tiled", "auto")
TILED_BLOCKS = (16, 32)
# Small (block_q, block_kv) for the Pallas kernels: several blocks per test length, within each
# backend's rules (TPU blocks are multiples of 128 lanes; GPU blocks are powers of two).
PALLAS_TILED = dict(pallas_tpu_tiled=(128, 128), pallas_gpu_tiled=(16, 32))

F32_RTOL = 1e-5  # max |error| relative to max |expected|, outputs and gradients
BF16_RTOL = 2e-2
# d/d alibi_slopes sums B*T*S products whose softmax-gradient factors cancel within each row, so
# float32 rounding is larger relative to the result (observed up to ~7e-5) than for dq, dk, dv.
DSLOPES_RTOL = 3e-4


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    q_len: int
    kv_len: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    window: int  # the sliding window used by masks with a window

    def __str__(self) -> str:
        return (
            f"B{self.batch}-T{self.q_len}-S{self.kv_len}-N{self.num_heads}-K{self.num_kv_heads}"
            f"-H{self.head_dim}-w{self.window}"
        )


SHAPES = (
    Shape(2, 48, 80, 8, 2, 64, window=13),  # GQA, q_len < kv_len
    Shape(1, 67, 67, 4, 1, 80, window=24),  # MQA, lengths not multiples of any block
    Shape(2, 72, 56, 2, 2, 128, window=5),  # MHA, q_len > kv_len
)

# none: mask=None. causal / window (bidirectional sliding window) / sliding (causal + window) use
# default positions. segments: packed documents, bidirectional. kv_cache: q_positions =
# S - T + arange(T), causal. combined: causal + window + segments + kv_cache offset. permuted: as
# combined, with each batch row's positions randomly permuted (masks are defined on positions).
MASK_KINDS = (
    "none",
    "causal",
    "window",
    "sliding",
    "segments",
    "kv_cache",
    "combined",
    "permuted",
)


def bf16_cases():
    """(shape, mask kind) pairs for bfloat16 tests: two by default, the rest marked slow."""
    fast = ((SHAPES[0], "causal"), (SHAPES[0], "combined"))
    return [
        pytest.param(
            shape,
            kind,
            id=f"{shape}-{kind}",
            marks=[] if (shape, kind) in fast else [pytest.mark.slow],
        )
        for shape in SHAPES
        for kind in MASK_KINDS
    ]


# ----------------------------------------------------------------------------- random inputs


def random_qkv(rng, shape: Shape, dtype=jnp.float32):
    """q [B, T, N, H], k, v [B, S, K, H] in `dtype`, and an output cotangent w (float32)."""
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    n, kh, h = shape.num_heads, shape.num_kv_heads, shape.head_dim
    q = rng.standard_normal((b, t, n, h)) * 1.5
    k = rng.standard_normal((b, s, kh, h))
    v = rng.standard_normal((b, s, kh, h))
    w = rng.standard_normal((b, t, n, h))
    return (*(jnp.asarray(x, dtype) for x in (q, k, v)), jnp.asarray(w, jnp.float32))


def segments_of(rng, positions_per_row):
    """Packed documents: per batch row, random document boundaries over the positions' range.

    `positions_per_row` is a list of int arrays (all positions used in that row, q and kv);
    returns a function mapping (row, positions) -> sorted segment ids, so q and kv agree.
    """
    cuts, offsets = [], []
    for pos in positions_per_row:
        lo, hi = int(pos.min()), int(pos.max())
        num_docs = int(rng.integers(1, 6))
        candidates = np.arange(lo + 1, hi + 1)
        size = min(num_docs - 1, len(candidates))
        cuts.append(np.sort(rng.choice(candidates, size=size, replace=False)))
        offsets.append(int(rng.integers(0, 1000)))  # ids need not start at 0

    def ids(row: int, positions):
        doc = np.searchsorted(cuts[row], positions, side="right")
        return (offsets[row] + 3 * doc).astype(np.int32)  # sorted, not contiguous

    return ids


def make_mask(kind: str, rng, shape: Shape) -> AttentionMask | None:
    """A random mask of one of MASK_KINDS for `shape` (fresh boundaries / permutations)."""
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    if kind == "none":
        return None
    if kind == "causal":
        return AttentionMask(causal=True)
    if kind == "window":
        return AttentionMask(window=shape.window)
    if kind == "sliding":
        return AttentionMask(causal=True, window=shape.window)
    q_pos = np.broadcast_to(np.arange(t), (b, t))
    kv_pos = np.broadcast_to(np.arange(s), (b, s))
    if kind == "segments":
        seg = segments_of(rng, [np.arange(max(t, s))] * b)
        return AttentionMask(
            q_segment_ids=jnp.asarray(np.stack([seg(i, q_pos[i]) for i in range(b)])),
            kv_segment_ids=jnp.asarray(np.stack([seg(i, kv_pos[i]) for i in range(b)])),
        )
    q_pos = q_pos + (s - t)
    if kind == "kv_cache":
        return AttentionMask(
            causal=True,
            q_positions=jnp.asarray(q_pos, jnp.int32),
            kv_positions=jnp.asarray(kv_pos, jnp.int32),
        )
    if kind not in ("combined", "permuted"):
        raise ValueError(f"unknown mask kind {kind!r}")
    if kind == "permuted":
        q_pos = np.stack([rng.permutation(row) for row in q_pos])
        kv_pos = np.stack([rng.permutation(row) for row in kv_pos])
    seg = segments_of(rng, [np.concatenate([q_pos[i], kv_pos[i]]) for i in range(b)])
    return AttentionMask(
        causal=True,
        window=shape.window,
        q_segment_ids=jnp.asarray(np.stack([seg(i, q_pos[i]) for i in range(b)])),
        kv_segment_ids=jnp.asarray(np.stack([seg(i, kv_pos[i]) for i in range(b)])),
        q_positions=jnp.asarray(q_pos, jnp.int32),
        kv_positions=jnp.asarray(kv_pos, jnp.int32),
    )


def grid_case(rng, shape: Shape, kind: str, dtype=jnp.float32):
    """Random (q, k, v, w, mask) for the grid tests; the mask has every array explicit."""
    q, k, v, w = random_qkv(rng, shape, dtype)
    mask = make_mask(kind, rng, shape)
    return q, k, v, w, explicit_mask(mask, shape.batch, shape.q_len, shape.kv_len)


# ----------------------------------------------------------------------------- float64 reference


def mask_arrays(mask: AttentionMask | None, b: int, t: int, s: int):
    """(causal, window, q_pos, kv_pos, q_seg, kv_seg) with the contract's defaults, numpy int64."""
    mask = AttentionMask() if mask is None else mask

    def get(value, length, default):
        if value is None:
            return np.broadcast_to(default(length), (b, length)).astype(np.int64)
        return np.asarray(value).astype(np.int64)

    zeros = lambda n: np.zeros(n, np.int64)  # noqa: E731
    return (
        bool(mask.causal),
        mask.window,
        get(mask.q_positions, t, np.arange),
        get(mask.kv_positions, s, np.arange),
        get(mask.q_segment_ids, t, zeros),
        get(mask.kv_segment_ids, s, zeros),
    )


def explicit_mask(mask: AttentionMask | None, b: int, t: int, s: int) -> AttentionMask:
    """The same mask with every array given (the defaults written out).

    Grid tests pass this to the jitted `impl_out_and_grads`, so that masks with the same static
    fields share one compilation; the defaults themselves are tested separately.
    """
    causal, window, q_pos, kv_pos, q_seg, kv_seg = mask_arrays(mask, b, t, s)
    as32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    return AttentionMask(
        causal=causal,
        window=window,
        q_segment_ids=as32(q_seg),
        kv_segment_ids=as32(kv_seg),
        q_positions=as32(q_pos),
        kv_positions=as32(kv_pos),
    )


def visibility(mask: AttentionMask | None, b: int, t: int, s: int) -> np.ndarray:
    """bool [B, T, S], built pair by pair from the rule in DESIGN.md §2."""
    causal, window, q_pos, kv_pos, q_seg, kv_seg = mask_arrays(mask, b, t, s)
    vis = np.zeros((b, t, s), bool)
    for row in range(b):
        keys = list(zip(kv_pos[row].tolist(), kv_seg[row].tolist(), strict=True))
        for i, (qp, qs) in enumerate(zip(q_pos[row].tolist(), q_seg[row].tolist(), strict=True)):
            for j, (kp, ks) in enumerate(keys):
                vis[row, i, j] = (
                    qs == ks and (not causal or kp <= qp) and (window is None or qp - kp < window)
                )
    return vis


def distances(mask: AttentionMask | None, b: int, t: int, s: int) -> np.ndarray:
    """q_pos - kv_pos, float64 [B, T, S] (what ALiBi multiplies)."""
    _, _, q_pos, kv_pos, _, _ = mask_arrays(mask, b, t, s)
    return (q_pos[:, :, None] - kv_pos[:, None, :]).astype(np.float64)


def attend(q, k, v, vis, dist, *, scale, soft_cap=None, slopes=None, xp=np):
    """(out [B, T, N, H], probs [B, N, T, S]), one head at a time; `xp` is numpy or jax.numpy."""
    num_heads, num_kv_heads = q.shape[2], k.shape[2]
    group = num_heads // num_kv_heads
    outs, probs = [], []
    for n in range(num_heads):
        kv_head = n // group
        s = scale * xp.einsum("bth,bsh->bts", q[:, :, n, :], k[:, :, kv_head, :])
        if soft_cap is not None:
            s = soft_cap * xp.tanh(s / soft_cap)
        if slopes is not None:
            s = s - slopes[n] * dist
        row_max = xp.max(xp.where(vis, s, -xp.inf), axis=-1, keepdims=True)
        row_max = xp.where(xp.isfinite(row_max), row_max, 0.0)
        e = xp.where(vis, xp.exp(xp.where(vis, s, row_max) - row_max), 0.0)
        total = xp.sum(e, axis=-1, keepdims=True)
        p = e / xp.where(total > 0, total, 1.0)  # no visible key: p = 0, so the output is 0
        probs.append(p)
        outs.append(xp.einsum("bts,bsh->bth", p, v[:, :, kv_head, :]))
    return xp.stack(outs, axis=2), xp.stack(probs, axis=1)


def _f64(x):
    return None if x is None else np.asarray(x, np.float64)


def reference_attention(q, k, v, mask=None, *, scale=None, soft_cap=None, slopes=None):
    """float64 numpy (out [B, T, N, H], probs [B, N, T, S]) of the contract."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    b, t, _, h = q.shape
    s = k.shape[1]
    return attend(
        q,
        k,
        v,
        visibility(mask, b, t, s),
        distances(mask, b, t, s),
        scale=1.0 / math.sqrt(h) if scale is None else scale,
        soft_cap=soft_cap,
        slopes=_f64(slopes),
    )


@functools.partial(jax.jit, static_argnames=("scale", "soft_cap"))
def _grads64(q, k, v, slopes, w, vis, dist, *, scale, soft_cap):
    def loss(q, k, v, slopes):
        out, _ = attend(q, k, v, vis, dist, scale=scale, soft_cap=soft_cap, slopes=slopes, xp=jnp)
        return jnp.sum(w * out)

    return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, slopes)


def reference_grads(q, k, v, w, mask=None, *, scale=None, soft_cap=None, slopes=None):
    """float64 (dq, dk, dv, dslopes) of sum(w * out), by jax.grad of `attend` with x64 enabled."""
    b, t, _, h = q.shape
    s = k.shape[1]
    vis, dist = visibility(mask, b, t, s), distances(mask, b, t, s)
    scale = 1.0 / math.sqrt(h) if scale is None else float(scale)
    with jax.enable_x64(True):
        as64 = lambda x: None if x is None else jnp.asarray(_f64(x))  # noqa: E731
        grads = _grads64(
            *(as64(x) for x in (q, k, v, slopes, w)),
            jnp.asarray(vis),
            as64(dist),
            scale=scale,
            soft_cap=soft_cap,
        )
        return tuple(None if g is None else np.asarray(g) for g in grads)


def reference_subset(q, k, v, w, vis_per_head, dist, probs=False):
    """float64 dense attention where head n sees vis_per_head[n]; (out, grads) or (out, probs)."""
    scale = 1.0 / np.sqrt(q.shape[-1])
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    outs, all_probs = [], []
    kh = k.shape[2]
    group = q.shape[2] // kh
    for n, vis in enumerate(vis_per_head):
        head = slice(n, n + 1)
        kv = slice(n // group, n // group + 1)
        o, p = attend(
            f64(q)[:, :, head], f64(k)[:, :, kv], f64(v)[:, :, kv], vis, dist, scale=scale
        )
        outs.append(o)
        all_probs.append(p)
    if probs:
        return np.concatenate(outs, 2), np.concatenate(all_probs, 1)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for n, vis in enumerate(vis_per_head):
        kv = n // group
        with jax.enable_x64(True):
            g = _grads64(
                *(jnp.asarray(f64(x)) for x in (q[:, :, n : n + 1], k[:, :, kv : kv + 1])),
                jnp.asarray(f64(v[:, :, kv : kv + 1])),
                None,
                jnp.asarray(f64(w[:, :, n : n + 1])),
                jnp.asarray(vis),
                jnp.asarray(dist),
                scale=float(scale),
                soft_cap=None,
            )
        dq[:, :, n] += np.asarray(g[0])[:, :, 0]
        dk[:, :, kv] += np.asarray(g[1])[:, :, 0]
        dv[:, :, kv] += np.asarray(g[2])[:, :, 0]
    return np.concatenate(outs, 2), (dq, dk, dv)


# ----------------------------------------------------------------------------- jax.nn reference


@functools.partial(jax.jit, static_argnames=("scale",))
def _jax_nn_out_and_grads(q, k, v, w, vis, bias, *, scale):
    group = q.shape[2] // k.shape[2]

    def f(q, k, v):
        # K/V heads repeated here (query head n reads kv head n // group), so jax.nn does plain MHA.
        k_rep, v_rep = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        return jax.nn.dot_product_attention(q, k_rep, v_rep, bias=bias, mask=vis, scale=scale)

    out, vjp = jax.vjp(f, q, k, v)
    return out, vjp(w.astype(out.dtype))


def jax_nn_out_and_grads(q, k, v, w, mask=None, *, scale=None, slopes=None):
    """jax.nn.dot_product_attention: (out, (dq, dk, dv), rows [B, T] that see a key).

    jax.nn gives a row with no visible key a uniform average instead of 0, so the cotangent is
    zeroed on those rows here: compare outputs on `rows` only, and gradients against an
    implementation differentiated with the same `w * rows`.
    """
    b, t, n, h = q.shape
    s = k.shape[1]
    vis = visibility(mask, b, t, s)
    rows = vis.any(-1)
    bias = None
    if slopes is not None:
        slopes64 = _f64(slopes)[None, :, None, None]
        bias = jnp.asarray(-slopes64 * distances(mask, b, t, s)[:, None], jnp.float32)
    w = w * jnp.asarray(rows[:, :, None, None], w.dtype)
    scale = 1.0 / math.sqrt(h) if scale is None else float(scale)
    out, grads = _jax_nn_out_and_grads(q, k, v, w, jnp.asarray(vis[:, None]), bias, scale=scale)
    return out, grads, rows


# ----------------------------------------------------------------------------- implementations


def call_impl(impl, q, k, v, mask=None, *, scale=None, soft_cap=None, slopes=None, blocks=None):
    """One implementation; "blockwise_tiled" = the blockwise kernel with small `blocks`, and
    "pallas_tpu_tiled" / "pallas_gpu_tiled" the Pallas kernels with small `blocks`."""
    if impl in PALLAS_TILED:
        b, t, _, h = q.shape
        block_q, block_kv = PALLAS_TILED[impl] if blocks is None else blocks
        resolved = (AttentionMask() if mask is None else mask).resolved(b, t, k.shape[1])
        return pallas_attention(
            impl.removesuffix("_tiled"),
            q,
            k,
            v,
            resolved,
            scale=1.0 / math.sqrt(h) if scale is None else scale,
            soft_cap=soft_cap,
            slopes=slopes,
            block_q=block_q,
            block_kv=block_kv,
        )
    if impl == "blockwise_tiled":
        b, t, _, h = q.shape
        block_q, block_kv = TILED_BLOCKS if blocks is None else blocks
        resolved = (AttentionMask() if mask is None else mask).resolved(b, t, k.shape[1])
        return blockwise_attention(
            q,
            k,
            v,
            resolved,
            scale=1.0 / math.sqrt(h) if scale is None else scale,
            soft_cap=soft_cap,
            slopes=slopes,
            block_q=block_q,
            block_kv=block_kv,
        )
    return attention(
        q, k, v, mask=mask, impl=impl, scale=scale, logits_soft_cap=soft_cap, alibi_slopes=slopes
    )


@functools.partial(jax.jit, static_argnames=("impl", "scale", "soft_cap", "blocks"))
def impl_out_and_grads(
    q, k, v, w, mask=None, slopes=None, *, impl, scale=None, soft_cap=None, blocks=None
):
    """(out, (dq, dk, dv, dslopes)) of one implementation; the gradient is that of sum(w * out).

    Jitted with the mask as an argument, so every test with the same shapes and static mask
    fields (causal, window) shares one compilation.
    """

    def f(q, k, v, slopes):
        return call_impl(
            impl, q, k, v, mask, scale=scale, soft_cap=soft_cap, slopes=slopes, blocks=blocks
        )

    out, vjp = jax.vjp(f, q, k, v, slopes)
    return out, vjp(w.astype(out.dtype))


# ----------------------------------------------------------------------------- comparisons


def assert_close(actual, expected, rtol: float, what: str) -> None:
    """max |actual - expected| <= rtol * max |expected| and all finite; `what` names the case."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), (
        f"{what}: non-finite values at {np.argwhere(~np.isfinite(actual))[:5]}"
    )
    err = np.abs(actual - expected)
    bound = rtol * np.abs(expected).max()
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert err.max(initial=0.0) <= bound, (
        f"{what}: max |error| {err.max():.3g} at index {worst} (got {actual[worst]:.6g}, expected "
        f"{expected[worst]:.6g}) > {rtol:g} * max |expected| = {bound:.3g}"
    )


def assert_out_and_grads_close(got, want, rtol: float, what: str) -> None:
    """got, want = (out, (dq, dk, dv)): each within `rtol` (see `assert_close`)."""
    assert_close(got[0], want[0], rtol, f"{what} output")
    for name, g, w in zip(("dq", "dk", "dv"), got[1], want[1], strict=True):
        assert_close(g, w, rtol, f"{what} {name}")


def assert_equals_dense(out, grads, q, k, v, w, mask, what: str) -> None:
    """Output and gradients equal dense attention under `mask`: the float64 reference, and the
    output also `attention(impl="reference")`."""
    want = (reference_attention(q, k, v, mask)[0], reference_grads(q, k, v, w, mask)[:3])
    assert_out_and_grads_close((out, grads), want, F32_RTOL, f"{what} vs float64")
    dense = attention(q, k, v, mask=mask, impl="reference")
    assert_close(out, dense, F32_RTOL, f"{what} output vs attention(impl='reference')")
