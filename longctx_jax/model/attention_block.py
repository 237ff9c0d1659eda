"""Self-attention block: q/k/v projections, the position scheme, and the one call to `attention()`.

Projections: q, k, v = x @ W (+ a bias with `attention.qkv_bias`, Qwen2); with
`attention.qk_norm` (Qwen3) each q and k head is RMS-normalised over head_dim before the position
scheme; out = o @ W_out (+ a bias with `attention.out_bias`).

Position schemes (config `position.kind`):
  rope   q and k rotated by `apply_rope` with frequencies from `rope_frequencies`, computed at trace
         time from the config (`dynamic` and `longrope` read seq_len = the input length T).
  alibi  `alibi_slopes(num_heads)` handed to `attention()`, which adds -slope * (q_pos - kv_pos).
  nope   nothing: positions only reach the causal mask.
With `attention.kind = "linear"` the block's q/k/v (RoPE-rotated for position.kind "rope") go to
`GatedLinearAttention` (model/linear_mixer.py) instead of `attend`.
Positions and segment ids ride in the `AttentionMask`, so packed documents, permuted layouts and
context-parallel chunks need no special case here. `attend` is the only place attention is
computed: when the current mesh (`jax.set_mesh`) and logical rules shard `length` over more than
one device, it calls `context_parallel_attention` with the `attention.context_parallel` strategy.
The layer's sliding window (`layer_window`: attention.window, or this layer's entry of
attention.layer_windows) rides in the mask too.

STRING (`position.string_shift` S > 0, an evaluation-time option): the block also rotates the
queries at q_pos - S + string_window and hands both rotations to `string_attend`, which reads the
pairs at distance >= S from the shifted ones (attention/string_attention.py). Dense, no KV cache,
no context parallelism.

Decoding with a KV cache (`cache=` a layer cache from longctx_jax/inference/cache.py): the block
computes q, k, v (RoPE at `cache.rope_length`, a static length, so that dynamic NTK and LongRoPE
rotate as a forward pass of that length does) and the indexer's features, and hands them to
`cache.attend(...)` (softmax kinds, with the layer's window) or `cache.mix(...)` (the linear
mixer), which attends over the cached tokens and the new ones and returns (output, the updated
cache). The model never imports the inference package; the cache object carries that logic.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from longctx_jax.attention import (
    AttentionMask,
    attention,
    attention_weights,
    string_attention,
    string_weights,
)
from longctx_jax.attention.ring import context_parallel_attention
from longctx_jax.model.config import layer_window, rope_scaling_kwargs
from longctx_jax.model.layers import RMSNorm, normal_init
from longctx_jax.model.linear_mixer import GatedLinearAttention
from longctx_jax.model.sparse_block import lightning_indexer, sparse_topk_attention
from longctx_jax.positions import alibi_slopes, apply_rope, rope_frequencies


def attend(q_BTNH, k_BSKH, v_BSKH, *, mask: AttentionMask, cfg, capture=None):
    """The model's single attention call; `capture(name, value)` receives the probabilities.

    Returns [B, T, N, H] in q's dtype. With `capture`, also computes `attention_weights` (float32
    [B, N, T, S], O(T*S) memory) and hands them over; without it, nothing extra is computed.
    """
    slopes = model_alibi_slopes(cfg)
    options = dict(mask=mask, logits_soft_cap=cfg.attention.logits_soft_cap, alibi_slopes=slopes)
    if capture is not None:
        capture("attention_weights", attention_weights(q_BTNH, k_BSKH, v_BSKH, **options))
    axis = context_parallel_axis()
    if axis is None:
        return attention(q_BTNH, k_BSKH, v_BSKH, impl=cfg.attention.impl, **options)
    return context_parallel_attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mesh=jax.sharding.get_abstract_mesh(),
        axis_name=axis,
        strategy=cfg.attention.context_parallel,
        impl=cfg.attention.impl,
        **options,
    )


def string_attend(q_BTNH, q_far_BTNH, k_BSKH, v_BSKH, *, mask: AttentionMask, cfg, capture=None):
    """`attend` for STRING (position.string_shift > 0): q_far_BTNH is q rotated at
    q_pos - string_shift + string_window; `capture` as in `attend`."""
    axis = context_parallel_axis()
    if axis is not None:
        raise ValueError(
            f"model.position.string_shift={cfg.position.string_shift} with the logical axis "
            f"'length' sharded over mesh axis {axis!r}: STRING has no context-parallel "
            "implementation; expected 'length' unsharded (mesh.sequence=1)"
        )
    options = dict(
        shift=cfg.position.string_shift, mask=mask, logits_soft_cap=cfg.attention.logits_soft_cap
    )
    if capture is not None:
        capture("attention_weights", string_weights(q_BTNH, q_far_BTNH, k_BSKH, v_BSKH, **options))
    return string_attention(q_BTNH, q_far_BTNH, k_BSKH, v_BSKH, **options)


def model_alibi_slopes(cfg):
    """[num_heads] ALiBi slopes for position.kind "alibi", else None."""
    return alibi_slopes(cfg.num_heads) if cfg.position.kind == "alibi" else None


def context_parallel_axis() -> str | None:
    """The mesh axis that the logical `length` axis is sharded over, if it spans more than one
    device of the current mesh under the current `nn.logical_axis_rules`; else None."""
    mesh = jax.sharding.get_abstract_mesh()
    axis = nn.logical_to_mesh_axes(("length",))[0]
    if mesh.empty or axis is None:
        return None
    if isinstance(axis, tuple):
        raise ValueError(
            f"logical axis 'length' -> mesh axes {axis}: context parallelism needs one mesh axis"
        )
    return axis if mesh.shape[axis] > 1 else None


def _check_linear_supported(capture_attention: bool) -> None:
    """ValueError for what attention.kind="linear" cannot do (see model/linear_mixer.py)."""
    if capture_attention:
        raise ValueError(
            "capture_attention=True: model.attention.kind='linear' has no attention "
            "probabilities to capture; expected capture_attention=False"
        )
    axis = context_parallel_axis()
    if axis is not None:
        raise ValueError(
            f"model.attention.kind='linear' with the logical axis 'length' sharded over mesh axis "
            f"{axis!r}: context parallelism is not supported for the linear mixer; expected "
            "'length' unsharded (mesh.sequence=1)"
        )


def rope_for_length(cfg, seq_len: int):
    """(inv_freq [rotary_dim // 2] float32, attention_factor) for inputs of length seq_len."""
    return rope_frequencies(
        cfg.head_dim,
        base=cfg.position.rope_base,
        kind=cfg.position.rope_kind,
        seq_len=seq_len,
        **rope_scaling_kwargs(cfg),
    )


class SelfAttention(nn.Module):
    """Pre-normed input [B, T, embed] -> attention output [B, T, embed]."""

    cfg: object  # a validated, frozen model config (see `DecoderLM`)
    layer: int = 0  # the block's index: selects its window from attention.layer_windows

    @nn.compact
    def __call__(
        self, x_BTD, positions_BT, segment_ids_BT=None, capture_attention=False, cache=None
    ):
        """Output [B, T, embed]; with `cache`, (output, updated cache) (module docstring)."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, n, kh, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5

        def kernel(name, std, names, shape):
            return self.param(name, normal_init(std, names), shape, param_dtype).astype(dtype)

        def bias(name, names, shape):
            init = nn.with_logical_partitioning(nn.initializers.zeros_init(), names)
            return self.param(name, init, shape, param_dtype).astype(dtype)

        wq_DNH = kernel("query", cfg.init_std, ("embed", "heads", "head_dim"), (d, n, h))
        wk_DKH = kernel("key", cfg.init_std, ("embed", "kv_heads", "head_dim"), (d, kh, h))
        wv_DKH = kernel("value", cfg.init_std, ("embed", "kv_heads", "head_dim"), (d, kh, h))
        wo_NHD = kernel("out", out_std, ("heads", "head_dim", "embed"), (n, h, d))

        x_BTD = x_BTD.astype(dtype)
        q_BTNH = jnp.einsum("btd,dnh->btnh", x_BTD, wq_DNH)
        k_BTKH = jnp.einsum("btd,dkh->btkh", x_BTD, wk_DKH)
        v_BTKH = jnp.einsum("btd,dkh->btkh", x_BTD, wv_DKH)
        if cfg.attention.qkv_bias:
            q_BTNH = q_BTNH + bias("query_bias", ("heads", "head_dim"), (n, h))
            k_BTKH = k_BTKH + bias("key_bias", ("kv_heads", "head_dim"), (kh, h))
            v_BTKH = v_BTKH + bias("value_bias", ("kv_heads", "head_dim"), (kh, h))
        if cfg.attention.qk_norm:
            norm = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
            q_BTNH = RMSNorm(**norm, axis_name="head_dim", name="query_norm")(q_BTNH)
            k_BTKH = RMSNorm(**norm, axis_name="head_dim", name="key_norm")(k_BTKH)

        def project_out(out_BTNH):
            out_BTD = jnp.einsum("btnh,nhd->btd", out_BTNH, wo_NHD)
            if cfg.attention.out_bias:
                out_BTD = out_BTD + bias("out_bias", ("embed",), (d,))
            return out_BTD

        string = cfg.position.string_shift > 0
        if string and cache is not None:
            raise ValueError(
                f"model.position.string_shift={cfg.position.string_shift}: STRING is not "
                "supported with a KV cache (decoding); expected 0 (evaluate STRING with full "
                "forward passes)"
            )
        rope_length = x_BTD.shape[1] if cache is None else cache.rope_length
        if cfg.position.kind == "rope":
            inv_freq, attention_factor = rope_for_length(cfg, rope_length)
            rope = dict(attention_factor=attention_factor, layout=cfg.position.layout)
            if string:
                offset = cfg.position.string_shift - cfg.position.string_window
                q_far_BTNH = apply_rope(q_BTNH, positions_BT - offset, inv_freq, **rope)
            q_BTNH = apply_rope(q_BTNH, positions_BT, inv_freq, **rope)
            k_BTKH = apply_rope(k_BTKH, positions_BT, inv_freq, **rope)

        q_BTNH = nn.with_logical_constraint(q_BTNH, ("batch", "length", "heads", "head_dim"))
        kv_names = ("batch", "kv_length", "kv_heads", "head_dim")
        k_BTKH = nn.with_logical_constraint(k_BTKH, kv_names)
        v_BTKH = nn.with_logical_constraint(v_BTKH, kv_names)

        if cache is not None:
            out_BTNH, cache = self._with_cache(
                cache, x_BTD, q_BTNH, k_BTKH, v_BTKH, positions_BT, segment_ids_BT, rope_length
            )
            return project_out(out_BTNH), cache

        mask = AttentionMask(
            causal=True,
            window=layer_window(cfg, self.layer),
            q_positions=positions_BT,
            kv_positions=positions_BT,
            q_segment_ids=segment_ids_BT,
            kv_segment_ids=segment_ids_BT,
        )
        capture = self._capture if capture_attention else None
        if cfg.attention.kind == "linear":
            _check_linear_supported(capture_attention)
            out_BTNH = GatedLinearAttention(cfg, name="linear")(
                x_BTD, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT
            )
        elif cfg.attention.kind == "sparse_topk":
            out_BTNH = sparse_topk_attention(
                self,
                x_BTD,
                q_BTNH,
                k_BTKH,
                v_BTKH,
                mask=mask,
                positions_BT=positions_BT,
                cfg=cfg,
                dense=functools.partial(attend, cfg=cfg, capture=capture),
            )
        elif string:
            out_BTNH = string_attend(
                q_BTNH, q_far_BTNH, k_BTKH, v_BTKH, mask=mask, cfg=cfg, capture=capture
            )
        else:
            out_BTNH = attend(q_BTNH, k_BTKH, v_BTKH, mask=mask, cfg=cfg, capture=capture)
        out_BTNH = nn.with_logical_constraint(out_BTNH, ("batch", "length", "heads", "head_dim"))
        return project_out(out_BTNH)

    def _with_cache(self, cache, x_BTD, q, k, v, positions_BT, segment_ids_BT, rope_length):
        """(output [B, T, N, H], updated cache) for the new tokens x against `cache`."""
        cfg = self.cfg
        if cfg.attention.kind == "linear":
            mixer = GatedLinearAttention(cfg, name="linear")
            return cache.mix(mixer, x_BTD, q, k, v, segment_ids_BT)
        features = None
        if cfg.attention.kind == "sparse_topk":
            indexer = lightning_indexer(cfg, name="indexer")
            features = indexer(x_BTD, positions_BT, seq_len=rope_length)
        return cache.attend(
            q,
            k,
            v,
            positions=positions_BT,
            segment_ids=segment_ids_BT,
            window=layer_window(cfg, self.layer),
            index_features=features,
        )

    def _capture(self, name: str, value: jax.Array) -> None:
        self.sow("intermediates", name, value)
