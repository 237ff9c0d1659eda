"""with_eval_rope: every kind builds a model, is plain RoPE up to train_len, and scales as its
formula says beyond it."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from eval_testlib import module_seed, tiny_model_config

from longctx_jax.eval.perplexity import EVAL_ROPE_KINDS, with_eval_rope
from longctx_jax.model import DecoderLM
from longctx_jax.model.attention_block import rope_for_length

TRAIN_LEN, EVAL_LEN = 16, 64
SCALED = [k for k in EVAL_ROPE_KINDS if k not in ("default", "string")]  # rescale frequencies


@pytest.fixture(scope="module")
def setup():
    seed = module_seed("setup")
    cfg = tiny_model_config()
    params = DecoderLM(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = jnp.asarray(np.random.default_rng(seed).integers(0, 256, (2, EVAL_LEN)), jnp.int32)
    return cfg, params, tokens


def logits(cfg, params, tokens, positions=None):
    return np.asarray(DecoderLM(cfg).apply({"params": params}, tokens, positions=positions))


@pytest.mark.parametrize("kind", SCALED)
def test_plain_rope_up_to_train_len_and_different_beyond(setup, kind):
    cfg, params, tokens = setup
    short = tokens[:, :TRAIN_LEN]
    same = with_eval_rope(cfg, kind, TRAIN_LEN, TRAIN_LEN)  # factor 1: plain RoPE
    np.testing.assert_allclose(logits(same, params, short), logits(cfg, params, short), atol=1e-5)

    scaled = with_eval_rope(cfg, kind, TRAIN_LEN, EVAL_LEN)
    assert scaled.position.rope_kind == kind
    diff = np.abs(logits(scaled, params, tokens) - logits(cfg, params, tokens))
    assert diff[:, TRAIN_LEN:].max() > 1e-2  # beyond train_len the schemes differ from RoPE


def test_linear_is_positions_divided_by_factor(setup):
    cfg, params, tokens = setup
    factor = EVAL_LEN // TRAIN_LEN
    pi = with_eval_rope(cfg, "linear", TRAIN_LEN, EVAL_LEN)
    short = tokens[:, :TRAIN_LEN]
    positions = jnp.broadcast_to(factor * jnp.arange(TRAIN_LEN, dtype=jnp.int32), short.shape)
    np.testing.assert_allclose(
        logits(pi, params, short, positions), logits(cfg, params, short), atol=1e-4
    )


def test_ntk_and_dynamic_are_a_larger_base(setup):
    cfg, params, tokens = setup
    d = cfg.head_dim
    scale = EVAL_LEN / TRAIN_LEN
    bigger_base = cfg.copy_and_resolve_references()
    bigger_base.position.rope_base = cfg.position.rope_base * scale ** (d / (d - 2))
    expected = logits(bigger_base, params, tokens)
    for kind in ("ntk", "dynamic"):
        got = logits(with_eval_rope(cfg, kind, TRAIN_LEN, EVAL_LEN), params, tokens)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=kind)
    # Dynamic scales with the pass length: a pass of train_len tokens is plain RoPE.
    dynamic = with_eval_rope(cfg, "dynamic", TRAIN_LEN, EVAL_LEN)
    short = tokens[:, :TRAIN_LEN]
    np.testing.assert_allclose(
        logits(dynamic, params, short), logits(cfg, params, short), atol=1e-5
    )


def _frequencies(cfg, seq_len):
    inv_freq, attention_factor = rope_for_length(ml_collections.FrozenConfigDict(cfg), seq_len)
    return np.asarray(inv_freq, np.float64), attention_factor


def test_yarn_keeps_fast_dims_and_interpolates_slow_ones():
    """Checked at a realistic size (head_dim 64, 2048 -> 8192): the YaRN paper's ramp."""
    cfg = tiny_model_config(head_dim=64)
    train_len, eval_len, base = 2048, 8192, cfg.position.rope_base
    yarn = with_eval_rope(cfg, "yarn", train_len, eval_len)
    DecoderLM(yarn)  # accepted by the model
    inv_freq, attention_factor = _frequencies(yarn, eval_len)
    plain = 1.0 / base ** (np.arange(0, 64, 2) / 64)
    factor = eval_len / train_len

    def correction_dim(rotations):  # dims whose wavelength fits `rotations` times in train_len
        return 64 * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = math.floor(correction_dim(32.0)), math.ceil(correction_dim(1.0))
    index = np.arange(32)
    fast, slow = index < low, index > high
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    np.testing.assert_allclose(inv_freq[fast], plain[fast], rtol=1e-6)  # extrapolated
    np.testing.assert_allclose(inv_freq[slow], plain[slow] / factor, rtol=1e-6)  # interpolated
    ramp = ~fast & ~slow
    assert np.all(inv_freq[ramp] <= plain[ramp] * (1 + 1e-6))
    assert np.all(inv_freq[ramp] >= plain[ramp] / factor * (1 - 1e-6))
    np.testing.assert_allclose(attention_factor, 0.1 * math.log(factor) + 1.0, rtol=1e-12)


