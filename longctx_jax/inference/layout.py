"""Allocating a model's caches, and counting the bytes they really hold.

`allocate(model_config, batch, spec, max_length)` builds one empty cache per layer for sequences
of up to `max_length` tokens: a `KVCache` of `spec.capacity` slots (default `max_length`; a layer
with a sliding window w, from `attention.window` or its entry of `attention.layer_windows`, and a
"full" spec gets a ring buffer of w slots, which is exact for it), or a `LinearCache` for the
linear mixer.

`capacity_for_budget(model_config, spec, budget_bytes)` turns a byte budget into slots, so
every policy and quantisation can be compared at the same bytes.

`cache_bytes(caches)` sums the arrays' nbytes: `payload` (keys, values, quantisation scales,
DSA's index keys, KIVI's full-precision window, the mixer's state) and `bookkeeping` (positions,
segment ids, write order, policy scores), both per row. `expected_payload_bytes` is the formula
2 * layers * kv_heads * head_dim * bytes per slot (+ scales, + index keys, + KIVI window) that
the tests hold the arrays to.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from longctx_jax import checks
from longctx_jax.inference import kivi
from longctx_jax.inference.cache import EMPTY, KVCache, LinearCache, storage_dtype
from longctx_jax.inference.spec import SCORED, CacheSpec, check_spec_for_model
from longctx_jax.model.config import layer_window
from longctx_jax.model.linear_mixer import STATE_DTYPE
from longctx_jax.model.transformer import freeze_model_config


def resolve_spec(model_config, spec: CacheSpec, max_length: int, layer: int = 0) -> CacheSpec:
    """Layer `layer`'s spec with its capacity set: its own, else for a layer with a sliding
    window w < max_length (`layer_window`) and a "full" float or per-token spec a ring of w
    slots (policy "window", exact for that layer), else max_length."""
    if spec.capacity is not None:
        return spec
    window = layer_window(model_config, layer)
    if window is not None and window < max_length and spec.policy == "full" and not spec.kivi:
        return dataclasses.replace(spec, policy="window", capacity=window)
    return dataclasses.replace(spec, capacity=max_length)


def allocate(model_config, batch: int, spec: CacheSpec | None, max_length: int) -> list:
    """One empty cache per layer (module docstring); ValueError for a spec this model cannot use."""
    cfg = freeze_model_config(model_config)
    spec = (spec or CacheSpec()).validate()
    specs = [resolve_spec(cfg, spec, max_length, layer) for layer in range(cfg.num_layers)]
    empty = {s: _empty_cache(cfg, batch, s, max_length) for s in dict.fromkeys(specs)}
    return [empty[s] for s in specs]


def _empty_cache(cfg, batch: int, spec: CacheSpec, max_length: int):
    """An empty cache of `spec.capacity` slots (the spec resolved for its layer), or the linear
    mixer's zero state."""
    capacity = spec.capacity
    check_spec_for_model(spec, cfg, capacity)
    statics = dict(spec=spec, model=cfg, rope_length=max_length)
    b, kh, h = batch, cfg.num_kv_heads, cfg.head_dim
    if cfg.attention.kind == "linear":
        state = jnp.zeros((b, kh, h, h), STATE_DTYPE)
        return LinearCache(state=state, length=jnp.zeros((b,), jnp.int32), **statics)
    dtype = storage_dtype(spec, cfg)
    zeros = jnp.zeros((b, capacity, kh, h), dtype)
    if spec.kivi:
        keys, values = kivi.quantise_group(spec, zeros, zeros)
        ring = jnp.zeros((b, kivi.ring_size(spec), kh, h), dtype)
    elif spec.bits is not None:
        keys = values = spec.token_codes(zeros)
        ring = None
    else:
        keys = values = zeros
        ring = None
    index_keys = None
    if cfg.attention.kind == "sparse_topk":
        index_dim = cfg.attention.sparse.index_head_dim
        index_keys = jnp.zeros((b, capacity, index_dim), jnp.dtype(cfg.dtype))
    return KVCache(
        keys=keys,
        values=values,
        positions=jnp.zeros((b, capacity), jnp.int32),
        segment_ids=jnp.full((b, capacity), EMPTY, jnp.int32),
        order=jnp.full((b, capacity), -1, jnp.int32),
        length=jnp.zeros((b,), jnp.int32),
        scores=jnp.zeros((b, capacity), jnp.float32) if spec.policy in SCORED else None,
        index_keys=index_keys,
        recent_keys=ring,
        recent_values=ring,
        **statics,
    )


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def cache_bytes(caches) -> dict:
    """{"payload", "bookkeeping", "capacity"}: bytes per row, summed over layers (module doc),
    and the slots per layer (the largest, when per-layer windows size layers differently)."""
    payload = bookkeeping = 0
    for cache in caches:
        batch = cache.length.shape[0]
        if isinstance(cache, LinearCache):
            payload += _nbytes(cache.state) // batch
            bookkeeping += _nbytes(cache.length) // batch
            continue
        held = (cache.keys, cache.values, cache.index_keys, cache.recent_keys, cache.recent_values)
        payload += _nbytes(held) // batch
        bookkeeping += _nbytes((cache.positions, cache.segment_ids, cache.order)) // batch
        bookkeeping += _nbytes((cache.scores, cache.length)) // batch
    capacity = None if isinstance(caches[0], LinearCache) else max(c.capacity for c in caches)
    return dict(payload=payload, bookkeeping=bookkeeping, capacity=capacity)


