"""Context parallelism: attention over a sequence sharded across one mesh axis.

`context_parallel_attention` takes global q [B, T, N, H], k, v [B, S, K, H] (and the mask's
positions / segment ids [B, len]) whose length dimension is sharded over `axis_name`, and runs
inside `jax.shard_map` (manual over that axis only; batch and head sharding stay automatic):

  ring        K/V chunks (with their positions and segment ids) travel around the axis with
              `ppermute`; each device attends its queries to the chunk it holds with the local
              implementation's (out, lse) form and merges the partial results by log-sum-exp in
              float32. The backward pass (`jax.custom_vjp`) is a second ring: dK/dV accumulators
              travel with their chunk and arrive home after n hops. Memory per device is O(L/n).
              A step whose chunk the mask hides entirely (causal beyond the diagonal, beyond a
              sliding window, other documents) is skipped with `lax.cond` on per-chunk position and
              segment ranges; inside a step the local implementation skips empty tiles as usual.
              (K/V still make all n hops: skipping saves compute, not communication.)
  all_gather  K/V (cheap with GQA) and their positions / segment ids are gathered, and each device
              attends its queries to the whole sequence with `attention()`; JAX's autodiff turns
              the gather into a reduce-scatter of dK/dV. K/V memory per device is O(L).

Masks are defined on positions, so attention needs no knowledge of how tokens were laid out over
devices: `reorder_for_context_parallel` permutes a batch once (in the data pipeline) into one of
LAYOUTS, and positions travel with the tokens.
  contiguous  device d holds tokens [d L/n, (d+1) L/n): causal work grows with d (2n-1 : 1).
  zigzag      the sequence is cut into 2n chunks; device d holds chunks d and 2n-1-d (balanced).
  striped     device d holds tokens d, d+n, d+2n, ... (balanced; no tile is skipped).
"""

from __future__ import annotations

import dataclasses
import functools
from numbers import Integral

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from longctx_jax.attention.api import IMPLEMENTATIONS, _prepare, attention
from longctx_jax.attention.blockwise import (
    EMPTY,
    FULL,
    blockwise_backward,
    blockwise_forward,
    classify_tiles,
)
from longctx_jax.attention.mask import AttentionMask, ResolvedMask
from longctx_jax.attention.pallas import pallas_backward, pallas_forward

STRATEGIES = ("ring", "all_gather")
LAYOUTS = ("contiguous", "zigzag", "striped")

# Local implementations with an (out, lse) forward and a backward from whole-row statistics: what
# one ring step needs. forward(q, k, v, mask, *, scale, soft_cap, slopes) -> (out, lse [B, T, N]);
# backward(q, k, v, mask, out, lse, d_out, *, ...) -> float32 (dq, dk, dv, d_slopes).
RING_IMPLEMENTATIONS = {
    "blockwise": (blockwise_forward, blockwise_backward),
    **{
        name: (functools.partial(pallas_forward, name), functools.partial(pallas_backward, name))
        for name in ("pallas_tpu", "pallas_gpu")
    },
}


@dataclasses.dataclass(frozen=True)
class _Static:
    """Trace-time constants of one context-parallel call."""

    axis_name: str
    num_shards: int
    causal: bool
    window: int | None
    scale: float
    soft_cap: float | None
    impl: str


