"""The `model` config: defaults, validation errors that name the field, command-line overrides."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from model_testlib import apply, random_params, random_tokens, tiny_config

from longctx_jax.model import DecoderLM, default_model_config, validate_model_config

TRAINER_KEYS = [
    "vocab_size",
    "num_layers",
    "embed_dim",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "mlp_dim",
    "tie_embeddings",
    "dtype",
    "param_dtype",
    "attention.impl",
    "attention.logits_soft_cap",
    "attention.context_parallel",
    "position.kind",
    "position.rope_kind",
    "position.rope_base",
    "position.layout",
    "position.rope_scaling.factor",
    "position.rope_scaling.original_max_position_embeddings",
]


def test_default_config_has_the_documented_fields_and_is_valid():
    cfg = default_model_config()
    flat = cfg.to_dict()
    for key in TRAINER_KEYS:
        node = flat
        for part in key.split("."):
            assert part in node, f"default_model_config() lacks {key}"
            node = node[part]
    assert cfg.vocab_size == 256, "the default vocabulary is bytes"
    assert cfg.attention.logits_soft_cap is None
    assert all(v is None for v in cfg.position.rope_scaling.to_dict().values())
    validate_model_config(cfg)
    DecoderLM(cfg)  # builds


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"num_heads": 4, "num_kv_heads": 3}, "model.num_kv_heads=3"),
        ({"head_dim": 7}, "model.head_dim=7"),
        ({"position.kind": "learned"}, "model.position.kind='learned'"),
        ({"attention.impl": "flash"}, "model.attention.impl='flash'"),
        ({"attention.logits_soft_cap": -1.0}, "model.attention.logits_soft_cap=-1.0"),
        ({"attention.context_parallel": "tree"}, "model.attention.context_parallel='tree'"),
        ({"num_layers": 0}, "model.num_layers=0"),
        ({"dtype": "float64"}, "model.dtype='float64'"),
        ({"tie_embeddings": 1}, "model.tie_embeddings=1"),
        ({"position.rope_kind": "xpos"}, "model.position.rope_kind='xpos'"),
        ({"position.layout": "split"}, "model.position.layout='split'"),
        ({"position.rope_base": 1.0}, "model.position.rope_base=1.0"),
        ({"position.rope_kind": "yarn"}, "original_max_position_embeddings"),
        (
            {"position.rope_kind": "default", "position.rope_scaling.factor": 4.0},
            "factor=4.0: kind='default' does not read it",
        ),
    ],
    ids=lambda x: str(x)[:40],
)
def test_bad_values_raise_naming_the_field(overrides, named):
    # Not type-safe, so that wrong types reach the validator (as from a hand-written dict).
    cfg = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match="model") as info:
        validate_model_config(cfg)
    assert named in str(info.value), f"error {info.value!s} does not name {named}"
    with pytest.raises(ValueError):
        DecoderLM(cfg)


def test_odd_head_dim_is_fine_without_rope():
    for kind in ("alibi", "nope"):
        validate_model_config(tiny_config({"head_dim": 7, "position.kind": kind}))


def test_command_line_overrides_parse(seed):
    """`--config.model.attention.logits_soft_cap=30.0` and rope_scaling overrides parse typed."""
    root = ml_collections.ConfigDict({"model": tiny_config()})
    argv = [
        "prog",
        "--config.model.attention.logits_soft_cap=30.0",
        "--config.model.num_layers=1",
        "--config.model.position.rope_kind=yarn",
        "--config.model.position.rope_scaling.factor=4",
        "--config.model.position.rope_scaling.original_max_position_embeddings=64",
        "--config.model.position.rope_scaling.truncate=False",
    ]
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_dict(
        "config", root, flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flag_values(argv)
    model_cfg = holder.value.model
    assert model_cfg.attention.logits_soft_cap == 30.0
    assert model_cfg.num_layers == 1
    scaling = model_cfg.position.rope_scaling
    assert isinstance(scaling.factor, float) and scaling.factor == 4.0
    assert scaling.original_max_position_embeddings == 64
    assert scaling.truncate is False
    validate_model_config(model_cfg)

    tokens = random_tokens(np.random.default_rng(seed), 1, 8)
    params = random_params(model_cfg, seed)
    logits = apply(model_cfg, params, tokens)
    assert logits.shape == (1, 8, 256) and bool(jnp.isfinite(logits).all())


def test_unknown_command_line_key_is_rejected():
    root = ml_collections.ConfigDict({"model": tiny_config()})
    argv = ["prog", "--config.model.position.rope_scaling.fator=4"]
    flag_values = flags.FlagValues()
    with pytest.raises((AttributeError, KeyError, flags.Error)):
        config_flags.DEFINE_config_dict(
            "config", root, flag_values=flag_values, lock_config=True, sys_argv=argv
        )
        flag_values(argv)


@pytest.mark.parametrize(
    "call,named",
    [
        (lambda m, p, t: m.apply(p, t.astype(jnp.float32)), "tokens"),
        (lambda m, p, t: m.apply(p, t[0]), "tokens"),
        (lambda m, p, t: m.apply(p, t, positions=t[:, :-1]), "positions"),
        (lambda m, p, t: m.apply(p, t, segment_ids=t.astype(jnp.float32)), "segment_ids"),
        (lambda m, p, t: m.apply(p, jnp.zeros((1, 8, 5)), method="decode"), "x_BTD"),
    ],
    ids=["float-tokens", "1d-tokens", "positions-shape", "segment-dtype", "embed-width"],
)
def test_bad_inputs_raise_naming_the_argument(call, named, seed):
    cfg = tiny_config()
    tokens = random_tokens(np.random.default_rng(seed), 1, 8)
    params = random_params(cfg, seed)
    with pytest.raises(ValueError, match=named):
        call(DecoderLM(cfg), params, tokens)
