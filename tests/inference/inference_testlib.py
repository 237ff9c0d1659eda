"""Shared by the inference tests: tiny models, their parameters and full-forward logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tiny_models import tiny_model_config

from longctx_jax.model import DecoderLM
from longctx_jax.model.transformer import freeze_model_config

LONGROPE = {
    "position.rope_kind": "longrope",
    "position.rope_scaling.short_factor": [1.0, 1.5, 2.0, 3.0],
    "position.rope_scaling.long_factor": [2.0, 3.0, 4.0, 6.0],
    "position.rope_scaling.original_max_position_embeddings": 8,
    "position.rope_scaling.factor": 4.0,
}


def config(overrides: dict | None = None):
    return freeze_model_config(tiny_model_config(overrides))


def random_params(cfg, seed: int):
    return jax.jit(DecoderLM(cfg).init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))


def random_tokens(seed: int, batch: int, length: int) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, 256, (batch, length)), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg, params, tokens, positions=None):
    """The model's full forward logits [B, T, V] (the reference the cache path must equal)."""
    return DecoderLM(cfg).apply(params, tokens, positions=positions)
