"""The model's STRING option (position.string_shift / string_window): far pairs score as plain
RoPE at d - S + W, a shift beyond the sequence is plain RoPE, what it refuses, config checks."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_testlib import random_params, random_tokens, tiny_config

from longctx_jax.inference.generate import cached_logits
from longctx_jax.model import DecoderLM, attention_maps, validate_model_config

B, T = 2, 20
SHIFT, WINDOW = 8, 3


def string_config(shift=SHIFT, window=WINDOW, **more):
    return tiny_config({"position.string_shift": shift, "position.string_window": window, **more})


def logits(cfg, params, tokens):
    return np.asarray(DecoderLM(cfg).apply({"params": params}, tokens))


def test_shift_beyond_the_sequence_is_plain_rope(seed):
    plain = tiny_config()
    params = random_params(plain, seed)["params"]
    tokens = random_tokens(np.random.default_rng(seed), B, T)
    expected = logits(plain, params, tokens)
    got = logits(string_config(shift=T), params, tokens)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(logits(string_config(), params, tokens) - expected).max() > 1e-3


def test_far_pairs_score_as_plain_rope_at_d_minus_shift_plus_window(seed):
    """The last query row of a 1-layer model (its q, k depend on positions only through RoPE):
    with STRING, key n scores as in the plain model with that query moved to T-1 - S + W if
    d = T-1 - n >= S, and as in the plain model otherwise. log p(n) - log p(self) compares
    scores without the normaliser (the self pair is at distance 0 in every run)."""
    plain = tiny_config({"num_layers": 1})
    params = random_params(plain, seed)
    tokens = random_tokens(np.random.default_rng(seed), B, T)
    last = T - 1

    def last_row(cfg, positions, keys):
        """log p(key) - log p(self) in the last query row, [B, N, len(keys)]."""
        _, state = DecoderLM(cfg).apply(
            params,
            tokens,
            positions=jnp.broadcast_to(jnp.asarray(positions, jnp.int32), (B, T)),
            capture_attention=True,
            mutable=["intermediates"],
        )
        p = np.asarray(attention_maps(state)[0, :, :, last], np.float64)
        return np.log(p[..., keys]) - np.log(p[..., last:])

    arange = np.arange(T)
    far, near = last - arange >= SHIFT, last - arange < SHIFT
    moved = np.where(arange == last, last - SHIFT + WINDOW, arange)
    string = string_config(num_layers=1)
    want_far = last_row(plain, moved, far)
    np.testing.assert_allclose(last_row(string, arange, far), want_far, atol=1e-4)
    want_near = last_row(plain, arange, near)
    np.testing.assert_allclose(last_row(string, arange, near), want_near, atol=1e-4)
    assert np.abs(want_far - last_row(plain, arange, far)).max() > 1e-2  # STRING changes them


def test_kv_cache_is_refused(seed):
    cfg = string_config()
    params = random_params(cfg, seed)
    with pytest.raises(ValueError, match="string_shift=8: STRING is not supported with a KV"):
        cached_logits(cfg, params, jnp.zeros((1, T), jnp.int32))


STRING_ON = {"position.string_shift": 5, "position.string_window": 2}


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"position.string_shift": -1}, "model.position.string_shift=-1"),
        ({"position.string_shift": 1.5}, "model.position.string_shift=1.5"),
        ({"position.string_window": -2}, "model.position.string_window=-2"),
        ({"position.string_shift": 5}, "model.position.string_window=0"),
        ({**STRING_ON, "position.string_window": 5}, "model.position.string_window=5"),
        ({**STRING_ON, "position.kind": "alibi"}, "model.position.kind='alibi'"),
        ({**STRING_ON, "attention.kind": "linear"}, "model.attention.kind='linear'"),
        ({**STRING_ON, "attention.kind": "sparse_topk"}, "model.attention.kind='sparse_topk'"),
    ],
    ids=lambda x: str(x)[:60],
)
def test_config_checks_name_the_field(overrides, named):
    validate_model_config(tiny_config(STRING_ON))
    # Not type-safe, so that wrong types reach the validator.
    cfg = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match="model") as info:
        validate_model_config(cfg)
    assert named in str(info.value), f"error {info.value!s} does not name {named}"
