"""Hugging Face model features: q/k/v and output biases (Qwen2), per-head q/k RMSNorm before RoPE
(Qwen3), per-layer sliding windows (Gemma-style alternation) and partial rotary.

Each feature alone and all together (with MQA), on fresh random parameters (nonzero biases,
norm scales away from 1): the model's logits equal a float64 numpy forward written here (all
together: under every CPU attention implementation) and are causal; the KV-cache path (a 5-token
prefill chunk, then single-token steps) equals the full forward, with windows shorter than the
sequence, also for the sparse top-k kind; the linear mixer takes the biases and q/k norm; the
defaults add no parameter; bad values raise ValueError naming the field.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_testlib import abstract_params, apply, assert_close, random_params, tiny_config
from numpy_reference import rms_norm, silu

from longctx_jax.inference.generate import cached_logits
from longctx_jax.inference.layout import allocate
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.model import DecoderLM, validate_model_config
from longctx_jax.model.attention_block import SelfAttention
from longctx_jax.model.config import layer_window

B, T = 2, 12
ONE_LAYER = {"num_layers": 1}  # configs whose difference is inside one layer compile faster
FEATURES = {
    "bias": {**ONE_LAYER, "attention.qkv_bias": True, "attention.out_bias": True},
    "qk_norm": {**ONE_LAYER, "attention.qk_norm": True, "norm_eps": 0.05},
    # 3 layers under a 2-layer pattern: windows 3, full, 3
    "layer_windows": {"num_layers": 3, "attention.layer_windows": (3, 0)},
    "partial_rotary": {**ONE_LAYER, "position.rope_scaling.partial_rotary_factor": 0.5},
    "all_mqa": {
        "num_kv_heads": 1,
        "attention.qkv_bias": True,
        "attention.out_bias": True,
        "attention.qk_norm": True,
        "attention.layer_windows": (0, 4),
        "position.rope_scaling.partial_rotary_factor": 0.5,
    },
}

# The other mixers, with every feature they take (the linear mixer has no window).
KINDS = {
    "linear": {
        **FEATURES["bias"],
        "attention.qk_norm": True,
        "position.rope_scaling.partial_rotary_factor": 0.5,
        "attention.kind": "linear",
        "attention.linear.chunk_size": 4,
    },
    "sparse_topk": {
        **FEATURES["all_mqa"],
        **ONE_LAYER,
        "attention.layer_windows": (5,),
        "attention.kind": "sparse_topk",
        "attention.sparse.stage": "sparse",
        "attention.sparse.granularity": "token",
        "attention.sparse.top_k": 3,
    },
}


def numpy_logits(params, cfg, tokens):
    """float64 forward of the tiny model with the features, independent of the model code."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    eps, n, kh, h = cfg.norm_eps, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rotary = int(h * (cfg.position.rope_scaling.partial_rotary_factor or 1.0))
    pattern = cfg.attention.layer_windows or (0,)
    pos = np.arange(tokens.shape[1])
    inv_freq = 1.0 / cfg.position.rope_base ** (np.arange(0, rotary, 2) / rotary)
    angle = pos[:, None, None] * inv_freq  # [T, 1, rotary / 2]

    def rope(x):  # "half" layout on the first `rotary` features; the rest pass through
        x1, x2, rest = x[..., : rotary // 2], x[..., rotary // 2 : rotary], x[..., rotary:]
        cos, sin = np.cos(angle), np.sin(angle)
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], -1)

    x = p["embedding"]["embedding"][np.asarray(tokens)]
    for layer in range(cfg.num_layers):
        block = p[f"blocks_{layer}"]
        att = block["attention"]
        y = rms_norm(x, block["attention_norm"]["scale"], eps)
        q = np.einsum("btd,dnh->btnh", y, att["query"]) + att.get("query_bias", 0.0)
        k = np.einsum("btd,dkh->btkh", y, att["key"]) + att.get("key_bias", 0.0)
        v = np.einsum("btd,dkh->btkh", y, att["value"]) + att.get("value_bias", 0.0)
        if cfg.attention.qk_norm:
            q = rms_norm(q, att["query_norm"]["scale"], eps)
            k = rms_norm(k, att["key_norm"]["scale"], eps)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
        window = pattern[layer % len(pattern)] or np.inf
        distance = pos[:, None] - pos[None, :]  # [query, key]
        visible = (distance >= 0) & (distance < window)
        logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
        logits = np.where(visible, logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("bnts,bsnh->btnh", probs, v)
        x = x + np.einsum("btnh,nhd->btd", out, att["out"]) + att.get("out_bias", 0.0)
        mlp = block["mlp"]
        y = rms_norm(x, block["mlp_norm"]["scale"], eps)
        x = x + (silu(y @ mlp["gate"]) * (y @ mlp["up"])) @ mlp["down"]
    x = rms_norm(x, p["final_norm"]["scale"], eps)
    return x @ p["embedding"]["embedding"].T


def feature_inputs(feature, seed, overrides=None):
    """(config, random parameters, random tokens [B, T]) for a FEATURES or KINDS entry."""
    cfg = tiny_config({**{**FEATURES, **KINDS}[feature], **(overrides or {})})
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (B, T)), jnp.int32)
    return cfg, random_params(cfg, seed), tokens


