"""Sparse attention: every query attends only to the keys it selected (gather-based, pure JAX).

Selections name keys, or whole key blocks (block_size > 1: each index fetches a contiguous slice
of block_size keys, which a CPU or GPU gathers far faster than as many single rows).

The selection [B, T, k] is shared by all heads (DSA shares it over MQA) or given per KV head
[B, T, K, k]; either way the query heads of one KV head (GQA group) share it, so a group's keys
and values are gathered once. Queries are processed `block_q` at a time under `jax.checkpoint`, so
the gathered keys and values ([block_q, k] per head) are temporaries recomputed in the backward
pass: memory O(T * k) for the indices, O(block_q * k * head_dim) for the rest.

A slot counts iff it is `valid` and the `AttentionMask` shows that key to the query; the softmax
runs over the counted slots in float32. A query with no counted slot outputs 0 with 0 gradients,
as `attention()` does. Valid slots must hold distinct indices (a repeated key would count twice).

impl="pallas_tpu" runs the forward pass as the Pallas TPU kernel
(pallas_kernels/sparse_attention: selected rows are copied HBM -> VMEM, never gathered in HBM;
interpret mode off TPU) and differentiates through this gather path (a `jax.custom_vjp`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.mask import AttentionMask, ResolvedMask, visible
from pallas_kernels.sparse_attention import tpu as sparse_tpu

DEFAULT_BLOCK_Q = 64
IMPLEMENTATIONS = ("gather", "pallas_tpu")


def sparse_attention(
    q,
    k,
    v,
    indices,
    *,
    mask=None,
    valid=None,
    scale=None,
    block_size: int = 1,
    block_q: int = DEFAULT_BLOCK_Q,
    impl: str = "gather",
):
    """Attention of q [B, T, N, H] over the selected keys of k, v [B, S, K, H].

    Args:
      indices: int [B, T, n] (shared by all heads) or [B, T, K, n] (per KV head): selected keys,
        or with block_size > 1 selected key blocks (block j = keys [j * block_size, (j + 1) *
        block_size), gathered as contiguous slices: far cheaper than token gathers).
      mask: an `AttentionMask`, applied to the selected keys; None = every selected key visible.
      valid: bool, indices' shape; False slots are ignored. None = all slots valid.
      scale: logit scale, default 1 / sqrt(head_dim).
      impl: "gather" (pure JAX) or "pallas_tpu" (token selections only; see module docstring).
    Returns [B, T, N, H] in q's dtype.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLEMENTATIONS}")
    if impl == "pallas_tpu" and block_size != 1:
        raise ValueError(f"block_size={block_size!r}: impl='pallas_tpu' takes token selections")
    idx, ok, resolved, scale = _prepare(q, k, v, indices, mask, valid, scale, block_size)
    if impl == "pallas_tpu":
        return _pallas_attention(q, k, v, idx, ok, resolved, scale, block_q)
    return _gather_attention(q, k, v, idx, ok, resolved, scale, block_size, block_q)


def _gather_attention(q, k, v, idx, ok, resolved, scale, block_size, block_q):
    keys = _KeyBlocks.of(k, v, resolved, block_size)

    @jax.checkpoint
    def one_block(q_blk, idx_blk, ok_blk, q_pos, q_seg):
        p_BTKGn, v_sel = _block_probs(q_blk, keys, idx_blk, ok_blk, q_pos, q_seg, resolved, scale)
        out = jnp.einsum(
            "btkgn,btknh->btkgh", p_BTKGn.astype(v.dtype), v_sel, preferred_element_type=jnp.float32
        )
        return out.astype(q.dtype)

    out_BTKGH = _map_query_blocks(one_block, q, idx, ok, resolved, block_q)
    return out_BTKGH.reshape(q.shape)


