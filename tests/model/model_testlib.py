"""Helpers shared by the model tests: a tiny config, random inputs, jitted init/apply."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tiny_models import tiny_model_config

from longctx_jax.model import DecoderLM


def tiny_config(overrides: dict | None = None):
    """The shared tiny model config (tests/tiny_models.py); `overrides` use dotted names."""
    return tiny_model_config(overrides)


def random_tokens(rng: np.random.Generator, batch: int, length: int, vocab: int = 256):
    return jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)


def packed_segments(rng: np.random.Generator, batch: int, length: int, docs: int = 3):
    """(segment_ids, positions) int32 [batch, length]: `docs` documents per row, random cuts."""
    segment_ids, positions = [], []
    for _ in range(batch):
        cuts = np.sort(rng.choice(np.arange(1, length), size=docs - 1, replace=False))
        seg = np.zeros(length, np.int32)
        for cut in cuts:
            seg[cut:] += 1
        starts = np.concatenate([[0], cuts])
        segment_ids.append(seg)
        positions.append(np.arange(length) - starts[seg])
    return jnp.asarray(np.stack(segment_ids), jnp.int32), jnp.asarray(
        np.stack(positions), jnp.int32
    )


def abstract_params(cfg, length: int = 8):
    """The boxed parameter tree (LogicallyPartitioned leaves) of DecoderLM(cfg), shapes only."""
    tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
    return jax.eval_shape(DecoderLM(cfg).init, jax.random.key(0), tokens)


def random_params(cfg, seed: int, std: float = 0.3):
    """Unboxed parameters with the model's tree and shapes, drawn from numpy (no compilation).

    Matrices ~ normal(std); RMSNorm scales ~ 1 + normal(0.1). The model's own initialiser is
    tested in test_model_shapes; everything else runs on these fresh random draws.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            values = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:
            values = std * rng.standard_normal(leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract_params(cfg)))


@functools.cache
def _apply_fn(frozen_cfg, method: str | None, capture: bool):
    model = DecoderLM(frozen_cfg)
    if capture:
        return jax.jit(
            lambda p, x, **kw: model.apply(
                p, x, capture_attention=True, mutable=["intermediates"], **kw
            )
        )
    return jax.jit(lambda p, x, **kw: model.apply(p, x, method=method, **kw))


def apply(cfg, params, x, *, method=None, capture=False, **kwargs):
    """Jitted DecoderLM(cfg).apply, one compiled function per (config, method) and shapes."""
    return _apply_fn(DecoderLM(cfg).config, method, capture)(params, x, **kwargs)


def assert_close(actual, expected, tol: float = 1e-5, what: str = ""):
    """|actual - expected| <= tol * (|expected| + max|expected|): float32 rounding, scale-aware."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max()) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)
