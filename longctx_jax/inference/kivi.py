"""KIVI's cache layout (Liu et al. 2024): the latest tokens in full precision, older ones quantised
a whole group at a time.

Per row, with R = `residual`, G = the token group (KIVI: 32; 1 for per-token keys) and L tokens
written, the first Q(L) = max(0, (L - R) // G) * G tokens live in the quantised store and the rest
(fewer than R + G) in a full-precision ring of W = R + G slots. When a token's write makes Q grow,
the G tokens that just left the window are quantised from the ring, in one group: keys per
channel over those G tokens (key_quant "channel") or per token, values per token; both
asymmetric below 8 bits. Writes run one token at a time (a `lax.scan` over the step's tokens),
so a decode step and a prefill chunk quantise exactly the same groups. Policy "full" only: slot =
write order.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from longctx_jax.inference.quantize import Quantized, dequantize, quantize


def ring_size(spec) -> int:
    return spec.residual + spec.token_group


def quantised_count(spec, length):
    """Q(L): tokens of each row that live in the quantised store."""
    g = spec.token_group
    return jnp.maximum(0, (length - spec.residual) // g) * g


def quantise_group(spec, keys_BGKH, values_BGKH) -> tuple[Quantized, Quantized]:
    """One group of G tokens -> (key codes, value codes) in the store's layout."""
    if spec.key_quant == "channel":
        keys = quantize(keys_BGKH, spec.bits, axis=1, group_size=spec.token_group, symmetric=False)
    else:
        keys = spec.token_codes(keys_BGKH)
    values = spec.token_codes(values_BGKH)
    return keys, values


def read(cache, dtype):
    """Keys and values [B, C, K, H] in `dtype`: the quantised store below Q, the ring above."""
    spec = cache.spec
    c = cache.capacity
    slots = jnp.arange(c, dtype=jnp.int32)
    in_store = slots[None, :] < quantised_count(spec, cache.length)[:, None]
    ring = slots % ring_size(spec)

    def one(store, recent):
        recent = jnp.take(recent, ring, axis=1).astype(dtype)
        return jnp.where(in_store[:, :, None, None], dequantize(store, dtype), recent)

    return one(cache.keys, cache.recent_keys), one(cache.values, cache.recent_values)


def write(cache, new: dict, order_new, length):
    """The cache with the step's valid tokens written one at a time (module docstring)."""
    spec = cache.spec
    c, w, g = cache.capacity, ring_size(spec), spec.token_group
    rows = jnp.arange(order_new.shape[0])[:, None]

    def step(carry, token):
        k, v, pos, seg, order = token  # [B, K, H], [B, K, H], [B], [B], [B]
        valid = order >= 0
        slot = jnp.where(valid, order, c)[:, None]
        ring = jnp.where(valid, order % w, w)[:, None]
        carry = dict(carry)
        carry["recent_keys"] = (
            carry["recent_keys"]
            .at[rows, ring]
            .set(k[:, None].astype(carry["recent_keys"].dtype), mode="drop")
        )
        carry["recent_values"] = (
            carry["recent_values"]
            .at[rows, ring]
            .set(v[:, None].astype(carry["recent_values"].dtype), mode="drop")
        )
        for name, value in (("positions", pos), ("segment_ids", seg), ("order", order)):
            carry[name] = carry[name].at[rows, slot].set(value[:, None], mode="drop")
        before = quantised_count(spec, order)  # Q before this token (length = order)
        after = quantised_count(spec, order + 1)
        flush = valid & (after > before)
        start = jnp.where(flush, before, 0)
        group_slots = (start[:, None] + jnp.arange(g)) % w  # [B, G]
        gather = lambda ring_BWKH: jnp.take_along_axis(  # noqa: E731
            ring_BWKH, group_slots[:, :, None, None], axis=1
        ).astype(jnp.float32)
        codes_k, codes_v = quantise_group(
            spec, gather(carry["recent_keys"]), gather(carry["recent_values"])
        )
        carry["keys"] = _store_group(carry["keys"], codes_k, start, flush, g)
        carry["values"] = _store_group(carry["values"], codes_v, start, flush, g)
        return carry, None

    names = ("keys", "values", "recent_keys", "recent_values", "positions", "segment_ids", "order")
    carry = {name: getattr(cache, name) for name in names}
    tokens = (
        jnp.moveaxis(new["keys"], 1, 0),
        jnp.moveaxis(new["values"], 1, 0),
        new["positions"].T,
        new["segment_ids"].T,
        order_new.T,
    )
    carry, _ = jax.lax.scan(step, carry, tokens)
    return dataclasses.replace(cache, length=length, **carry)


def _store_group(store: Quantized, group: Quantized, start, flush, g: int) -> Quantized:
    """`group` written into `store` at token `start` of each row where `flush` (elsewhere the
    store's own slice is written back). Token-axis offsets: codes at `start`, per-channel stats
    at `start // g` (their axis is per group), per-token stats at `start`."""

    def put(old, update):
        per_group = old.shape[1] != store.codes.shape[1]
        offset = start // g if per_group else start

        def row(old_row, update_row, at, on):
            index = (at,) + (0,) * (old_row.ndim - 1)
            current = jax.lax.dynamic_slice(old_row, index, update_row.shape)
            return jax.lax.dynamic_update_slice(
                old_row, jnp.where(on, update_row.astype(old_row.dtype), current), index
            )

        return jax.vmap(row)(old, update, offset, flush)

    return jax.tree.map(put, store, group)