@pytest.mark.parametrize("feature", FEATURES)
def test_logits_match_numpy_float64_and_are_causal(feature, seed):
    cfg, params, tokens = feature_inputs(feature, seed)
    logits = apply(cfg, params, tokens)
    assert_close(logits, numpy_logits(params, cfg, tokens), 1e-5, f"[seed={seed}]")

    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % cfg.vocab_size)
    after = apply(cfg, params, changed)
    np.testing.assert_array_equal(after[:, :7], logits[:, :7])
    assert not np.allclose(after[:, 7:], logits[:, 7:])


@pytest.mark.parametrize("impl", ["reference", "xla", "blockwise"])
def test_every_cpu_attention_impl_gives_the_reference_logits(impl, seed):
    cfg, params, tokens = feature_inputs("all_mqa", seed, {"attention.impl": impl})
    assert_close(apply(cfg, params, tokens), numpy_logits(params, cfg, tokens), 1e-5, impl)


# layer_windows decodes through the split-K decode kernel (its jnp path on CPU) too.
@pytest.mark.parametrize("feature", ["all_mqa", "layer_windows", "sparse_topk"])
def test_cached_logits_equal_the_full_forward(feature, seed):
    cfg, params, tokens = feature_inputs(feature, seed)
    spec = CacheSpec(kernel=feature == "layer_windows")
    got = cached_logits(cfg, params, tokens, cache=spec, chunk_size=(5, 1))
    full = apply(cfg, params, tokens)
    np.testing.assert_allclose(got, full, rtol=2e-5, atol=2e-5, err_msg=f"[seed={seed}]")


@pytest.mark.parametrize("kind", KINDS)
def test_other_mixers_take_the_features_and_stay_causal(kind, seed):
    """The numpy reference covers softmax attention only: here, the biases reach the logits and
    a later token does not."""
    cfg, params, tokens = feature_inputs(kind, seed)
    full = apply(cfg, params, tokens)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % cfg.vocab_size)
    np.testing.assert_array_equal(apply(cfg, params, changed)[:, :7], full[:, :7])

    def zero_biases(path, x):
        return jnp.zeros_like(x) if "bias" in jax.tree_util.keystr(path) else x

    unbiased = jax.tree_util.tree_map_with_path(zero_biases, params)
    assert not np.allclose(apply(cfg, unbiased, tokens), full, atol=1e-3)


def test_each_layer_cache_is_sized_by_its_window():
    cfg = tiny_config(FEATURES["layer_windows"])
    caches = allocate(cfg, 1, None, T)
    assert [c.capacity for c in caches] == [3, T, 3]
    assert [c.spec.policy for c in caches] == ["window", "full", "window"]
    # a window at least as long as the sequence needs no ring
    assert [c.capacity for c in allocate(cfg, 1, None, 3)] == [3, 3, 3]


