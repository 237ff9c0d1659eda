"""rope_frequencies against Hugging Face's own output (hf_golden.json) and closed forms."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.positions import ROPE_KINDS, rope_frequencies

GOLDEN = json.loads((pathlib.Path(__file__).parent / "hf_golden.json").read_text())
CASES = GOLDEN["cases"]
# In HF, max_position_embeddings comes from the model config; these kinds read it.
READS_MAX_POSITION = ("dynamic", "yarn", "longrope")


def call_with_hf_parameters(case):
    """rope_frequencies with the same numbers HF was given (None means 'absent')."""
    scaling = {
        name: value
        for name, value in case["rope_parameters"].items()
        if name not in ("rope_type", "rope_theta") and value is not None
    }
    if case["kind"] in READS_MAX_POSITION:
        scaling["max_position_embeddings"] = case["max_position_embeddings"]
    return rope_frequencies(
        case["head_dim"], base=case["base"], kind=case["kind"], seq_len=case["seq_len"], **scaling
    )


def golden(name):
    return next(case for case in CASES if case["name"] == name)


def test_golden_file_covers_every_hf_kind():
    assert GOLDEN["transformers_version"]
    hf_kinds = set(ROPE_KINDS) - {"ntk"}  # static NTK is not an HF kind: see test_ntk_*
    assert {case["kind"] for case in CASES} == hf_kinds


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_matches_hugging_face(case):
    inv_freq, attention_factor = call_with_hf_parameters(case)
    assert isinstance(inv_freq, jnp.ndarray) and inv_freq.dtype == jnp.float32
    assert isinstance(attention_factor, float)
    # HF computes in float32, we in float64 then round: a few float32 ulps apart at most.
    np.testing.assert_allclose(np.asarray(inv_freq), case["inv_freq"], rtol=1e-6, atol=0)
    assert attention_factor == pytest.approx(case["attention_factor"], rel=1e-12)


@pytest.mark.parametrize("head_dim,factor", [(128, 2.0), (64, 8.0), (96, 1.0)])
def test_ntk_closed_form(head_dim, factor):
    inv_freq, attention_factor = rope_frequencies(head_dim, base=10000.0, kind="ntk", factor=factor)
    new_base = 10000.0 * factor ** (head_dim / (head_dim - 2))
    expected = new_base ** -(np.arange(head_dim // 2, dtype=np.float64) * 2 / head_dim)
    np.testing.assert_allclose(np.asarray(inv_freq), expected, rtol=1e-6)
    assert attention_factor == 1.0
    # The highest frequency is untouched, the lowest slowed by exactly `factor`.
    default, _ = rope_frequencies(head_dim, base=10000.0)
    assert float(inv_freq[0]) == 1.0
    assert float(default[-1]) / float(inv_freq[-1]) == pytest.approx(factor, rel=1e-5)


def test_ntk_equals_hf_dynamic_where_the_dynamic_scale_is_the_factor():
    # HF dynamic NTK scales by factor * seq_len / max - (factor - 1); at 2 * 6144 / 4096 - 1 = 2
    # that is static NTK with factor 2.
    case = golden("dynamic_above_max_ntk2")
    assert (case["rope_parameters"]["factor"], case["seq_len"]) == (2.0, 6144)
    assert case["max_position_embeddings"] == 4096
    inv_freq, _ = rope_frequencies(case["head_dim"], base=case["base"], kind="ntk", factor=2.0)
    np.testing.assert_allclose(np.asarray(inv_freq), case["inv_freq"], rtol=1e-6)


def test_dynamic_without_seq_len_is_default_rope():
    default, _ = rope_frequencies(64, base=10000.0)
    dynamic, _ = rope_frequencies(
        64, base=10000.0, kind="dynamic", factor=4.0, max_position_embeddings=2048
    )
    np.testing.assert_array_equal(np.asarray(dynamic), np.asarray(default))


def test_partial_rotary_returns_frequencies_of_the_rotary_dim():
    partial, _ = rope_frequencies(128, kind="linear", factor=2.0, partial_rotary_factor=0.25)
    full_of_32, _ = rope_frequencies(32, kind="linear", factor=2.0)
    np.testing.assert_array_equal(np.asarray(partial), np.asarray(full_of_32))


LONGROPE = dict(
    original_max_position_embeddings=4096,
    max_position_embeddings=131072,
    short_factor=[1.0] * 32,
    long_factor=[2.0] * 32,
)


@pytest.mark.parametrize(
    "head_dim,kwargs,name",
    [
        (64, dict(kind="rotary"), "kind"),
        (63, {}, "head_dim"),
        (0, {}, "head_dim"),
        (64.0, {}, "head_dim"),
        (64, dict(base=-1.0), "base"),
        (64, dict(base=1.0), "base"),
        (64, dict(partial_rotary_factor=0.0), "partial_rotary_factor"),
        (64, dict(partial_rotary_factor=1.5), "partial_rotary_factor"),
        (64, dict(partial_rotary_factor=0.3), "partial_rotary_factor"),  # int(19.2) is odd
        (64, dict(kind="linear"), "factor"),
        (64, dict(kind="linear", factor=0.5), "factor"),
        (64, dict(kind="ntk", factor=0.9), "factor"),
        (2, dict(kind="ntk", factor=2.0), "head_dim"),
        (64, dict(kind="default", factor=2.0), "factor"),  # not read by default: likely a mistake
        (64, dict(kind="linear", factor=2.0, seq_len=0), "seq_len"),
        (64, dict(kind="dynamic", factor=2.0), "max_position_embeddings"),
        (
            64,
            dict(kind="dynamic", factor=2.0, max_position_embeddings=0),
            "max_position_embeddings",
        ),
        (64, dict(kind="yarn", factor=4.0), "original_max_position_embeddings"),
        (64, dict(kind="yarn", original_max_position_embeddings=4096), "factor"),
        (
            64,
            dict(kind="yarn", original_max_position_embeddings=8192, max_position_embeddings=4096),
            "factor",
        ),
        (
            64,
            dict(kind="yarn", factor=4.0, original_max_position_embeddings=4096, beta_fast=0.5),
            "beta_fast",
        ),
        (
            64,
            dict(kind="yarn", factor=4.0, original_max_position_embeddings=4096, beta_slow=0.0),
            "beta_slow",
        ),
        (
            64,
            dict(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
            "original_max_position_embeddings",
        ),
        (
            64,
            dict(
                kind="llama3",
                factor=8.0,
                low_freq_factor=4.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
            "high_freq_factor",
        ),
        (64, dict(kind="longrope", **{**LONGROPE, "short_factor": [1.0] * 31}), "short_factor"),
        (64, dict(kind="longrope", **{**LONGROPE, "long_factor": [1.0] * 64}), "long_factor"),
        (
            64,
            dict(kind="longrope", partial_rotary_factor=0.5, **LONGROPE),  # lists need 16 now
            "short_factor",
        ),
        (64, dict(kind="longrope", **{**LONGROPE, "attention_factor": -1.0}), "attention_factor"),
        (
            64,
            dict(kind="longrope", **{**LONGROPE, "max_position_embeddings": None}),
            "max_position_embeddings",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(head_dim, kwargs, name):
    with pytest.raises(ValueError, match=name):
        rope_frequencies(head_dim, **kwargs)


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ValueError, match="'rotary'.*default.*longrope"):
        rope_frequencies(64, kind="rotary")