def context_parallel_attention(
    q,
    k,
    v,
    *,
    mask: AttentionMask | None = None,
    mesh,
    axis_name: str = "sequence",
    strategy: str = "ring",
    impl: str = "blockwise",
    scale: float | None = None,
    logits_soft_cap: float | None = None,
    alibi_slopes=None,
):
    """`attention()` over a sequence sharded along mesh axis `axis_name`; see module docstring.

    Args:
      q: [batch, q_len, num_heads, head_dim], q_len sharded over `axis_name`.
      k, v: [batch, kv_len, num_kv_heads, head_dim], kv_len sharded the same way.
      mask: an `AttentionMask`; its [batch, len] positions and segment ids are sharded like q / k.
      mesh: a `jax.sharding.Mesh` or `AbstractMesh` with an axis `axis_name`.
      strategy: "ring" | "all_gather".
      impl: the local implementation: for "ring" one of RING_IMPLEMENTATIONS (or "auto"), for
        "all_gather" any `attention()` implementation.
      scale, logits_soft_cap, alibi_slopes: as in `attention()`.

    Returns [batch, q_len, num_heads, head_dim] in q's dtype, sharded like q.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: expected one of {STRATEGIES}")
    axis_names = tuple(getattr(mesh, "axis_names", ()))
    if axis_name not in axis_names:
        raise ValueError(f"axis_name={axis_name!r}: not an axis of the mesh (axes {axis_names})")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")
    if strategy == "ring" and impl == "auto":
        impl = "blockwise"  # the local implementation with an (out, lse) form on every backend
    if strategy == "ring" and impl not in RING_IMPLEMENTATIONS:
        raise ValueError(
            f"impl={impl!r}: strategy='ring' needs an implementation with an (out, lse) form, "
            f"one of {tuple(RING_IMPLEMENTATIONS)}; strategy='all_gather' takes any of "
            f"{IMPLEMENTATIONS}"
        )
    resolved, scale = _prepare(q, k, v, mask, scale, logits_soft_cap, alibi_slopes)
    n = mesh.shape[axis_name]
    for name, length in (("q_len", q.shape[1]), ("kv_len", k.shape[1])):
        if length % n:
            raise ValueError(
                f"{name}={length}: expected a multiple of the {n} devices on mesh axis "
                f"{axis_name!r}"
            )
    static = _Static(axis_name, n, resolved.causal, resolved.window, scale, logits_soft_cap, impl)
    per_device = _ring if strategy == "ring" else _gathered
    seq = P(None, axis_name)
    sharded = jax.shard_map(
        functools.partial(per_device, static),
        mesh=mesh,
        in_specs=(seq, seq, seq, P(), seq, seq, seq, seq),
        out_specs=seq,
        axis_names={axis_name},
        check_vma=False,
    )
    return sharded(
        q,
        k,
        v,
        alibi_slopes,
        resolved.q_positions,
        resolved.q_segment_ids,
        resolved.kv_positions,
        resolved.kv_segment_ids,
    )


def _gathered(static: _Static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg):
    """all_gather strategy, per device: local queries against every key."""
    gather = functools.partial(lax.all_gather, axis_name=static.axis_name, axis=1, tiled=True)
    mask = AttentionMask(
        causal=static.causal,
        window=static.window,
        q_segment_ids=q_seg,
        kv_segment_ids=gather(kv_seg),
        q_positions=q_pos,
        kv_positions=gather(kv_pos),
    )
    return attention(
        q,
        gather(k),
        gather(v),
        mask=mask,
        impl=static.impl,
        scale=static.scale,
        logits_soft_cap=static.soft_cap,
        alibi_slopes=slopes,
    )


def _chunk_visible(static: _Static, q_pos, q_seg, kv_pos, kv_seg):
    """Whether any query of this shard sees any key of this chunk (per-chunk ranges)."""
    kv_len = kv_pos.shape[1]
    tile = classify_tiles(
        static.causal, static.window, q_pos[None], q_seg[None], kv_pos[None], kv_seg[None],
        kv_len, kv_len,
    )  # fmt: skip
    return tile[0, 0] != EMPTY


def _rotate(static: _Static, tree):
    """Sends every leaf to the next device on the ring (d -> d + 1)."""
    n = static.num_shards
    perm = [(d, (d + 1) % n) for d in range(n)]
    return jax.tree.map(lambda x: lax.ppermute(x, static.axis_name, perm), tree)


def _local_kwargs(static: _Static, slopes):
    return dict(scale=static.scale, soft_cap=static.soft_cap, slopes=slopes)


def _ring_forward(static: _Static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg):
    """(out [B, T, N, H] in q's dtype, lse [B, T, N] float32) over every chunk of the ring."""
    forward, _ = RING_IMPLEMENTATIONS[static.impl]
    b, t, n, h = q.shape

    def partial(chunk):
        k_c, v_c, kp, ks = chunk
        mask = ResolvedMask(static.causal, static.window, q_pos, kp, q_seg, ks)
        return lax.cond(
            _chunk_visible(static, q_pos, q_seg, kp, ks),
            lambda: forward(q, k_c, v_c, mask, **_local_kwargs(static, slopes)),
            lambda: (jnp.zeros_like(q), jnp.full((b, t, n), -jnp.inf, jnp.float32)),
        )

    def merge(acc, part):
        """Log-sum-exp merge of two partial softmaxes over disjoint keys, float32."""
        (out_a, lse_a), (out_b, lse_b) = acc, part
        lse = jnp.logaddexp(lse_a, lse_b)
        safe = jnp.where(jnp.isneginf(lse), 0.0, lse)
        w_a, w_b = jnp.exp(lse_a - safe)[..., None], jnp.exp(lse_b - safe)[..., None]
        return out_a * w_a + out_b.astype(jnp.float32) * w_b, lse

    def step(_, carry):
        acc, chunk = carry
        return merge(acc, partial(chunk)), _rotate(static, chunk)

    acc = (jnp.zeros(q.shape, jnp.float32), jnp.full((b, t, n), -jnp.inf, jnp.float32))
    chunk = (k, v, kv_pos, kv_seg)
    acc, chunk = lax.fori_loop(0, static.num_shards - 1, step, (acc, chunk))
    out, lse = merge(acc, partial(chunk))
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(static: _Static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg):
    """ring strategy, per device: this shard's attention output."""
    out, _ = _ring_forward(static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg)
    return out


def _ring_fwd(static: _Static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg):
    out, lse = _ring_forward(static, q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg)
    return out, (q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg, out, lse)


def _ring_bwd(static: _Static, res, d_out):
    """Second ring: dQ stays home; dK/dV accumulate on the chunk they belong to, then go home."""
    q, k, v, slopes, q_pos, q_seg, kv_pos, kv_seg, out, lse = res
    _, backward = RING_IMPLEMENTATIONS[static.impl]
    f32_zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
    no_slopes = None if slopes is None else f32_zeros(slopes)

    def partial(chunk):
        k_c, v_c, kp, ks = chunk
        mask = ResolvedMask(static.causal, static.window, q_pos, kp, q_seg, ks)
        return lax.cond(
            _chunk_visible(static, q_pos, q_seg, kp, ks),
            lambda: backward(q, k_c, v_c, mask, out, lse, d_out, **_local_kwargs(static, slopes)),
            lambda: (f32_zeros(q), f32_zeros(k_c), f32_zeros(v_c), no_slopes),
        )

    def add(a, b):
        return jax.tree.map(jnp.add, a, b)

    def step(_, carry):
        dq, d_slopes, chunk, dkv = carry
        dq_c, dk_c, dv_c, ds_c = partial(chunk)
        dkv = add(dkv, (dk_c, dv_c))
        return add(dq, dq_c), add(d_slopes, ds_c), _rotate(static, chunk), _rotate(static, dkv)

    carry = (f32_zeros(q), no_slopes, (k, v, kv_pos, kv_seg), (f32_zeros(k), f32_zeros(v)))
    carry = lax.fori_loop(0, static.num_shards - 1, step, carry)
    dq, d_slopes, chunk, dkv = carry
    dq_c, dk_c, dv_c, ds_c = partial(chunk)
    dk, dv = _rotate(static, add(dkv, (dk_c, dv_c)))
    dq, d_slopes = add(dq, dq_c), add(d_slopes, ds_c)
    if d_slopes is not None:  # per device: shard_map's transpose sums it over the axis
        d_slopes = d_slopes.astype(slopes.dtype)
    grads = (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), d_slopes)
    return grads + (None, None, None, None)