def test_layer_windows_of_one_window_equal_attention_window():
    """Every layer reads its window through `layer_window` (the mask and the cache)."""
    plain = tiny_config({"attention.window": 4})
    same = tiny_config({"attention.layer_windows": (4,)})
    assert [layer_window(same, i) for i in range(2)] == [layer_window(plain, i) for i in range(2)]
    specs = [c.spec for c in allocate(same, 1, None, T)]
    assert specs == [c.spec for c in allocate(plain, 1, None, T)]  # rings of 4 slots
    assert [layer_window(tiny_config(), i) for i in range(2)] == [None, None]


def names_and_shapes(cfg):
    return {
        jax.tree_util.keystr(path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_params(cfg)))
    }


def test_defaults_add_no_parameter():
    cfg = tiny_config()
    d, n, kh, h, f = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    block = {
        "['attention']['query']": (d, n, h),
        "['attention']['key']": (d, kh, h),
        "['attention']['value']": (d, kh, h),
        "['attention']['out']": (n, h, d),
        "['attention_norm']['scale']": (d,),
        "['mlp']['gate']": (d, f),
        "['mlp']['up']": (d, f),
        "['mlp']['down']": (f, d),
        "['mlp_norm']['scale']": (d,),
    }
    expected = {"['params']['embedding']['embedding']": (cfg.vocab_size, d)}
    expected["['params']['final_norm']['scale']"] = (d,)
    for layer in range(cfg.num_layers):
        expected.update({f"['params']['blocks_{layer}']{k}": s for k, s in block.items()})
    assert names_and_shapes(cfg) == expected
    windows = tiny_config({"attention.layer_windows": (0, 5)})
    assert names_and_shapes(windows) == expected


def test_new_parameters_start_as_documented(seed):
    cfg = tiny_config(FEATURES["all_mqa"])
    added = set(names_and_shapes(cfg)) - set(names_and_shapes(tiny_config()))
    assert len(added) == 2 * (3 + 1 + 2)  # q/k/v biases, out bias, q/k norms, per layer
    x, positions = jnp.zeros((1, 4, cfg.embed_dim)), jnp.zeros((1, 4), jnp.int32)
    key = jax.random.key(seed, impl="rbg")  # compiles much faster than threefry on CPU
    init = jax.jit(SelfAttention(DecoderLM(cfg).config, layer=1).init)
    att = nn.unbox(init(key, x, positions))["params"]
    h, kh = cfg.head_dim, cfg.num_kv_heads
    biases = {"query_bias": (cfg.num_heads, h), "key_bias": (kh, h), "value_bias": (kh, h)}
    for name, shape in biases.items():
        np.testing.assert_array_equal(att[name], np.zeros(shape))
    np.testing.assert_array_equal(att["out_bias"], np.zeros(cfg.embed_dim))
    np.testing.assert_array_equal(att["query_norm"]["scale"], np.ones(h))
    np.testing.assert_array_equal(att["key_norm"]["scale"], np.ones(h))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"attention.qkv_bias": 1}, "attention.qkv_bias"),
        ({"attention.out_bias": "yes"}, "attention.out_bias"),
        ({"attention.qk_norm": None}, "attention.qk_norm"),
        ({"attention.layer_windows": (4, 0, 4)}, "attention.layer_windows"),  # 3 > num_layers
        ({"attention.layer_windows": ()}, "attention.layer_windows"),
        ({"attention.layer_windows": (4, -1)}, "attention.layer_windows"),
        ({"attention.layer_windows": (4, 2.0)}, "attention.layer_windows"),
        ({"attention.layer_windows": (True,)}, "attention.layer_windows"),
        ({"attention.layer_windows": (4, 0), "attention.window": 4}, "attention.layer_windows"),
        (
            {"attention.layer_windows": (4,), "attention.kind": "linear"},
            "attention.layer_windows",
        ),
        ({"position.rope_scaling.partial_rotary_factor": 0.1}, "position.*partial_rotary_factor"),
    ],
)
def test_bad_values_raise_naming_the_field(overrides, field):
    # Not type-safe, so that wrong types reach the validator (as from a hand-written dict).
    cfg = ml_collections.ConfigDict(tiny_config().to_dict(), type_safe=False)
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=rf"model\.{field}"):
        validate_model_config(cfg)


def test_qk_norm_and_biases_validate_with_alibi():
    validate_model_config(
        tiny_config({**FEATURES["bias"], "attention.qk_norm": True, "position.kind": "alibi"})
    )
