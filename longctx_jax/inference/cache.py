"""Per-layer KV caches: the arrays, attention of new tokens over them, and how tokens are kept.

A `KVCache` holds, per row, `capacity` slots of keys and values ([B, C, K, H], float or
quantised codes), each slot's position, segment id (`EMPTY` = unused) and write order (the
token's index in its row's stream), plus the policy's score and, for DSA, the indexer's key.
`LinearCache` is the linear mixer's fixed-size state.

A step (`DecoderLM.extend`, one call per layer through `attend`) runs in two halves:
  1. the new tokens' queries attend over [cached slots ; new tokens] with the model's mask
     (causal, window, segments) on the stored positions, through the model's own `attend`
     (any attention impl) or, for DSA, the indexer's top-k over the cached index keys; so a
     chunk sees every earlier token that is still cached, and itself;
  2. the new tokens are written: "full" / "window" / "sinks" compute each token's slot from its
     write order (a ring buffer for the window), the scored policies keep the `capacity`
     best-scoring of [cached ; new] (in write order), see inference/spec.py. Padding tokens
     (segment id `PAD`) are neither attended to nor written.
Keys are stored after RoPE. RoPE's length-dependent kinds (dynamic NTK, LongRoPE) are evaluated
at `rope_length`, the length of the whole sequence the cache was built for, so every decode step
rotates exactly as one forward pass over that many tokens does (Hugging Face's dynamic NTK
instead grows the base with the current length and keeps the rotation each cached key was
written with, so its decode drifts from its own forward pass past max_position_embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from longctx_jax.attention import AttentionMask, attention_weights
from longctx_jax.attention.sparse import index_scores, sparse_attention
from longctx_jax.inference import kivi
from longctx_jax.inference.quantize import Quantized, dequantize
from longctx_jax.inference.spec import SCORED, CacheSpec
from longctx_jax.model.attention_block import attend, model_alibi_slopes, rope_for_length
from longctx_jax.model.sparse_block import oracle_scores, select_keys
from longctx_jax.positions import apply_rope
from pallas_kernels.decode_attention import decode_attention

EMPTY = -2  # segment id (and order -1) of a slot that holds no token
PAD = -1  # segment id of a padding token: never attended to, never written


def _field(**kwargs):
    return dataclasses.field(metadata=dict(static=True), **kwargs)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """One softmax-attention layer's cache (module docstring); a pytree, jit-friendly."""

    keys: Any  # [B, C, K, H] float, or `Quantized` codes
    values: Any
    positions: jax.Array  # int32 [B, C]
    segment_ids: jax.Array  # int32 [B, C]; EMPTY where unused
    order: jax.Array  # int32 [B, C]: the token's index in its row's stream; -1 where unused
    length: jax.Array  # int32 [B]: tokens written so far (kept or evicted)
    scores: jax.Array | None  # float32 [B, C]: the scored policies' keep score
    index_keys: jax.Array | None  # [B, C, I]: DSA's indexer keys
    recent_keys: jax.Array | None  # KIVI: full-precision ring of the latest tokens [B, W, K, H]
    recent_values: jax.Array | None
    spec: CacheSpec = _field()
    model: Any = _field()  # the frozen model config
    rope_length: int = _field()

    @property
    def capacity(self) -> int:
        return self.positions.shape[1]

    def attend(self, q, k, v, *, positions, segment_ids, window, index_features=None):
        """New tokens' q [B, T, N, H], k, v [B, T, K, H] (after RoPE) -> (out [B, T, N, H],
        the cache with them written); `window` is the layer's sliding window (None = full)."""
        cfg = self.model
        if segment_ids is None:
            segment_ids = jnp.zeros(positions.shape, jnp.int32)
        new = dict(keys=k, values=v, positions=positions, segment_ids=segment_ids)
        if self.spec.kernel and q.shape[1] == 1:
            return self._kernel_decode(q, new, window)
        cached_k, cached_v = self.read(k.dtype)
        q_pos, kv_pos = positions, jnp.concatenate([self.positions, positions], axis=1)
        if self.spec.policy == "sinks":
            q, cached_k, k, q_pos, kv_pos = self._positions_in_cache(
                q, cached_k, k, positions, kv_pos
            )
        keys = jnp.concatenate([cached_k, k], axis=1)
        values = jnp.concatenate([cached_v, v.astype(cached_v.dtype)], axis=1)
        mask = AttentionMask(
            causal=True,
            window=window,
            q_positions=q_pos,
            kv_positions=kv_pos,
            q_segment_ids=segment_ids,
            kv_segment_ids=jnp.concatenate([self.segment_ids, segment_ids], axis=1),
        )
        index_keys = None
        if index_features is not None:
            index_keys = jnp.concatenate([self.index_keys, index_features[1]], axis=1)
        out = self._attention(q, keys, values, mask, index_features, index_keys)
        weights = None
        if self.spec.policy in ("h2o", "tova", "snapkv"):
            weights = attention_weights(
                q,
                keys,
                mask=mask,
                logits_soft_cap=cfg.attention.logits_soft_cap,
                alibi_slopes=model_alibi_slopes(cfg),
            )
        if index_features is not None:
            new["index_keys"] = index_features[1]
        return out, self._write(new, weights)

    def read(self, dtype) -> tuple[jax.Array, jax.Array]:
        """The cached keys and values [B, C, K, H] as floats in `dtype` (dequantised)."""
        if self.spec.kivi:
            return kivi.read(self, dtype)
        if self.spec.bits is None:
            return self.keys.astype(dtype), self.values.astype(dtype)
        return dequantize(self.keys, dtype), dequantize(self.values, dtype)

    # -- attention ---------------------------------------------------------------------------

    def _kernel_decode(self, q, new: dict, window):
        """A decode step through the split-K kernel (pallas_kernels/decode_attention): the new
        token is written first, then the kernel reads the stored cache (codes dequantised
        on chip), so the new token's own key and value are read back quantised too."""
        cfg = self.model
        cache = self._write(new, None)
        stored = {}
        for name in ("keys", "values"):
            x = getattr(cache, name)
            if isinstance(x, Quantized):
                stored[name] = x.codes
                stored[name[:-1] + "_scale"] = x.scale
                stored[name[:-1] + "_minimum"] = x.minimum
            else:
                stored[name] = x.astype(q.dtype)
        out = decode_attention(
            q,
            q_positions=new["positions"],
            kv_positions=cache.positions,
            q_segment_ids=new["segment_ids"],
            kv_segment_ids=cache.segment_ids,
            causal=True,
            window=window,
            scale=cfg.head_dim**-0.5,
            soft_cap=cfg.attention.logits_soft_cap,
            slopes=model_alibi_slopes(cfg),
            bits=self.spec.bits,
            **stored,
        )
        return out, cache

    def _attention(self, q, keys, values, mask, index_features, index_keys):
        cfg = self.model
        sparse = cfg.attention.sparse
        if cfg.attention.kind != "sparse_topk" or sparse.stage != "sparse":
            return attend(q, keys, values, mask=mask, cfg=cfg)
        if sparse.selector == "oracle":
            scores = oracle_scores(q, keys, mask)
        else:
            q_idx, _, w = index_features
            scores = index_scores(q_idx, index_keys, w, mask)
        indices, valid = select_keys(scores, mask, sparse)
        return sparse_attention(q, keys, values, indices, mask=mask, valid=valid)

    def _positions_in_cache(self, q, cached_k, k, positions, kv_pos):
        """StreamingLLM: positions within the cache (sinks, then the window right after them);
        keys and queries are re-rotated from their positions to these (RoPE is relative, so
        a rotation by the difference), and the mask and ALiBi read them too."""
        cfg, sinks = self.model, self.spec.sinks
        window = self.capacity - sinks
        start = jnp.maximum(sinks, self.length - window)[:, None]  # oldest window token
        order_new = self.length[:, None] + jnp.arange(positions.shape[1], dtype=jnp.int32)

        def in_cache(order):
            return jnp.where(order < sinks, order, sinks + order - start)

        q_rank = in_cache(order_new)
        kv_rank = jnp.concatenate([in_cache(self.order), q_rank], axis=1)
        if cfg.position.kind == "rope":
            inv_freq, _ = rope_for_length(cfg, self.rope_length)

            def rotate(x, by):  # a pure rotation: no attention_factor
                return apply_rope(x, by, inv_freq, layout=cfg.position.layout)

            c = self.capacity
            cached_k = rotate(cached_k, kv_rank[:, :c] - kv_pos[:, :c])
            k = rotate(k, q_rank - positions)
            q = rotate(q, q_rank - positions)
        return q, cached_k, k, q_rank, kv_rank

    # -- writing ---------------------------------------------------------------------------

    def _write(self, new: dict, weights) -> KVCache:
        spec = self.spec
        valid = new["segment_ids"] >= 0
        order_new = jnp.where(valid, self.length[:, None] + jnp.cumsum(valid, 1) - 1, -1)
        length = self.length + valid.sum(1, dtype=jnp.int32)
        if spec.kivi:
            return kivi.write(self, new, order_new, length)
        new = dict(new, order=order_new, keys=self._store(new["keys"]))
        new["values"] = self._store(new["values"])
        if spec.policy in SCORED:
            return self._keep_best(new, order_new, length, weights)
        slot = self._slot(order_new, length)
        rows = jnp.arange(slot.shape[0])[:, None]

        def put(old, update):
            return old.at[rows, slot].set(update.astype(old.dtype), mode="drop")

        fields = {name: put(getattr(self, name), new[name]) for name in _SLOT_FIELDS}
        fields["keys"] = jax.tree.map(put, self.keys, new["keys"])
        fields["values"] = jax.tree.map(put, self.values, new["values"])
        if self.index_keys is not None:
            fields["index_keys"] = put(self.index_keys, new["index_keys"])
        return dataclasses.replace(self, length=length, **fields)

    def _store(self, x):
        """New keys or values in the cache's storage format (float dtype or codes)."""
        spec = self.spec
        if spec.bits is None:
            return x.astype(storage_dtype(self.spec, self.model))
        return spec.token_codes(x)

    def _slot(self, order, length):
        """Slot of each new token for the positional policies; `capacity` (dropped) for padding
        and for tokens a later token of the same step overwrites."""
        c, spec = self.capacity, self.spec
        if spec.policy == "full":
            slot, kept = order, order >= 0
        elif spec.policy == "window":
            slot, kept = order % c, order >= length[:, None] - c
        else:  # sinks
            s = spec.sinks
            slot = jnp.where(order < s, order, s + (order - s) % (c - s))
            kept = (order < s) | (order >= length[:, None] - (c - s))
        return jnp.where(kept & (order >= 0), slot, c)

    def _keep_best(self, new, order_new, length, weights) -> KVCache:
        """The scored policies: keep the `capacity` best of [cached ; new] (ties: the newer),
        stored in write order."""
        spec, c = self.spec, self.capacity
        order = jnp.concatenate([self.order, order_new], axis=1)
        scores = self._scores(new, order, length, weights)
        recent = order >= (length[:, None] - spec.recent)
        priority = jnp.where(recent & (order >= 0), jnp.inf, scores)
        priority = jnp.where(order >= 0, priority, -jnp.inf)
        # the `capacity` highest priorities, ties going to the newer token
        chosen = jnp.lexsort((-order, -priority), axis=-1)[:, :c]
        chosen_order = jnp.take_along_axis(order, chosen, axis=1)
        by_order = jnp.argsort(jnp.where(chosen_order >= 0, chosen_order, jnp.iinfo(jnp.int32).max))
        chosen = jnp.take_along_axis(chosen, by_order, axis=1)
        kept_valid = jnp.take_along_axis(order, chosen, axis=1) >= 0

        def pick(old, update):
            both = jnp.concatenate([old, update.astype(old.dtype)], axis=1)
            index = chosen.reshape(chosen.shape + (1,) * (both.ndim - 2))
            return jnp.take_along_axis(both, index, axis=1)

        fields = {name: pick(getattr(self, name), new[name]) for name in _SLOT_FIELDS}
        fields["segment_ids"] = jnp.where(kept_valid, fields["segment_ids"], EMPTY)
        fields["order"] = jnp.where(kept_valid, fields["order"], -1)
        fields["scores"] = jnp.take_along_axis(scores, chosen, axis=1)
        fields["keys"] = jax.tree.map(pick, self.keys, new["keys"])
        fields["values"] = jax.tree.map(pick, self.values, new["values"])
        if self.index_keys is not None:
            fields["index_keys"] = pick(self.index_keys, new["index_keys"])
        return dataclasses.replace(self, length=length, **fields)

    def _scores(self, new, order, length, weights):
        """float32 [B, C + T] keep scores of [cached ; new] under the policy."""
        spec = self.spec
        t = order.shape[1] - self.capacity
        old = self.scores
        zeros = jnp.zeros((old.shape[0], t), old.dtype)
        if spec.policy == "knorm":  # smaller key norm = more attention (Devoto et al.)
            k = new["keys"]
            k = dequantize(k) if isinstance(k, Quantized) else k.astype(jnp.float32)
            fresh = -jnp.sqrt(jnp.sum(jnp.square(k), axis=-1)).mean(-1)
            return jnp.concatenate([old, fresh], axis=1)
        received = weights.sum(1)  # [B, T, C + T], summed over heads
        if spec.policy == "h2o":
            return jnp.concatenate([old, zeros], axis=1) + received.sum(1)
        valid = new["segment_ids"] >= 0
        if spec.policy == "tova":  # the last valid query's attention, averaged over heads
            last = jnp.maximum(valid.sum(1) - 1, 0)
            latest = jnp.take_along_axis(received, last[:, None, None], axis=1)[:, 0]
            latest = latest / self.model.num_heads
            keep_old = ~valid.any(1, keepdims=True)
            return jnp.where(keep_old, jnp.concatenate([old, zeros], 1), latest)
        # snapkv: a prefill chunk re-scores everything by its observation window; decode appends.
        order_new = order[:, self.capacity :]
        window = valid & (order_new >= length[:, None] - max(spec.recent, 1))
        observed = jnp.where(window[:, :, None], received, 0.0).sum(1)
        pooled = jax.lax.reduce_window(
            observed, -jnp.inf, jax.lax.max, (1, spec.pool), (1, 1), "SAME"
        )
        if t > 1:
            return pooled
        return jnp.concatenate([old, jnp.full((old.shape[0], t), jnp.inf, old.dtype)], axis=1)


_SLOT_FIELDS = ("positions", "segment_ids", "order")


def storage_dtype(spec: CacheSpec, model_config):
    """The float dtype of stored keys and values (and of KIVI's full-precision window)."""
    return jnp.dtype(spec.dtype or model_config.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearCache:
    """The linear mixer's recurrent state [B, K, H, H] float32 (see model/linear_mixer.py): the
    whole "cache" of a fixed-state layer, the same size at every length."""

    state: jax.Array
    length: jax.Array  # int32 [B]
    spec: CacheSpec = _field()
    model: Any = _field()
    rope_length: int = _field()

    def mix(self, mixer, x, q, k, v, segment_ids):
        """Runs `mixer` (the layer's GatedLinearAttention) from the cached state; padding
        tokens leave the state unchanged. Each row is one document."""
        valid = None if segment_ids is None else segment_ids >= 0
        out, state = mixer(x, q, k, v, None, state=self.state, valid=valid)
        written = x.shape[1] if valid is None else valid.sum(1, dtype=jnp.int32)
        return out, dataclasses.replace(self, state=state, length=self.length + written)
