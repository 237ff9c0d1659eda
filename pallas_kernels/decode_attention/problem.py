"""What one decode-attention call computes, the layout the kernels share, and the split-K merge.

Kernel layout: the cache stays as stored, [B, S, K, W] with W = H (float) or H * bits // 8
(packed uint8 codes, longctx_jax/inference/quantize.py), per-token float32 scales [B, S, K]:
reading it in place is the point of a decode kernel (a transpose or pad would cost a second pass
over the cache). A byte of 8 // bits codes holds `parts`: part p is bits [p * bits, (p + 1) * bits)
of every byte, the elements [p * W, (p + 1) * W) of the head (quantize.py's split order), so queries
are cut the same way, q [B, K, parts, R, W], and q.k is a sum over parts: no concatenation.
The R = G * T rows of kv head k are its G query heads (n = k * G + g) times the T new tokens,
row r = g * T + t. Split s reduces its keys to float32 partials (acc = sum p * v, running max m,
running sum l); `merge` combines the splits by log-sum-exp.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pallas_kernels.flash_attention.problem import Problem, visible

BITS = (4, 8)


@dataclasses.dataclass(frozen=True)
class Decode:
    """Trace-time constants of one kernel call (hashable: kernels are specialised on them)."""

    logits: Problem  # scale, soft cap, ALiBi and mask rule (flash_attention.problem.tile_logits)
    bits: int | None  # None: float keys and values
    key_minimum: bool  # asymmetric key codes (a per-token minimum is stored)
    value_minimum: bool
    kv_len: int  # S; the last block may run past it
    block_kv: int
    num_splits: int
    blocks_per_split: int
    num_kv_heads: int

    @property
    def parts(self) -> int:
        return 1 if self.bits is None else 8 // self.bits

    @property
    def padded_len(self) -> int:
        return self.num_splits * self.blocks_per_split * self.block_kv


def optional_refs(d: Decode, refs):
    """The kernels' optional inputs -- key scale, key minimum, value scale, value minimum, ALiBi
    slopes, in that order, each present or None -- and the refs after them."""
    refs = list(refs)
    flags = (d.bits is not None, d.key_minimum, d.bits is not None, d.value_minimum)
    present = (*flags, d.logits.has_alibi)
    return [refs.pop(0) if flag else None for flag in present], refs


def plan_splits(kv_len: int, block_kv: int, num_splits: int) -> tuple[int, int]:
    """(num_splits, blocks_per_split): at most `num_splits` splits of whole blocks, none empty."""
    num_blocks = -(-kv_len // block_kv)
    per_split = -(-num_blocks // min(num_splits, num_blocks))
    return -(-num_blocks // per_split), per_split


def dequantize_part(codes, part: int, bits: int | None, scale, minimum, dtype):
    """Part `part` of a tile of codes [bkv, W] (uint8; a float tile passes through) -> [bkv, W]
    in `dtype`; scale and minimum are [bkv, 1] float32 columns (minimum None = symmetric)."""
    if bits is None:
        return codes.astype(dtype)
    c = codes.astype(jnp.int32)
    if bits < 8:
        c = (c >> (bits * part)) & ((1 << bits) - 1)
    c = c.astype(jnp.float32)
    x = c * scale + minimum if minimum is not None else (c - ((1 << (bits - 1)) - 1)) * scale
    return x.astype(dtype)


def live_blocks(decode: Decode, q_pos, q_seg, kv_pos, kv_seg):
    """(first, last) [B] int32: the key blocks holding a key that some query sees (last = -1:
    none). Blocks outside the range are neither read nor computed. kv_* [B, padded_len]."""
    seen = visible(
        decode.logits, q_pos[:, :, None], kv_pos[:, None, :], q_seg[:, :, None], kv_seg[:, None, :]
    )
    live = seen.any(axis=1).reshape(kv_pos.shape[0], -1, decode.block_kv).any(axis=-1)
    some = live.any(axis=1)
    first = jnp.where(some, jnp.argmax(live, axis=1), 0)
    last = jnp.where(some, live.shape[1] - 1 - jnp.argmax(live[:, ::-1], axis=1), -1)
    return first.astype(jnp.int32), last.astype(jnp.int32)


def merge(acc, m, l):
    """Split-K partials -> attention output [B, K, parts, R, W], float32.

    acc [B, splits, K, parts, R, W] (unnormalised sum of p * v), m and l [B, splits, K, R]
    (running max, and sum of exp(logit - m)); a row that no split saw a key for gets 0."""
    top = jnp.max(m, axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weight = jnp.where(jnp.isfinite(m), jnp.exp(m - top), 0.0)
    total = jnp.sum(weight * l, axis=1)[:, :, None, :, None]
    out = jnp.sum(weight[:, :, :, None, :, None] * acc, axis=1)
    return jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0), 0.0)