def test_llama3_keeps_short_wavelengths_and_divides_long_ones():
    cfg = tiny_model_config(head_dim=64)
    train_len, eval_len, base = 2048, 8192, cfg.position.rope_base
    inv_freq, attention_factor = _frequencies(
        with_eval_rope(cfg, "llama3", train_len, eval_len), eval_len
    )
    plain = 1.0 / base ** (np.arange(0, 64, 2) / 64)
    wavelength = 2 * math.pi / plain
    short, long = wavelength < train_len / 4.0, wavelength > train_len / 1.0
    assert short.any() and long.any()
    np.testing.assert_allclose(inv_freq[short], plain[short], rtol=1e-6)
    np.testing.assert_allclose(inv_freq[long], plain[long] / 4.0, rtol=1e-6)
    assert attention_factor == 1.0


def test_type_preserved_input_untouched_and_errors():
    cfg = tiny_model_config()
    frozen = ml_collections.FrozenConfigDict(cfg)
    out = with_eval_rope(frozen, "yarn", 16, 64, beta_fast=16.0)
    assert isinstance(out, ml_collections.FrozenConfigDict)
    assert out.position.rope_scaling.beta_fast == 16.0
    assert out.position.rope_scaling.original_max_position_embeddings == 16
    mutable = with_eval_rope(cfg, "linear", 16, 64)
    assert type(mutable) is ml_collections.ConfigDict
    assert mutable.position.rope_scaling.factor == 4.0
    assert cfg.position.rope_kind == "default" and cfg.position.rope_scaling.factor is None
    with pytest.raises(ValueError, match="kind"):
        with_eval_rope(cfg, "longrope", 16, 64)
    with pytest.raises(ValueError, match="rope_kind='default'"):
        with_eval_rope(tiny_model_config(**{"position.kind": "alibi"}), "yarn", 16, 64)
    with pytest.raises(ValueError, match="not a model.position.rope_scaling field"):
        with_eval_rope(cfg, "linear", 16, 64, scale=2.0)


def test_string_sets_shift_and_window_at_every_length():
    cfg = tiny_model_config()
    for eval_len in (24, 48, 96):  # within and beyond train_len = 48
        string = with_eval_rope(cfg, "string", 48, eval_len)
        assert (string.position.string_shift, string.position.string_window) == (16, 6)
        assert string.position.rope_kind == "default"
    frozen = with_eval_rope(ml_collections.FrozenConfigDict(cfg), "string", 48, 96, window=3)
    assert isinstance(frozen, ml_collections.FrozenConfigDict)
    assert (frozen.position.string_shift, frozen.position.string_window) == (16, 3)
    assert with_eval_rope(cfg, "string", 4096, 8192).position.string_window == 128
    assert cfg.position.string_shift == 0
    with pytest.raises(ValueError, match="unexpected arguments \\['factor'\\]"):
        with_eval_rope(cfg, "string", 48, 96, factor=2.0)
    with pytest.raises(ValueError, match="model.position.string_window=16"):
        with_eval_rope(cfg, "string", 48, 96, window=16)
    with pytest.raises(ValueError, match="string_shift=16"):  # STRING is not extended again
        with_eval_rope(with_eval_rope(cfg, "string", 48, 96), "yarn", 48, 96)
