"""The lightning indexer's RoPE follows the model's position scheme: DeepSeek-V3.2's indexer
rotates its first rope dims by its MLA's YaRN-scaled frequencies (no mscale, half-split layout),
and under NoPE it rotates nothing. Checked against float64 numpy written from the formulas."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import apply, random_params, random_tokens, tiny_config

from longctx_jax.attention import AttentionMask
from longctx_jax.attention.sparse import index_scores
from longctx_jax.model import DecoderLM
from longctx_jax.model.sparse_block import index_score_maps, lightning_indexer

B, T, D = 2, 40, 32  # D: the tiny model's embed_dim
HEADS, DIM, ROPE_DIM, BASE = 2, 16, 8, 10000.0


def sparse_config(position_kind="rope", rope_kind="default", layout="half", **scaling):
    overrides = {
        "attention.kind": "sparse_topk",
        "attention.sparse.index_heads": HEADS,
        "attention.sparse.index_head_dim": DIM,
        "attention.sparse.index_rope_dim": ROPE_DIM,
        "position.kind": position_kind,
        "position.rope_kind": rope_kind,
        "position.layout": layout,
    }
    overrides.update({f"position.rope_scaling.{k}": v for k, v in scaling.items()})
    return tiny_config(overrides)


def plain_freq(base=BASE):
    return base ** (-np.arange(0, ROPE_DIM, 2) / ROPE_DIM)


def linear_freq(factor):
    return plain_freq() / factor


def yarn_freq(factor, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0):
    """DeepSeek's `precompute_freqs_cis` for a rotary dim of ROPE_DIM: interpolate (divide by
    factor) the slow dims, keep the fast ones, a linear ramp in between; no mscale."""

    def correction_dim(rotations):
        wavelengths = original_max_position_embeddings / (rotations * 2 * math.pi)
        return ROPE_DIM * math.log(wavelengths) / (2 * math.log(BASE))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), ROPE_DIM - 1)
    ramp = np.clip((np.arange(ROPE_DIM // 2) - low) / max(high - low, 1e-3), 0.0, 1.0)
    return plain_freq() / factor * ramp + plain_freq() * (1 - ramp)


def dynamic_freq(factor, max_position_embeddings):
    """Dynamic NTK at the input length T: base * scale ** (d / (d - 2))."""
    scale = factor * T / max_position_embeddings - (factor - 1)
    return plain_freq(BASE * scale ** (ROPE_DIM / (ROPE_DIM - 2)))


def numpy_scores(params, x, positions, freq):
    """Index scores [B, T, T] float64, causal; RoPE with `freq` on the first ROPE_DIM dims in the
    half-split layout, or no rotation when freq is None."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    q = np.einsum("btd,dji->btji", x, p["query"])
    k = np.einsum("btd,di->bti", x, p["key"])
    k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6)
    k = k * p["key_norm_scale"] + p["key_norm_bias"]
    w = np.einsum("btd,dj->btj", x, p["weights"]) / np.sqrt(HEADS * DIM)
    if freq is not None:
        half = ROPE_DIM // 2
        angle = np.asarray(positions, np.float64)[..., None] * freq  # [B, T, half]

        def rotate(v, angle):
            a, b = v[..., :half], v[..., half:ROPE_DIM]
            cos, sin = np.cos(angle), np.sin(angle)
            return np.concatenate([a * cos - b * sin, b * cos + a * sin, v[..., ROPE_DIM:]], -1)

        q, k = rotate(q, angle[:, :, None]), rotate(k, angle)
    dots = np.einsum("btji,bsi->btjs", q, k)
    scores = np.einsum("btjs,btj->bts", np.maximum(dots, 0.0), w)
    return np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)


