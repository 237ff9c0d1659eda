"""`DecoderLM`: a pre-norm decoder-only transformer, every knob from the `model` config.

    embed tokens -> num_layers x [x += attn(norm(x)); x += swiglu(norm(x))] -> norm -> logits

Usage:
    model = DecoderLM(config.model)
    params = model.init(key, tokens)                      # tokens int [B, T]
    logits = model.apply(params, tokens, positions=..., segment_ids=...)   # float32 [B, T, vocab]

`positions` (default arange per row) and `segment_ids` (default: one document per row) are int
[B, T]; both go into the attention mask (causal on positions, attention only within a segment),
and positions drive RoPE / ALiBi. Note what that means for packed rows: with positions restarting
per document, pass segment_ids too (causality is defined on positions, so without them a token
could see a later document's tokens at smaller positions).

Two more entry points, for tests and notebooks:
  * `model.apply(params, tokens, method="embed")` and
    `model.apply(params, x_BTD, positions=..., method="decode")` split the model at the input
    embedding (e.g. to differentiate logits with respect to it);
  * `model.apply(params, tokens, capture_attention=True, mutable=["intermediates"])` also returns
    every layer's attention probabilities; `attention_maps(state)` stacks them [L, B, N, T, T].

Initialisation: embeddings, q/k/v, SwiGLU gate/up and an untied head ~ normal(init_std = 0.02);
the projections that write into the residual stream (attention out, SwiGLU down) ~
normal(init_std / sqrt(2 * num_layers)) (GPT-2 / Megatron), so the residual stream's variance at
init does not grow with depth; RMSNorm scales (the q/k norms' too) start at 1 and the optional
attention biases at 0. Inputs are not scaled by sqrt(embed_dim) (every block and the head start
with an RMSNorm).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from longctx_jax.model.attention_block import SelfAttention
from longctx_jax.model.config import validate_model_config
from longctx_jax.model.layers import Embedding, RMSNorm, SwiGLU


def freeze_model_config(config) -> ml_collections.FrozenConfigDict:
    """Validates a `model` config (ConfigDict or dict) and returns an immutable, hashable copy."""
    frozen = (
        config
        if isinstance(config, ml_collections.FrozenConfigDict)
        else ml_collections.FrozenConfigDict(config)
    )
    validate_model_config(frozen)
    return frozen


class DecoderBlock(nn.Module):
    """x + attn(norm(x)), then + swiglu(norm(x)); [B, T, embed] in and out."""

    cfg: Any
    layer: int = 0  # index in the stack (selects the layer's attention window)

    @nn.compact
    def __call__(
        self, x_BTD, positions_BT, segment_ids_BT, capture_attention: bool = False, cache=None
    ):
        """[B, T, embed] -> [B, T, embed]; with a layer `cache`, (output, updated cache)."""
        cfg = self.cfg
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        norm = dict(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
        h = RMSNorm(**norm, name="attention_norm")(x_BTD)
        attended = SelfAttention(cfg, self.layer, name="attention")(
            h, positions_BT, segment_ids_BT, capture_attention, cache
        )
        if cache is not None:
            attended, cache = attended
        x_BTD = x_BTD + attended
        x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
        h = RMSNorm(**norm, name="mlp_norm")(x_BTD)
        x_BTD = x_BTD + SwiGLU(
            mlp_dim=cfg.mlp_dim,
            init_std=cfg.init_std,
            out_init_std=cfg.init_std / (2 * cfg.num_layers) ** 0.5,
            dtype=dtype,
            param_dtype=param_dtype,
            name="mlp",
        )(h)
        x_BTD = nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))
        return x_BTD if cache is None else (x_BTD, cache)


class DecoderLM(nn.Module):
    """Decoder-only LM; `config` is the `model` sub-config (see `default_model_config`).

    The config is validated and frozen when the module is built: a bad value raises ValueError
    naming the field before anything is traced.
    """

    config: Any

    def __post_init__(self):
        object.__setattr__(self, "config", freeze_model_config(self.config))
        super().__post_init__()

    def setup(self):
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embedding = Embedding(
            vocab_size=cfg.vocab_size,
            embed_dim=cfg.embed_dim,
            init_std=cfg.init_std,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        # self, x, positions, segment_ids, capture_attention: the flag (index 4) is static.
        block = nn.remat(DecoderBlock, static_argnums=(4,)) if cfg.remat else DecoderBlock
        self.blocks = [block(cfg, layer) for layer in range(cfg.num_layers)]
        self.final_norm = RMSNorm(eps=cfg.norm_eps, dtype=dtype, param_dtype=param_dtype)
        if not cfg.tie_embeddings:
            self.head = self.param(
                "head",
                nn.with_logical_partitioning(
                    nn.initializers.normal(stddev=cfg.init_std), ("embed", "vocab")
                ),
                (cfg.embed_dim, cfg.vocab_size),
                param_dtype,
            )

    def __call__(
        self,
        tokens,
        *,
        positions=None,
        segment_ids=None,
        capture_attention: bool = False,
    ) -> jax.Array:
        """tokens int [B, T] -> logits float32 [B, T, vocab_size]."""
        return self.decode(
            self.embed(tokens),
            positions=positions,
            segment_ids=segment_ids,
            capture_attention=capture_attention,
        )

    def embed(self, tokens) -> jax.Array:
        """tokens int [B, T] -> input embeddings [B, T, embed_dim] in the activation dtype."""
        _check_ids("tokens", tokens, None)
        x_BTD = self.embedding(tokens)
        return nn.with_logical_constraint(x_BTD, ("batch", "length", "embed"))

    def decode(
        self,
        x_BTD,
        *,
        positions=None,
        segment_ids=None,
        capture_attention: bool = False,
    ) -> jax.Array:
        """Input embeddings [B, T, embed_dim] -> logits float32 [B, T, vocab_size]."""
        cfg = self.config
        shape = tuple(getattr(x_BTD, "shape", ()))
        if len(shape) != 3 or shape[2] != cfg.embed_dim:
            raise ValueError(
                f"x_BTD has shape {shape}: expected [batch, len, embed_dim={cfg.embed_dim}]"
            )
        b, t, _ = shape
        _check_ids("positions", positions, (b, t))
        _check_ids("segment_ids", segment_ids, (b, t))
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        x_BTD = x_BTD.astype(jnp.dtype(cfg.dtype))
        for block in self.blocks:
            x_BTD = block(x_BTD, positions, segment_ids, capture_attention)
        return self._logits(x_BTD)

    def extend(self, tokens, *, positions, segment_ids, caches):
        """New tokens int [B, T] against the per-layer KV caches -> (logits float32 [B, T, vocab],
        updated caches): prefill (a prompt or a chunk of it) and decode (T = 1 or a few).

        `caches` is a list of layer caches (longctx_jax/inference/cache.py); `segment_ids` -1
        marks padding (not attended, not written). See longctx_jax/inference/generate.py.
        """
        if len(caches) != self.config.num_layers:
            raise ValueError(
                f"caches has {len(caches)} layers: expected num_layers={self.config.num_layers}"
            )
        for layer, cache in enumerate(caches):
            if cache.model != self.config:
                raise ValueError(
                    f"caches[{layer}] was built for another model config: expected caches from "
                    "inference.allocate for this model"
                )
        b, t = tuple(getattr(tokens, "shape", (None, None)))[:2]
        _check_ids("positions", positions, (b, t))
        _check_ids("segment_ids", segment_ids, (b, t))
        x_BTD = self.embed(tokens)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            x_BTD, cache = block(x_BTD, positions, segment_ids, False, cache)
            new_caches.append(cache)
        return self._logits(x_BTD), new_caches

    def _logits(self, x_BTD) -> jax.Array:
        """Final norm and output head: [B, T, embed] -> logits float32 [B, T, vocab]."""
        cfg = self.config
        x_BTD = self.final_norm(x_BTD)
        if cfg.tie_embeddings:
            logits_BTV = self.embedding.attend(x_BTD)
        else:
            logits_BTV = jnp.einsum(
                "btd,dv->btv",
                x_BTD,
                self.head.astype(x_BTD.dtype),
                preferred_element_type=jnp.float32,
            )
        return nn.with_logical_constraint(logits_BTV, ("batch", "length", "vocab"))


def attention_maps(state) -> jax.Array:
    """Stacks the captured attention probabilities: [num_layers, B, N, T, T] float32.

    `state` is the second result of `apply(..., capture_attention=True, mutable=["intermediates"])`
    (or its "intermediates" entry).
    """
    intermediates = state.get("intermediates", state)
    layers = sorted(
        (name for name in intermediates if name.startswith("blocks_")),
        key=lambda name: int(name.split("_")[1]),
    )
    if not layers:
        raise ValueError(
            "state has no captured attention: call apply(..., capture_attention=True, "
            "mutable=['intermediates'])"
        )
    return jnp.stack([intermediates[n]["attention"]["attention_weights"][0] for n in layers])


def _check_ids(name: str, x, shape) -> None:
    """ValueError unless x is None (allowed for positions / segment_ids) or an int array."""
    if x is None:
        if shape is None:
            raise ValueError(f"{name}=None: expected an integer array [batch, len]")
        return
    x_shape, dtype = tuple(getattr(x, "shape", ())), getattr(x, "dtype", None)
    if len(x_shape) != 2 or (shape is not None and x_shape != shape):
        expected = "[batch, len]" if shape is None else f"[batch, len] = {shape}"
        raise ValueError(f"{name} has shape {x_shape}: expected {expected}")
    if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} has dtype {dtype}: expected an integer dtype")