_ring.defvjp(_ring_fwd, _ring_bwd)


def check_layout(length: int, num_shards: int, layout: str) -> None:
    """ValueError unless `length` tokens can be laid out over `num_shards` devices as `layout`."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, Integral) or num_shards < 1:
        raise ValueError(f"num_shards={num_shards!r}: expected a positive integer")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    chunks = 2 * num_shards if layout == "zigzag" else num_shards
    if length % chunks:
        raise ValueError(
            f"sequence length {length}: layout={layout!r} over {num_shards} shards needs a "
            f"multiple of {chunks}"
        )


def layout_permutation(length: int, num_shards: int, layout: str) -> np.ndarray:
    """perm [length]: position i of the reordered sequence holds original token perm[i]."""
    check_layout(length, num_shards, layout)
    tokens = np.arange(length)
    if layout == "contiguous":
        return tokens
    if layout == "striped":
        return tokens.reshape(length // num_shards, num_shards).T.reshape(-1)
    chunks = tokens.reshape(2 * num_shards, -1)
    pairs = [(chunks[d], chunks[2 * num_shards - 1 - d]) for d in range(num_shards)]
    return np.concatenate([c for pair in pairs for c in pair])


def reorder_for_context_parallel(
    x, num_shards: int, *, layout: str = "zigzag", axis: int = 1, inverse: bool = False
):
    """Permutes `axis` of x (numpy or jax) into `layout` over num_shards devices (or back).

    Apply it to every per-token array of a batch (tokens, targets, positions, segment ids,
    weights) before sharding `axis` over the devices; `inverse=True` restores the original order.
    """
    ndim = getattr(x, "ndim", None)
    if ndim is None or isinstance(axis, bool) or not isinstance(axis, Integral):
        raise ValueError(f"x={type(x).__name__}, axis={axis!r}: expected an array and an int axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis}: out of range for an array of shape {tuple(x.shape)}")
    perm = layout_permutation(x.shape[axis], num_shards, layout)
    if inverse:
        perm = np.argsort(perm)
    take = np.take if isinstance(x, np.ndarray) else jnp.take
    return take(x, perm, axis=axis)


def causal_work_per_shard(length: int, num_shards: int, layout: str, *, chunks_per_shard=2):
    """Causal attention work per device [num_shards] under `layout`, in (query chunk, key chunk)
    pairs: each shard is cut into `chunks_per_shard` chunks, and a pair counts 1 if every query
    sees every key, 1/2 if some do (the diagonal), 0 if none (skipped), as blockwise classifies
    its tiles."""
    positions = layout_permutation(length, num_shards, layout)
    chunk = length // (num_shards * chunks_per_shard)
    if chunk * num_shards * chunks_per_shard != length:
        raise ValueError(
            f"length={length}: expected a multiple of num_shards * chunks_per_shard = "
            f"{num_shards * chunks_per_shard}"
        )
    pos = jnp.asarray(positions.reshape(-1, 1, chunk))  # [chunks, B=1, chunk]
    seg = jnp.zeros_like(pos)
    tiles = np.asarray(classify_tiles(True, None, pos, seg, pos, seg, length, chunk))
    pair_work = np.where(tiles == FULL, 1.0, np.where(tiles == EMPTY, 0.0, 0.5))
    return pair_work.sum(1).reshape(num_shards, chunks_per_shard).sum(1)
