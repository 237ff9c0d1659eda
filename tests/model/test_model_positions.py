"""Position schemes: positions ride in the mask, RoPE scalings are wired from the config.

- Permuting a row (tokens, positions, segment ids together) permutes its logits, for every scheme:
  the model never reads the array order, only positions (what zigzag / ring layouts rely on).
- NoPE sees positions only through the causal mask, i.e. only their order.
- `linear` RoPE (PI) with factor s at positions s * p is default RoPE at positions p.
- `dynamic` reads seq_len = the input length: plain RoPE up to max_position_embeddings.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import (
    abstract_params,
    apply,
    assert_close,
    packed_segments,
    random_params,
    random_tokens,
    tiny_config,
)


@pytest.mark.parametrize("kind", ["rope", "alibi", "nope"])
def test_permuting_the_row_permutes_the_logits(kind, seed):
    cfg = tiny_config({"position.kind": kind})
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    b, t = 2, 16
    tokens = random_tokens(rng, b, t)
    segment_ids, positions = packed_segments(rng, b, t, docs=2)
    perm = rng.permutation(t)
    logits = apply(cfg, params, tokens, positions=positions, segment_ids=segment_ids)
    permuted = apply(
        cfg,
        params,
        tokens[:, perm],
        positions=positions[:, perm],
        segment_ids=segment_ids[:, perm],
    )
    assert_close(permuted, logits[:, perm])


@pytest.mark.parametrize("kind", ["rope", "alibi", "nope"])
def test_only_nope_ignores_everything_but_the_order_of_positions(kind, seed):
    cfg = tiny_config({"position.kind": kind})
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    b, t = 2, 12
    tokens = random_tokens(rng, b, t)
    arange = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    stretched = jnp.asarray(np.cumsum(rng.integers(1, 50, (b, t)), axis=1), jnp.int32)
    plain = apply(cfg, params, tokens, positions=arange)
    moved = apply(cfg, params, tokens, positions=stretched)  # same order, other distances
    if kind == "nope":
        np.testing.assert_array_equal(plain, moved)
    else:
        assert not np.allclose(plain, moved, rtol=1e-3, atol=1e-3), f"{kind} ignores positions"


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_linear_rope_is_position_interpolation(layout, seed):
    factor = 4.0
    default = tiny_config({"position.layout": layout})
    linear = tiny_config(
        {
            "position.layout": layout,
            "position.rope_kind": "linear",
            "position.rope_scaling.factor": factor,
        }
    )
    params = random_params(default, seed)
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, 2, 12)
    positions = jnp.asarray(np.cumsum(rng.integers(1, 4, (2, 12)), axis=1), jnp.int32)
    expected = apply(default, params, tokens, positions=positions)
    got = apply(linear, params, tokens, positions=positions * int(factor))
    assert_close(got, expected)
    assert not np.allclose(apply(linear, params, tokens, positions=positions), expected)


def test_dynamic_rope_reads_the_input_length(seed):
    t = 16
    params = random_params(tiny_config(), seed)
    tokens = random_tokens(np.random.default_rng(seed), 2, t)
    default = apply(tiny_config(), params, tokens)

    def dynamic(max_len):
        cfg = tiny_config(
            {
                "position.rope_kind": "dynamic",
                "position.rope_scaling.factor": 2.0,
                "position.rope_scaling.max_position_embeddings": max_len,
            }
        )
        return apply(cfg, params, tokens)

    np.testing.assert_array_equal(dynamic(t), default)  # T <= max: plain RoPE
    assert not np.allclose(dynamic(t // 2), default, rtol=1e-4, atol=1e-4)  # T > max: NTK


def test_rope_scaling_changes_no_parameter(seed):
    """A YaRN override keeps the parameter tree (a default checkpoint loads) and moves logits."""
    default = tiny_config()
    yarn = tiny_config(
        {
            "position.rope_kind": "yarn",
            "position.rope_scaling.factor": 4.0,
            "position.rope_scaling.original_max_position_embeddings": 16,
        }
    )
    shapes = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_params(default))
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), abstract_params(yarn)) == shapes
    params = random_params(default, seed)
    tokens = random_tokens(np.random.default_rng(seed), 2, 16)
    assert not np.allclose(apply(yarn, params, tokens), apply(default, params, tokens))
