"""Logits shape/dtype, logical axis names on every parameter, initialisation, GQA, tied heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import (
    abstract_params,
    apply,
    assert_close,
    random_params,
    random_tokens,
    tiny_config,
)

from longctx_jax.model import DecoderLM

PARAM_AXES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp"}
EXPECTED_NAMES = {
    "embedding": ("vocab", "embed"),
    "head": ("embed", "vocab"),
    "query": ("embed", "heads", "head_dim"),
    "key": ("embed", "kv_heads", "head_dim"),
    "value": ("embed", "kv_heads", "head_dim"),
    "out": ("heads", "head_dim", "embed"),
    "gate": ("embed", "mlp"),
    "up": ("embed", "mlp"),
    "down": ("mlp", "embed"),
    "scale": ("embed",),
}


@pytest.mark.parametrize(
    "dtype,param_dtype",
    [("float32", "float32"), ("bfloat16", "float32"), ("bfloat16", "bfloat16")],
)
def test_logits_shape_and_dtype(dtype, param_dtype, seed):
    cfg = tiny_config({"dtype": dtype, "param_dtype": param_dtype, "vocab_size": 97})
    params = random_params(cfg, seed)
    assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(param_dtype)}
    tokens = random_tokens(np.random.default_rng(seed), 3, 10, vocab=97)
    logits = apply(cfg, params, tokens)
    assert logits.shape == (3, 10, 97)
    assert logits.dtype == jnp.float32, "logits are float32 whatever the activation dtype"
    assert bool(jnp.isfinite(logits).all())
    x = apply(cfg, params, tokens, method="embed")
    assert x.shape == (3, 10, 32) and x.dtype == jnp.dtype(dtype)


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_has_logical_axis_names(tie):
    boxed = abstract_params(tiny_config({"tie_embeddings": tie}))
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert len(leaves) == 2 * 9 + 2 + (0 if tie else 1)  # per layer 4 attn + 3 mlp + 2 norms
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{where} has no logical axis names"
        names = tuple(leaf.names)
        assert len(names) == leaf.value.ndim, f"{where}: names {names} for shape {leaf.value.shape}"
        assert set(names) <= PARAM_AXES, f"{where}: unknown axis names {names}"
        assert names == EXPECTED_NAMES[path[-1].key], f"{where}: {names}"
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["params"]["embedding"]["embedding"]) == ("vocab", "embed")


def test_initialisation_follows_the_documented_scales(seed):
    """normal(init_std) inputs, normal(init_std / sqrt(2 L)) residual outputs, unit norm scales."""
    cfg = tiny_config(
        {
            "init_std": 0.02,
            "num_layers": 2,
            "embed_dim": 64,
            "mlp_dim": 128,
            "head_dim": 16,
            "tie_embeddings": False,
            "attention.impl": "reference",
        }
    )
    tokens = jnp.zeros((1, 4), jnp.int32)
    key = jax.random.key(seed, impl="rbg")  # compiles twice as fast as threefry on CPU
    params = nn.unbox(jax.jit(DecoderLM(cfg).init)(key, tokens))["params"]
    out_std = 0.02 / np.sqrt(2 * 2)
    stds = {
        "embedding": np.std(params["embedding"]["embedding"]),
        "head": np.std(params["head"]),
        "query": np.std(params["blocks_0"]["attention"]["query"]),
        "gate": np.std(params["blocks_1"]["mlp"]["gate"]),
        "out": np.std(params["blocks_1"]["attention"]["out"]),
        "down": np.std(params["blocks_0"]["mlp"]["down"]),
    }
    for name, std in stds.items():
        expected = out_std if name in ("out", "down") else 0.02
        assert abs(std / expected - 1) < 0.1, f"{name}: std {std:.5f}, expected {expected:.5f}"
    np.testing.assert_array_equal(params["final_norm"]["scale"], np.ones(64, np.float32))


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_gqa_equals_multi_head_with_shared_kv(num_kv_heads, seed):
    """GQA/MQA == multi-head attention whose K/V weights repeat per group (head n -> n // G)."""
    gqa = tiny_config({"num_kv_heads": num_kv_heads, "position.kind": "alibi"})
    mha = tiny_config({"num_kv_heads": 4, "position.kind": "alibi"})
    params = random_params(gqa, seed)
    group = 4 // num_kv_heads
    assert params["params"]["blocks_0"]["attention"]["key"].shape == (32, num_kv_heads, 8)

    def repeat_kv(path, x):
        if path[-1].key in ("key", "value"):
            return jnp.repeat(x, group, axis=1)
        return x

    mha_params = jax.tree_util.tree_map_with_path(repeat_kv, params)
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, 2, 12)
    assert_close(apply(gqa, params, tokens), apply(mha, mha_params, tokens))


def test_tied_and_untied_parameter_counts_differ_by_the_head(seed):
    def count(cfg):
        return sum(x.size for x in jax.tree_util.tree_leaves(nn.unbox(abstract_params(cfg))))

    tied, untied = tiny_config({"tie_embeddings": True}), tiny_config({"tie_embeddings": False})
    assert count(untied) - count(tied) == 256 * 32
    params = random_params(untied, seed)
    tokens = random_tokens(np.random.default_rng(seed), 1, 6)
    logits = apply(untied, params, tokens)
    x = apply(untied, params, tokens, method="embed")
    np.testing.assert_allclose(logits, apply(untied, params, x, method="decode"), rtol=0, atol=0)


def test_sharded_apply_matches_single_device(seed):
    """Under a 2x2x2 mesh with rules, the logical constraints apply and the logits do not move.

    The mesh's axes are `Auto` (GSPMD): flax's logical constraints are sharding hints, and
    jax.make_mesh's default `Explicit` axes would reject the sharded embedding gather.
    """
    cfg = tiny_config({"attention.impl": "auto"})
    params = random_params(cfg, seed)
    tokens = random_tokens(np.random.default_rng(seed), 4, 16)
    expected = apply(cfg, params, tokens)

    mesh = jax.make_mesh(
        (2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    rules = (
        ("batch", "data"),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
    )
    specs = nn.get_partition_spec(abstract_params(cfg))
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    sharded_params = jax.device_put(params, shardings)
    model = DecoderLM(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        logits = jax.jit(model.apply)(sharded_params, tokens)
    assert logits.sharding.spec == jax.P("data", None, "tensor"), logits.sharding
    # Sharded contractions sum in another order: float32 rounding, not a different function.
    assert_close(logits, expected, 1e-4)
