"""Block-sparse attention: each aligned block of `block_size` queries attends to the keys of the
key blocks selected for it (the block granularity of learned top-k attention).

A selection names key blocks (key block j = keys [j * bs, (j + 1) * bs)), one row of n per query
block (query block a = queries [a * bs, (a + 1) * bs), the last one padded): [B, nQ, n] shared by
all heads, or [B, nQ, K, n] per KV head. Every query of block a attends to the keys of a's valid
selected blocks that the `AttentionMask` shows to that query (token-exact: causal, window,
segments, positions); the softmax runs over those keys in float32, and a query with none outputs
0 with 0 gradients, as `attention()` does. Valid slots must name distinct blocks (a repeated
block would count twice).

Why whole query blocks: queries that share a selection share their keys, so per query block and
KV head the n selected blocks are n contiguous [bs, H] slices of K and V (laid out
[B, K, S / bs, bs, H] once), and one matmul gives the logits of all G query heads x bs queries
([G * bs, H] x [H, n * bs]), another the output. Query blocks run in a `lax.map` / `lax.scan`:
memory is O(T * n) for the selection plus one query block's temporaries. The backward pass
(`jax.custom_vjp`) recomputes each query block's probabilities from the saved log-sum-exp and
adds dK, dV into their key blocks as whole [bs, H] slices (a scatter-add of n slices per step,
never per-token scatters).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.mask import ResolvedMask, visible
from longctx_jax.attention.sparse.prepare import prepare
from longctx_jax.attention.sparse.tiles import masked_exp, merge_rows, split_rows


def block_sparse_attention(
    q, k, v, block_indices, *, block_size: int, mask=None, valid=None, scale=None
):
    """Attention of q [B, T, N, H] over the selected key blocks of k, v [B, S, K, H].

    Args:
      block_indices: int [B, ceil(T / block_size), n] (shared by all heads) or
        [B, ceil(T / block_size), K, n] (per KV head): each query block's selected key blocks.
      block_size: queries per query block and keys per key block.
      mask: an `AttentionMask`, applied per query to the selected keys; None = all visible.
      valid: bool, block_indices' shape; False slots are ignored. None = all slots valid.
      scale: logit scale, default 1 / sqrt(head_dim).
    Returns [B, T, N, H] in q's dtype.
    """
    idx, ok, resolved, scale = prepare(q, k, v, block_indices, mask, valid, scale, block_size)
    static = _Static(resolved.causal, resolved.window, k.shape[1], block_size, scale)
    return _attend(static, q, k, v, idx, ok, resolved)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Trace-time constants of one call."""

    causal: bool
    window: int | None
    kv_len: int
    block_size: int
    scale: float


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(static, q, k, v, idx, ok, mask):
    return _forward(static, q, k, v, idx, ok, mask)[0]


def _attend_fwd(static, q, k, v, idx, ok, mask):
    out, lse = _forward(static, q, k, v, idx, ok, mask)
    return out, (q, k, v, idx, ok, mask, out, lse)


def _forward(static, q, k, v, idx, ok, mask: ResolvedMask):
    """(output [B, T, N, H], log-sum-exp [nQ, B, K, bs, G, 1]) a query block at a time."""
    keys = _KeyBlocks.of(k, v, mask, static.block_size)

    def one_block(args):
        q_blk, idx_blk, ok_blk, q_pos, q_seg = args
        logits, _, v_sel = _tile(static, keys, q_blk, idx_blk, ok_blk, q_pos, q_seg)
        e, row_max, denom = masked_exp(logits)
        denom = jnp.where(denom > 0, denom, 1.0)
        out = jnp.einsum(
            "bktgs,bksh->bktgh", e.astype(v.dtype), v_sel, preferred_element_type=jnp.float32
        )
        return (out / denom).astype(q.dtype), row_max + jnp.log(denom)

    out, lse = lax.map(one_block, _query_block_args(static, q, idx, ok, mask))
    return _merge_heads(out, q.shape), lse