def indexer_scores(cfg, seed):
    """(index scores from the model's indexer, params, x, positions) on fresh random inputs."""
    rng = np.random.default_rng(seed)
    module = lightning_indexer(cfg)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4, D)), jnp.zeros((1, 4)))
    draw = lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape) * 0.5, jnp.float32)  # noqa: E731
    params = jax.tree.map(draw, nn.unbox(shapes["params"]))
    x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(T) + int(rng.integers(0, 100)), (B, T))
    features = module.apply({"params": params}, x, positions)
    return index_scores(*features, AttentionMask(causal=True)), params, x, positions


def assert_scores(got, want, seed, what):
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"[seed={seed}] {what} mask")
    np.testing.assert_allclose(
        np.asarray(got)[finite], want[finite], rtol=1e-4, atol=1e-4, err_msg=f"[seed={seed}] {what}"
    )


@pytest.mark.parametrize(
    "rope_kind, layout, scaling, freq",
    [
        # the model's partial_rotary_factor and interleaved layout do not reach the indexer
        ("linear", "interleaved", dict(factor=4.0, partial_rotary_factor=0.5), linear_freq(4.0)),
        ("yarn", "half", dict(factor=8.0, original_max_position_embeddings=16), yarn_freq(8, 16)),
        ("dynamic", "half", dict(factor=4.0, max_position_embeddings=16), dynamic_freq(4, 16)),
    ],
)
def test_indexer_rope_uses_the_models_scheme(rope_kind, layout, scaling, freq, seed):
    cfg = sparse_config("rope", rope_kind, layout, **scaling)
    got, params, x, positions = indexer_scores(cfg, seed)
    assert_scores(got, numpy_scores(params, x, positions, freq), seed, rope_kind)
    plain = numpy_scores(params, x, positions, plain_freq())
    finite = np.isfinite(plain)
    gap = np.max(np.abs(np.asarray(got)[finite] - plain[finite]))
    assert gap > 1e-2, f"[seed={seed}] {rope_kind} scores equal plain RoPE's (gap {gap})"


def test_indexer_under_nope_rotates_nothing(seed):
    got, params, x, positions = indexer_scores(sparse_config("nope"), seed)
    assert_scores(got, numpy_scores(params, x, positions, None), seed, "nope")


def test_model_index_scores_follow_the_position_scheme(seed):
    """The first layer's indexer reads the same input under both schemes, so its sown scores
    differ only by the indexer's rotation."""
    yarn = dict(factor=8.0, original_max_position_embeddings=16)
    configs = [sparse_config("rope"), sparse_config("rope", "yarn", **yarn)]
    params = random_params(configs[0], seed)
    tokens = random_tokens(np.random.default_rng(seed), 1, T)
    maps = [index_score_maps(apply(cfg, params, tokens, capture=True)[1])[0] for cfg in configs]
    finite = np.isfinite(maps[0])
    assert np.max(np.abs(np.asarray(maps[0] - maps[1])[finite])) > 1e-3, f"[seed={seed}]"


@pytest.mark.parametrize(
    "rope_dim, overrides, message",
    [
        # longrope's factors are sized for the model's rotary dim (head_dim 8: 4 values)
        (
            4,
            {
                "position.rope_kind": "longrope",
                "position.rope_scaling.short_factor": [1.0] * 4,
                "position.rope_scaling.long_factor": [2.0] * 4,
                "position.rope_scaling.original_max_position_embeddings": 16,
                "position.rope_scaling.factor": 4.0,
            },
            "model.attention.sparse.index_rope_dim=4",
        ),
        (
            2,
            {"position.rope_kind": "ntk", "position.rope_scaling.factor": 2.0},
            "model.attention.sparse.index_rope_dim=2",
        ),
        # a broken scheme is reported as the model's, not the indexer's
        (8, {"position.rope_kind": "yarn", "position.rope_scaling.factor": 2.0}, "model.position"),
    ],
)
def test_a_scheme_that_does_not_fit_the_indexer_raises_value_error(rope_dim, overrides, message):
    cfg = sparse_config()
    cfg.attention.sparse.index_rope_dim = rope_dim
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        DecoderLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
