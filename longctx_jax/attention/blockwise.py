"""Blockwise (flash-style) attention in pure JAX: memory O(L), never the L x L matrix.

Forward: for each query block, an online softmax over key blocks (running max `m`, running sum
`l`, unnormalised output `acc`, all float32). Backward (`jax.custom_vjp`): one fused pass that
recomputes each tile's probabilities from the saved log-sum-exp; the outer loop runs over key
blocks (dK, dV accumulate in registers of the loop), the inner over query blocks (dQ accumulates
into one O(L) buffer). Each (query block, key block) tile is classified once, on device, from
per-block min/max of positions and segment ids:
  0 = empty (skipped: no loads, no FLOPs), 1 = fully visible (no mask work), 2 = partly visible.
Because classification reads positions, causal, sliding-window, packed-document and permuted
(zigzag / ring / KV-cache) layouts all skip their empty tiles with no special case.

GQA: queries are laid out [B, K, G, T, H] so each key/value head serves its G query heads inside
one matmul; K/V are never repeated.

`blockwise_forward` (output and log-sum-exp) and `blockwise_backward` (gradients from a whole
row's output and log-sum-exp) expose the two passes separately: ring attention (ring.py) runs
them on one key chunk at a time and merges the chunks itself.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.logits import alibi_bias, scores, tile_visible
from longctx_jax.attention.mask import ResolvedMask
from longctx_jax.attention.reference import merge_heads, split_heads

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 256

EMPTY, FULL, PARTIAL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class _Static:
    """Trace-time constants of one blockwise call."""

    causal: bool
    window: int | None
    soft_cap: float | None
    kv_len: int  # unpadded key length; keys at index >= kv_len are padding
    block_kv: int


def blockwise_attention(
    q,
    k,
    v,
    mask: ResolvedMask,
    *,
    scale: float,
    soft_cap: float | None,
    slopes,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
):
    """Attention output [B, T, N, H] in q's dtype; see module docstring."""
    static, args = _blocked(q, k, v, mask, scale, soft_cap, slopes, block_q, block_kv)
    return _unblock_q(_attend(static, *args), q.shape[1])


def blockwise_forward(
    q,
    k,
    v,
    mask: ResolvedMask,
    *,
    scale: float,
    soft_cap: float | None,
    slopes,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
):
    """(out [B, T, N, H] in q's dtype, lse [B, T, N] float32), not differentiable.

    lse is the log of each row's softmax denominator (-inf for a row that sees no key), so
    partial results over disjoint key sets merge exactly (context-parallel ring attention).
    """
    static, args = _blocked(q, k, v, mask, scale, soft_cap, slopes, block_q, block_kv)
    out_blk, lse_blk = _forward(static, *args)
    t = q.shape[1]
    return _unblock_q(out_blk, t), _unblock_q(lse_blk[..., None], t)[..., 0]


def blockwise_backward(
    q,
    k,
    v,
    mask: ResolvedMask,
    out,
    lse,
    d_out,
    *,
    scale: float,
    soft_cap: float | None,
    slopes,
    block_q: int = DEFAULT_BLOCK_Q,
    block_kv: int = DEFAULT_BLOCK_KV,
):
    """float32 (dq, dk, dv, d_slopes or None) of the keys in k, v for queries q.

    `out` [B, T, N, H] and `lse` [B, T, N] are those of the whole attention row (over every key,
    not only these), so gradients over disjoint key sets add up to the full gradient.
    """
    static, args = _blocked(q, k, v, mask, scale, soft_cap, slopes, block_q, block_kv)
    nq, bq, num_kv = args[0].shape[0], args[0].shape[4], k.shape[2]
    out_blk, d_out_blk = (_block_q(x, num_kv, nq, bq) for x in (out, d_out))
    lse_blk = _block_q(lse[..., None], num_kv, nq, bq)[..., 0]
    dq_blk, dk_blk, dv_blk, d_slopes = _backward(
        static, (*args, out_blk, lse_blk), d_out_blk, grad_dtypes=(jnp.float32,) * 3
    )
    dq = _unblock_q(dq_blk, q.shape[1]) * scale  # the blocked q was pre-scaled
    dk, dv = (_unblock_kv(x, k.shape[1]) for x in (dk_blk, dv_blk))
    return dq, dk, dv, None if d_slopes is None else d_slopes.reshape(slopes.shape)