def _attend_bwd(static, residuals, d_out):
    q, k, v, idx, ok, mask, out, lse = residuals
    b, s, kh, h = k.shape
    bs = static.block_size
    keys = _KeyBlocks.of(k, v, mask, bs)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1, keepdims=True)
    batch, head = jnp.arange(b)[:, None, None], jnp.arange(kh)[None, :, None]

    def one_block(carry, args):
        dkT_acc, dvT_acc = carry  # [B, K, nS, H, bs]: dK, dV per key block, transposed
        (q_blk, idx_blk, ok_blk, q_pos, q_seg), do_blk, lse_blk, delta_blk = args
        logits, k_sel, v_sel = _tile(static, keys, q_blk, idx_blk, ok_blk, q_pos, q_seg)
        p = jnp.exp(logits - lse_blk)  # 0 where a key does not count (logit -inf)
        dp = jnp.einsum("bktgh,bksh->bktgs", do_blk, v_sel, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_blk) * static.scale
        dq = jnp.einsum(
            "bktgs,bksh->bktgh", ds.astype(k.dtype), k_sel, preferred_element_type=jnp.float32
        )
        # dK, dV come out transposed ([H, n * bs]): the big [G * bs, n * bs] operands are then
        # read in their stored layout, only the small [G * bs, H] ones are transposed.
        dvT = jnp.einsum(
            "bktgh,bktgs->bkhs", do_blk, p.astype(do_blk.dtype), preferred_element_type=jnp.float32
        )
        dkT = jnp.einsum(
            "bktgh,bktgs->bkhs", q_blk, ds.astype(q.dtype), preferred_element_type=jnp.float32
        )
        as_blocks = lambda x: x.reshape(b, kh, h, -1, bs).transpose(0, 1, 3, 2, 4)  # noqa: E731
        dkT_acc = dkT_acc.at[batch, head, idx_blk].add(as_blocks(dkT))
        dvT_acc = dvT_acc.at[batch, head, idx_blk].add(as_blocks(dvT))
        return (dkT_acc, dvT_acc), dq.astype(q.dtype)

    zeros = jnp.zeros((b, kh, -(-s // bs), h, bs), jnp.float32)
    per_block = (
        _query_block_args(static, q, idx, ok, mask),
        _blocked_heads(d_out, kh, bs),
        lse,
        _blocked_heads(delta, kh, bs),
    )
    (dkT, dvT), dq = lax.scan(one_block, (zeros, zeros), per_block)
    return (
        _merge_heads(dq, q.shape),
        _unblock_keys(dkT, s).astype(k.dtype),
        _unblock_keys(dvT, s).astype(v.dtype),
        None,
        None,
        None,
    )


_attend.defvjp(_attend_fwd, _attend_bwd)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _KeyBlocks:
    """Keys and values [B, K, nS, bs, H] and positions, segment ids [B, nS, bs], laid out once
    so that one gather index fetches a whole key block."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    seg: jax.Array

    @staticmethod
    def of(k, v, mask: ResolvedMask, block_size: int) -> _KeyBlocks:
        b, s = k.shape[:2]
        n = -(-s // block_size)

        def blocks(x):  # [B, S, ...] -> [B, nS, bs, ...]
            x = jnp.pad(x, [(0, 0), (0, n * block_size - s)] + [(0, 0)] * (x.ndim - 2))
            return x.reshape((b, n, block_size) + x.shape[2:])

        heads_first = lambda x: blocks(x).transpose(0, 3, 1, 2, 4)  # noqa: E731
        return _KeyBlocks(
            heads_first(k), heads_first(v), blocks(mask.kv_positions), blocks(mask.kv_segment_ids)
        )


def _tile(static, keys: _KeyBlocks, q_BKTGH, idx_BKn, ok_BKn, q_pos_BT, q_seg_BT):
    """One query block: (scaled logits [B, K, bs, G, n * bs] float32, -inf where a key does not
    count, gathered k, v [B, K, n * bs, H])."""
    b, kh, n = idx_BKn.shape
    bs = static.block_size
    batch, head = jnp.arange(b)[:, None, None], jnp.arange(kh)[None, :, None]
    flat = lambda x: x.reshape((b, kh, n * bs) + x.shape[4:])  # noqa: E731
    k_sel = flat(keys.k[batch, head, idx_BKn])
    v_sel = flat(keys.v[batch, head, idx_BKn])
    kv_pos, kv_seg = flat(keys.pos[batch, idx_BKn]), flat(keys.seg[batch, idx_BKn])
    key = flat(idx_BKn[..., None] * bs + jnp.arange(bs))
    slot_ok = flat(jnp.broadcast_to(ok_BKn[..., None], (b, kh, n, bs))) & (key < static.kv_len)
    seen = visible(
        static.causal,
        static.window,
        q_pos_BT[:, None, :, None],
        kv_pos[:, :, None, :],
        q_seg_BT[:, None, :, None],
        kv_seg[:, :, None, :],
    )
    logits = jnp.einsum("bktgh,bksh->bktgs", q_BKTGH, k_sel, preferred_element_type=jnp.float32)
    counted = (seen & slot_ok[:, :, None])[:, :, :, None]
    return jnp.where(counted, logits * jnp.float32(static.scale), -jnp.inf), k_sel, v_sel


def _query_block_args(static, q, idx, ok, mask: ResolvedMask):
    """Per query block (leading axis nQ): q [B, K, bs, G, H], indices and valid [B, K, n],
    query positions and segment ids [B, bs]."""
    bs = static.block_size
    return (
        _blocked_heads(q, idx.shape[2], bs),
        jnp.moveaxis(idx, 1, 0),
        jnp.moveaxis(ok, 1, 0),
        split_rows(mask.q_positions, bs),
        split_rows(mask.q_segment_ids, bs),
    )


def _blocked_heads(x_BTNH, num_kv_heads: int, block_size: int):
    """[B, T, N, H] -> [nQ, B, K, bs, G, H] (query head n = k * G + g, T padded)."""
    b, t, n, h = x_BTNH.shape
    x = split_rows(x_BTNH.reshape(b, t, num_kv_heads, n // num_kv_heads, h), block_size)
    return x.transpose(0, 1, 3, 2, 4, 5)


def _merge_heads(x, shape):
    """Inverse of `_blocked_heads`: [nQ, B, K, bs, G, H] -> `shape` [B, T, N, H]."""
    return merge_rows(x.transpose(0, 1, 3, 2, 4, 5), shape[1]).reshape(shape)


def _unblock_keys(x, kv_len: int):
    """[B, K, nS, H, bs] (per key block, transposed) -> [B, S, K, H]."""
    b, kh, n, h, bs = x.shape
    return x.transpose(0, 2, 4, 1, 3).reshape(b, n * bs, kh, h)[:, :kv_len]
