"""capture_attention: per-layer attention probabilities, checked against a float64 numpy model.

The first layer's maps are recomputed independently (embedding, RMSNorm, projections, RoPE by
hand with the `rope_frequencies` inverse frequencies, ALiBi bias, soft cap, mask, softmax), so the
test covers how the model wires positions, GQA groups and the config into attention.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import apply, packed_segments, random_params, random_tokens, tiny_config

from longctx_jax.model import DecoderLM, attention_maps, rope_scaling_kwargs
from longctx_jax.positions import alibi_slopes, rope_frequencies


def numpy_first_layer_maps(cfg, params, tokens, positions, segment_ids):
    """[B, N, T, T] float64 attention probabilities of block 0."""
    p = {k: np.asarray(v, np.float64) for k, v in params["params"]["blocks_0"]["attention"].items()}
    emb = np.asarray(params["params"]["embedding"]["embedding"], np.float64)
    scale = np.asarray(params["params"]["blocks_0"]["attention_norm"]["scale"], np.float64)
    x = emb[np.asarray(tokens)]
    h = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + cfg.norm_eps) * scale
    q = np.einsum("btd,dnh->btnh", h, p["query"])
    k = np.einsum("btd,dkh->btkh", h, p["key"])
    pos = np.asarray(positions, np.float64)
    if cfg.position.kind == "rope":
        inv_freq, factor = rope_frequencies(
            cfg.head_dim,
            base=cfg.position.rope_base,
            kind=cfg.position.rope_kind,
            seq_len=tokens.shape[1],
            **rope_scaling_kwargs(cfg),
        )
        angle = pos[:, :, None, None] * np.asarray(inv_freq, np.float64)
        cos, sin = np.cos(angle) * factor, np.sin(angle) * factor

        def rotate(v):
            if cfg.position.layout == "half":
                half = v.shape[-1] // 2
                v1, v2 = v[..., :half], v[..., half:]
                return np.concatenate([v1 * cos - v2 * sin, v2 * cos + v1 * sin], axis=-1)
            v1, v2 = v[..., 0::2], v[..., 1::2]
            return np.stack([v1 * cos - v2 * sin, v2 * cos + v1 * sin], axis=-1).reshape(v.shape)

        q, k = rotate(q), rotate(k)
    group = cfg.num_heads // cfg.num_kv_heads
    k = np.repeat(k, group, axis=2)  # query head n reads kv head n // group
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(cfg.head_dim)
    cap = cfg.attention.logits_soft_cap
    if cap is not None:
        s = cap * np.tanh(s / cap)
    distance = pos[:, None, :, None] - pos[:, None, None, :]
    if cfg.position.kind == "alibi":
        s = s - np.asarray(alibi_slopes(cfg.num_heads), np.float64)[None, :, None, None] * distance
    seg = np.asarray(segment_ids)
    visible = (distance >= 0) & (seg[:, None, :, None] == seg[:, None, None, :])
    s = np.where(visible, s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


SCHEMES = [
    {"position.kind": "rope"},
    {
        "position.kind": "rope",
        "position.rope_kind": "yarn",
        "position.layout": "interleaved",
        "position.rope_scaling.factor": 4.0,
        "position.rope_scaling.original_max_position_embeddings": 8,
        "attention.logits_soft_cap": 5.0,
    },
    {"position.kind": "alibi", "num_kv_heads": 1},
    {"position.kind": "nope"},
]


@pytest.mark.parametrize("overrides", SCHEMES, ids=lambda o: "-".join(map(str, o.values()))[:40])
def test_captured_maps_match_numpy(overrides, seed):
    cfg = tiny_config(overrides)
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    b, t = 2, 14
    tokens = random_tokens(rng, b, t)
    segment_ids, positions = packed_segments(rng, b, t, docs=2)
    logits, state = apply(
        cfg, params, tokens, capture=True, positions=positions, segment_ids=segment_ids
    )
    maps = attention_maps(state)
    assert maps.shape == (cfg.num_layers, b, cfg.num_heads, t, t) and maps.dtype == jnp.float32
    expected = numpy_first_layer_maps(cfg, params, tokens, positions, segment_ids)
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        logits, apply(cfg, params, tokens, positions=positions, segment_ids=segment_ids)
    )


def test_maps_are_causal_distributions_and_off_by_default(seed):
    cfg = tiny_config({"num_layers": 3})
    params = random_params(cfg, seed)
    tokens = random_tokens(np.random.default_rng(seed), 2, 10)
    _, state = apply(cfg, params, tokens, capture=True)
    maps = np.asarray(attention_maps(state))
    assert maps.shape == (3, 2, 4, 10, 10)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert (maps >= 0).all()
    above_diagonal = np.triu(np.ones((10, 10), bool), k=1)
    assert not maps[..., above_diagonal].any(), "a token attends to a later one"

    model = DecoderLM(cfg)
    _, state = jax.jit(lambda p, x: model.apply(p, x, mutable=["intermediates"]))(params, tokens)
    assert not state.get("intermediates"), "attention is captured without capture_attention"
    with pytest.raises(ValueError, match="capture_attention=True"):
        attention_maps(state)