def _pallas_attention(q, k, v, idx, ok, resolved, scale, block_q):
    """The Pallas kernel's forward; gradients from the gather path (same function)."""

    @jax.custom_vjp
    def attend(q, k, v, idx, ok, resolved):
        b = q.shape[0]
        batch = jnp.arange(b)[:, None, None, None]
        seen = visible(
            resolved.causal,
            resolved.window,
            resolved.q_positions[:, :, None, None],
            resolved.kv_positions[batch, idx],
            resolved.q_segment_ids[:, :, None, None],
            resolved.kv_segment_ids[batch, idx],
        )
        counted = jnp.where(ok & seen, idx, -1)  # the kernel skips slots holding -1
        return sparse_tpu.sparse_attention(q, k, v, counted, scale=scale)

    def attend_bwd(residuals, d_out):
        q, k, v, idx, ok, resolved = residuals
        gather = lambda q, k, v: _gather_attention(q, k, v, idx, ok, resolved, scale, 1, block_q)  # noqa: E731
        return (*jax.vjp(gather, q, k, v)[1](d_out), None, None, None)

    attend.defvjp(lambda *args: (attend(*args), args), attend_bwd)
    return attend(q, k, v, idx, ok, resolved)


def sparse_attention_weights(q, k, indices, *, mask=None, valid=None, scale=None, block_size=1):
    """Probabilities [B, N, T, n * block_size] (float32) over each query's selected keys, in slot
    order (block j's keys in order); 0 where a key does not count. Per KV head selections give
    each head its own slots."""
    idx, ok, resolved, scale = _prepare(q, k, k, indices, mask, valid, scale, block_size)
    q_pos, q_seg = resolved.q_positions, resolved.q_segment_ids
    keys = _KeyBlocks.of(k, k, resolved, block_size)
    p_BTKGn, _ = _block_probs(
        _group_heads(q, k.shape[2]), keys, idx, ok, q_pos, q_seg, resolved, scale
    )
    b, t, kh, g, n = p_BTKGn.shape
    return p_BTKGn.transpose(0, 2, 3, 1, 4).reshape(b, kh * g, t, n)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _KeyBlocks:
    """Keys, values, positions and segment ids laid out [B, K, S / block, block, ...] once, so
    that one gather index fetches a whole block (padding keys are marked by `in_range`)."""

    k: jax.Array  # [B, K, nS, bs, H]
    v: jax.Array
    pos: jax.Array  # [B, nS, bs]
    seg: jax.Array
    in_range: jax.Array  # [nS, bs]

    @staticmethod
    def of(k, v, mask: ResolvedMask, block_size: int) -> _KeyBlocks:
        b, s, kh, h = k.shape
        n = -(-s // block_size)
        pad = n * block_size - s

        def blocks(x):  # [B, S, ...] -> [B, nS, bs, ...]
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
            return x.reshape((b, n, block_size) + x.shape[2:])

        heads_first = lambda x: blocks(x).transpose(0, 3, 1, 2, 4)  # noqa: E731
        in_range = (jnp.arange(n * block_size) < s).reshape(n, block_size)
        return _KeyBlocks(
            heads_first(k),
            heads_first(v),
            blocks(mask.kv_positions),
            blocks(mask.kv_segment_ids),
            in_range,
        )

    def gather(self, idx_BTKn):
        """(k, v [B, T, K, n * bs, H], positions, segment ids, in_range [B, T, K, n * bs])."""
        b, t, kh, n = idx_BTKn.shape
        bs = self.in_range.shape[1]
        batch = jnp.arange(b)[:, None, None, None]
        head = jnp.arange(kh)[None, None, :, None]
        flat = lambda x: x.reshape((b, t, kh, n * bs) + x.shape[5:])  # noqa: E731
        return (
            flat(self.k[batch, head, idx_BTKn]),
            flat(self.v[batch, head, idx_BTKn]),
            flat(self.pos[batch, idx_BTKn]),
            flat(self.seg[batch, idx_BTKn]),
            flat(jnp.broadcast_to(self.in_range[idx_BTKn], (b, t, kh, n, bs))),
        )


def _group_heads(q_BTNH, num_kv_heads: int):
    """[B, T, N, H] -> [B, T, K, G, H] (query head n = k * G + g), a free reshape: with batch
    axes (B, T, K) leading in both operands, the per-query matmuls need no transposes."""
    b, t, n, h = q_BTNH.shape
    return q_BTNH.reshape(b, t, num_kv_heads, n // num_kv_heads, h)


def _block_probs(q_BTKGH, keys: _KeyBlocks, idx_BTKn, ok_BTKn, q_pos, q_seg, mask, scale):
    """Probabilities [B, T, K, G, n * bs] (float32) and gathered values [B, T, K, n * bs, H] of a
    block of queries."""
    k_sel, v_sel, kv_pos, kv_seg, in_range = keys.gather(idx_BTKn)
    logits = jnp.einsum(
        "btkgh,btknh->btkgn", q_BTKGH, k_sel, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
    seen = visible(
        mask.causal, mask.window, q_pos[:, :, None, None], kv_pos, q_seg[:, :, None, None], kv_seg
    )
    bs = in_range.shape[-1] // idx_BTKn.shape[-1]
    ok = jnp.repeat(ok_BTKn, bs, axis=-1) & seen & in_range
    ok_BTKn = ok[:, :, :, None]  # [B, T, K, 1, n * bs]
    logits = jnp.where(ok_BTKn, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    p = jnp.where(ok_BTKn, jnp.exp(logits - row_max), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(denom > 0, denom, 1.0), v_sel


def _map_query_blocks(fn, q, indices_BTKk, valid_BTKk, mask: ResolvedMask, block_q: int):
    """Runs fn over query blocks (padding T to a multiple of block_q); returns [B, T, K, G, H]."""
    b, t, _, _ = q.shape
    bq = min(block_q, t)
    n = -(-t // bq)
    pad = n * bq - t

    def blocks(x, axis):
        x = jnp.pad(x, [(0, pad) if a == axis else (0, 0) for a in range(x.ndim)])
        shape = x.shape[:axis] + (n, bq) + x.shape[axis + 1 :]
        return jnp.moveaxis(x.reshape(shape), axis, 0)

    q_blk = blocks(_group_heads(q, indices_BTKk.shape[2]), 1)
    args = (
        q_blk,
        blocks(indices_BTKk, 1),
        blocks(valid_BTKk, 1),
        blocks(mask.q_positions, 1),
        blocks(mask.q_segment_ids, 1),
    )
    out = lax.map(lambda a: fn(*a), args)  # [n, B, bq, K, G, H]
    out = jnp.moveaxis(out, 0, 1)
    return out.reshape((b, n * bq) + out.shape[3:])[:, :t]


def _prepare(q, k, v, indices, mask, valid, scale, block_size):
    """Validates the arguments; returns (indices [B, T, K, n], valid, resolved mask, scale)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"{name} has shape {getattr(x, 'shape', None)}, dtype {getattr(x, 'dtype', None)}: "
                "expected a floating [batch, len, heads, head_dim] array"
            )
    b, t, n, h = q.shape
    _, s, kh, _ = k.shape
    if k.shape[0] != b or k.shape[3] != h or v.shape != k.shape or n % kh:
        raise ValueError(
            f"q {q.shape}, k {k.shape}, v {v.shape}: expected k and v [batch, kv_len, "
            "num_kv_heads, head_dim] with q's batch and head_dim, num_heads % num_kv_heads == 0"
        )
    idx_shape = tuple(getattr(indices, "shape", ()))
    if (
        idx_shape[:2] != (b, t)
        or len(idx_shape) not in (3, 4)
        or (len(idx_shape) == 4 and idx_shape[2] != kh)
    ):
        raise ValueError(
            f"indices has shape {idx_shape}: expected [batch, q_len, k] = ({b}, {t}, k) or "
            f"[batch, q_len, num_kv_heads, k] = ({b}, {t}, {kh}, k)"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"indices has dtype {indices.dtype}: expected an integer dtype")
    if valid is not None and tuple(getattr(valid, "shape", ())) != idx_shape:
        raise ValueError(
            f"valid has shape {tuple(getattr(valid, 'shape', ()))}: expected indices' {idx_shape}"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    mask = AttentionMask() if mask is None else mask
    if not isinstance(mask, AttentionMask):
        raise ValueError(f"mask={type(mask).__name__}: expected an AttentionMask or None")
    mask.validate(b, t, s)
    valid = jnp.ones(idx_shape, bool) if valid is None else jnp.asarray(valid, bool)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: expected a positive int")
    n_blocks = -(-s // block_size)
    in_range = (indices >= 0) & (indices < n_blocks)
    indices = jnp.clip(indices, 0, n_blocks - 1).astype(jnp.int32)
    valid = valid & in_range
    if len(idx_shape) == 3:
        indices = jnp.broadcast_to(indices[:, :, None], (b, t, kh, idx_shape[2]))
        valid = jnp.broadcast_to(valid[:, :, None], (b, t, kh, idx_shape[2]))
    return indices, valid, mask.resolved(b, t, s), float(scale)