def _blocked(q, k, v, mask, scale, soft_cap, slopes, block_q, block_kv):
    """(static constants, blocked arguments of `_attend`) for one call."""
    b, t, n, h = q.shape
    s_len, num_kv = k.shape[1], k.shape[2]
    bq, bkv = _block_size(block_q, t, "block_q"), _block_size(block_kv, s_len, "block_kv")
    nq, nkv = -(-t // bq), -(-s_len // bkv)

    # Scaling q once (O(L)) saves a pass over every [bq, bkv] tile; JAX differentiates it.
    q_scaled = (q * jnp.asarray(scale, q.dtype)).astype(q.dtype)
    q_blk = _block_q(q_scaled, num_kv, nq, bq)  # [nq, B, K, G, bq, H]
    k_blk = _to_blocks(_pad(k.transpose(0, 2, 1, 3), 2, nkv * bkv), 2, nkv)  # [nkv, B, K, bkv, H]
    v_blk = _to_blocks(_pad(v.transpose(0, 2, 1, 3), 2, nkv * bkv), 2, nkv)
    q_pos, q_seg = (_to_blocks(_pad(x, 1, nq * bq), 1, nq) for x in mask_q(mask))
    kv_pos, kv_seg = (_to_blocks(_pad(x, 1, nkv * bkv), 1, nkv) for x in mask_kv(mask))
    tiles = classify_tiles(mask.causal, mask.window, q_pos, q_seg, kv_pos, kv_seg, s_len, bkv)

    static = _Static(mask.causal, mask.window, soft_cap, s_len, bkv)
    slopes_KG = None if slopes is None else slopes.reshape(num_kv, n // num_kv)
    return static, (q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles)


def _block_q(x_BTNH, num_kv: int, nq: int, bq: int):
    """[B, T, N, H] -> [nq, B, K, G, bq, H], T padded to nq * bq."""
    return _to_blocks(_pad(split_heads(x_BTNH, num_kv), 3, nq * bq), 3, nq)


def _unblock_q(x_blk, t: int):
    """Inverse of `_block_q` (padding dropped)."""
    return merge_heads(_from_blocks(x_blk, 3)[:, :, :, :t])


def _unblock_kv(x_blk, s: int):
    """[nkv, B, K, bkv, H] -> [B, S, K, H] (padding dropped)."""
    return _from_blocks(x_blk, 2)[:, :, :s].transpose(0, 2, 1, 3)


def mask_q(mask: ResolvedMask):
    return mask.q_positions, mask.q_segment_ids


def mask_kv(mask: ResolvedMask):
    return mask.kv_positions, mask.kv_segment_ids


def classify_tiles(causal, window, q_pos, q_seg, kv_pos, kv_seg, kv_len, block_kv):
    """[nq, nkv] int32 tile classes (EMPTY / FULL / PARTIAL) from per-block ranges.

    Inputs are blocked [n_blocks, B, block]. Conservative: a tile is EMPTY only if no batch row
    can see any key in it, FULL only if every query sees every key for every batch row.
    """
    qp_lo, qp_hi = q_pos.min(-1)[:, None], q_pos.max(-1)[:, None]  # [nq, 1, B]
    qs_lo, qs_hi = q_seg.min(-1)[:, None], q_seg.max(-1)[:, None]
    kp_lo, kp_hi = kv_pos.min(-1)[None], kv_pos.max(-1)[None]  # [1, nkv, B]
    ks_lo, ks_hi = kv_seg.min(-1)[None], kv_seg.max(-1)[None]

    some = (qs_lo <= ks_hi) & (ks_lo <= qs_hi)
    every = (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    if causal:
        some &= kp_lo <= qp_hi
        every &= kp_hi <= qp_lo
    if window is not None:
        some &= qp_lo - kp_hi < window
        every &= qp_hi - kp_lo < window
    nkv = kv_pos.shape[0]
    has_padding = (jnp.arange(nkv) + 1) * block_kv > kv_len
    every &= ~has_padding[None, :, None]
    some, every = some.any(-1), every.all(-1)
    return jnp.where(some, jnp.where(every, FULL, PARTIAL), EMPTY).astype(jnp.int32)


def _block_size(requested: int, length: int, name: str) -> int:
    if not isinstance(requested, int) or requested < 1:
        raise ValueError(f"{name}={requested!r}: expected a positive int")
    return min(requested, -(-length // 8) * 8)


def _pad(x, axis: int, size: int):
    """Pads `axis` to `size` by repeating the last entry (keeps padded rows finite and in range)."""
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad, mode="edge")


def _to_blocks(x, axis: int, n_blocks: int):
    """Splits `axis` into n_blocks and moves the block index to the front."""
    shape = x.shape[:axis] + (n_blocks, x.shape[axis] // n_blocks) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _from_blocks(x, axis: int):
    """Inverse of `_to_blocks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _tile_logits(static, q_i, kT_j, slopes_KG, qp_i, qs_i, kp_j, ks_j, j, masked: bool):
    """(capped scores, logits with bias and -inf mask) for tile (i, j); float32 [B,K,G,bq,bkv]."""
    capped = scores(q_i, kT_j, scale=1.0, soft_cap=static.soft_cap)
    s = capped if slopes_KG is None else capped + alibi_bias(slopes_KG, qp_i, kp_j)
    if masked:
        ok = tile_visible(static.causal, static.window, qp_i, kp_j, qs_i, ks_j)
        if -(-static.kv_len // static.block_kv) * static.block_kv != static.kv_len:
            key_index = j * static.block_kv + jnp.arange(static.block_kv)
            ok &= key_index < static.kv_len
        s = jnp.where(ok, s, -jnp.inf)
    return capped, s


def _forward(static, q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles):
    """Online-softmax forward; (out blocks in q's dtype, lse blocks float32, -inf if unseen)."""
    nkv = k_blk.shape[0]
    kT_blk = k_blk.swapaxes(-1, -2)  # [nkv, B, K, H, bkv], transposed once rather than per tile

    def one_query_block(args):
        i, q_i, qp_i, qs_i = args
        b, kh, g, bq, _ = q_i.shape
        m0 = jnp.full((b, kh, g, bq), -jnp.inf, jnp.float32)
        l0 = jnp.zeros((b, kh, g, bq), jnp.float32)
        acc0 = jnp.zeros(q_i.shape[:-1] + (v_blk.shape[-1],), jnp.float32)

        def tile(masked, j, carry):
            m, l, acc = carry
            _, s = _tile_logits(
                static, q_i, kT_blk[j], slopes_KG, qp_i, qs_i, kv_pos[j], kv_seg[j], j, masked
            )
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            l = l * corr + p.sum(-1)
            pv = jnp.einsum(
                "bkgts,bksh->bkgth",
                p.astype(v_blk.dtype),
                v_blk[j],
                preferred_element_type=jnp.float32,
            )
            return m_new, l, acc * corr[..., None] + pv

        def step(j, carry):
            branches = [
                lambda j, c: c,
                functools.partial(tile, False),
                functools.partial(tile, True),
            ]
            return lax.switch(tiles[i, j], branches, j, carry)

        m, l, acc = lax.fori_loop(0, nkv, step, (m0, l0, acc0))
        # A row saw a key iff its running max left -inf (NaN inputs stay NaN, as in the reference).
        seen = ~jnp.isneginf(m)
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
        return out.astype(q_i.dtype), lse

    idx = jnp.arange(q_blk.shape[0])
    return lax.map(one_query_block, (idx, q_blk, q_pos, q_seg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(static, q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles):
    out, _ = _forward(static, q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles)
    return out


def _attend_fwd(static, q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles):
    out, lse = _forward(static, q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles)
    return out, (q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles, out, lse)


def _attend_bwd(static, res, d_out):
    q_blk, k_blk, v_blk = res[:3]
    dtypes = (q_blk.dtype, k_blk.dtype, v_blk.dtype)
    dq, dk, dv, d_slopes = _backward(static, res, d_out, grad_dtypes=dtypes)
    return dq, dk, dv, d_slopes, None, None, None, None, None


def _backward(static, res, d_out, *, grad_dtypes):
    """Blocked (dq, dk, dv) in `grad_dtypes` and d_slopes (or None) from the saved residuals."""
    q_blk, k_blk, v_blk, slopes_KG, q_pos, q_seg, kv_pos, kv_seg, tiles, out, lse = res
    dq_dtype, dk_dtype, dv_dtype = grad_dtypes
    nq = q_blk.shape[0]
    # A row that sees no key has no finite lse; any finite value gives it p = 0 on masked logits.
    lse = jnp.where(jnp.isneginf(lse), 0.0, lse)
    # D_i = rowsum(dO * O): the softmax-gradient correction, float32.
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
    has_alibi = slopes_KG is not None
    # Every matmul below reads its tile-sized operand (p, ds) in stored layout; the small [.., H]
    # operands are transposed once, outside the tile loops, and dK, dV accumulate as [.., H, bkv].
    qT_blk = jnp.moveaxis(q_blk, -1, 3)  # [nq, B, K, H, G, bq]
    doT_blk = jnp.moveaxis(d_out, -1, 3)

    def one_key_block(dq_acc, args):
        j, k_j, v_j, kp_j, ks_j = args
        kT_j, vT_j = k_j.swapaxes(-1, -2), v_j.swapaxes(-1, -2)

        def tile(masked, i):
            q_i, do_i = q_blk[i], d_out[i]
            capped, s = _tile_logits(
                static, q_i, kT_j, slopes_KG, q_pos[i], q_seg[i], kp_j, ks_j, j, masked
            )
            p = jnp.exp(s - lse[i][..., None])
            dv = jnp.einsum(
                "bkhgt,bkgts->bkhs",
                doT_blk[i],
                p.astype(do_i.dtype),
                preferred_element_type=jnp.float32,
            )
            dp = jnp.einsum("bkgth,bkhs->bkgts", do_i, vT_j, preferred_element_type=jnp.float32)
            ds = p * (dp - delta[i][..., None])
            d_slopes = (
                jnp.sum(ds * alibi_bias(jnp.ones_like(slopes_KG), q_pos[i], kp_j), (0, 3, 4))
                if has_alibi
                else None
            )
            if static.soft_cap is not None:
                ds = ds * (1.0 - jnp.square(capped / static.soft_cap))
            ds = ds.astype(q_i.dtype)
            dq = jnp.einsum("bkgts,bksh->bkgth", ds, k_j, preferred_element_type=jnp.float32)
            dk = jnp.einsum("bkhgt,bkgts->bkhs", qT_blk[i], ds, preferred_element_type=jnp.float32)
            return dq, dk, dv, d_slopes

        def skip(i):
            zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
            d_slopes = zeros(slopes_KG) if has_alibi else None
            return zeros(dq_acc[0]), zeros(dk0), zeros(dv0), d_slopes

        def step(i, carry):
            dq_acc, dk, dv, d_slopes = carry
            branches = [skip, functools.partial(tile, False), functools.partial(tile, True)]
            dq_t, dk_t, dv_t, ds_t = lax.switch(tiles[i, j], branches, i)
            dq_acc = dq_acc.at[i].add(dq_t)
            d_slopes = None if d_slopes is None else d_slopes + ds_t
            return dq_acc, dk + dk_t, dv + dv_t, d_slopes

        dk0 = jnp.zeros(k_j.swapaxes(-1, -2).shape, jnp.float32)
        dv0 = jnp.zeros(v_j.swapaxes(-1, -2).shape, jnp.float32)
        ds0 = jnp.zeros(slopes_KG.shape, jnp.float32) if has_alibi else None
        dq_acc, dk, dv, d_slopes = lax.fori_loop(0, nq, step, (dq_acc, dk0, dv0, ds0))
        dk, dv = dk.swapaxes(-1, -2).astype(dk_dtype), dv.swapaxes(-1, -2).astype(dv_dtype)
        return dq_acc, (dk, dv, d_slopes)

    dq0 = jnp.zeros(q_blk.shape, jnp.float32)
    idx = jnp.arange(k_blk.shape[0])
    dq, (dk, dv, d_slopes) = lax.scan(one_key_block, dq0, (idx, k_blk, v_blk, kv_pos, kv_seg))
    if has_alibi:
        d_slopes = d_slopes.sum(0).astype(slopes_KG.dtype)
    return dq.astype(dq_dtype), dk, dv, d_slopes


_attend.defvjp(_attend_fwd, _attend_bwd)