def expected_payload_bytes(model_config, spec: CacheSpec, capacity: int) -> int:
    """The payload per row by formula, independent of the arrays (module docstring)."""
    cfg = freeze_model_config(model_config)
    layers, kh, h = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    if cfg.attention.kind == "linear":
        return layers * kh * h * h * jnp.dtype(STATE_DTYPE).itemsize
    index = 0
    if cfg.attention.kind == "sparse_topk":
        index = capacity * cfg.attention.sparse.index_head_dim * jnp.dtype(cfg.dtype).itemsize
    float_bytes = jnp.dtype(spec.dtype or cfg.dtype).itemsize
    if spec.bits is None:
        return layers * (2 * capacity * kh * h * float_bytes + index)
    codes = 2 * capacity * kh * h * spec.bits // 8
    stats_per_token = 2 if spec.bits != 8 else 1  # scale (+ minimum when asymmetric), float32
    value_stats = capacity * kh * (h // spec.channel_group(h)) * stats_per_token * 4
    if spec.key_quant == "channel":
        key_stats = (capacity // spec.token_group) * kh * h * 2 * 4
    else:
        key_stats = value_stats
    ring = 2 * kivi.ring_size(spec) * kh * h * float_bytes if spec.kivi else 0
    return layers * (codes + key_stats + value_stats + index + ring)


def capacity_for_budget(model_config, spec: CacheSpec, budget_bytes: int) -> int:
    """The most slots whose payload per sequence fits in `budget_bytes` (a multiple of KIVI's
    token group): how a policy is budgeted in bytes rather than tokens. ValueError naming the
    budget when it cannot hold what the policy always keeps (one slot, `sinks` + 1, `recent` + 1).
    """
    spec = spec.validate()
    if checks.is_int(budget_bytes) is False or budget_bytes < 1:
        checks.fail("cache", "budget_bytes", budget_bytes, "a positive integer")
    group = spec.token_group if spec.kivi else 1
    fixed = expected_payload_bytes(model_config, spec, 0)
    per_group = expected_payload_bytes(model_config, spec, group) - fixed
    capacity = max(0, (budget_bytes - fixed) // per_group) * group
    needed = {"sinks": spec.sinks + 1, "h2o": spec.recent + 1, "snapkv": spec.recent + 1}
    least = max(needed.get(spec.policy, 1), group)
    if capacity < least:
        checks.fail(
            "cache",
            "budget_bytes",
            budget_bytes,
            f"at least {fixed + per_group * -(-least // group):,} bytes ({least} slots of "
            f"{per_group // group:,} bytes for policy {spec.policy!r})",
        )
    return capacity
