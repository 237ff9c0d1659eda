"""The lightning indexer against a float64 numpy re-implementation from its parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import SHAPES, grid_case, visibility

from longctx_jax.attention import AttentionMask
from longctx_jax.attention.sparse import LightningIndexer, index_scores
from longctx_jax.attention.sparse.indexer import scores_at

HEADS, DIM, ROPE_DIM, BASE = 3, 16, 8, 10000.0


def numpy_indexer(params, x, positions):
    """(q [B, T, J, I], k [B, T, I], w [B, T, J]) float64, RoPE on the first ROPE_DIM dims with
    the half-split pairing (i with i + ROPE_DIM / 2), written out from DeepSeek's definition."""
    p = {name: np.asarray(value, np.float64) for name, value in params.items()}
    x = np.asarray(x, np.float64)
    q = np.einsum("btd,dji->btji", x, p["query"])
    k = np.einsum("btd,di->bti", x, p["key"])
    k = (k - k.mean(-1, keepdims=True)) / np.sqrt(k.var(-1, keepdims=True) + 1e-6)
    k = k * p["key_norm_scale"] + p["key_norm_bias"]
    w = np.einsum("btd,dj->btj", x, p["weights"]) / np.sqrt(HEADS * DIM)
    half = ROPE_DIM // 2
    freq = BASE ** (-np.arange(half) * 2.0 / ROPE_DIM)
    angle = np.asarray(positions, np.float64)[..., None] * freq  # [B, T, half]

    def rotate(x, angle):
        a, b = x[..., :half], x[..., half:ROPE_DIM]
        cos, sin = np.cos(angle), np.sin(angle)
        return np.concatenate([a * cos - b * sin, b * cos + a * sin, x[..., ROPE_DIM:]], -1)

    return rotate(q, angle[:, :, None]), rotate(k, angle), w


def numpy_scores(q, k, w, vis):
    dots = np.einsum("btji,bsi->btjs", q, k)
    scores = np.einsum("btjs,btj->bts", np.maximum(dots, 0.0), w)
    return np.where(vis, scores, -np.inf)


def random_indexer(rng, d=24):
    module = LightningIndexer(num_heads=HEADS, head_dim=DIM, rope_dim=ROPE_DIM, init_std=0.3)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4, d)), jnp.zeros((1, 4)))
    draw = lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape) * 0.5, jnp.float32)  # noqa: E731
    return module, jax.tree.map(draw, nn.unbox(shapes["params"]))


@pytest.mark.parametrize("kind", ("causal", "combined", "permuted"))
def test_scores_match_the_numpy_indexer(kind, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]
    _, _, _, _, mask = grid_case(rng, shape, kind)
    b, t = shape.batch, shape.q_len
    module, params = random_indexer(rng)
    x = jnp.asarray(rng.standard_normal((b, t, 24)), jnp.float32)
    positions = mask.q_positions
    q, k, w = module.apply({"params": params}, x, positions)
    want_q, want_k, want_w = numpy_indexer(params, x, positions)
    for name, got, want in (("q", q, want_q), ("k", k, want_k), ("w", w, want_w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"[seed={seed}] {name}")

    got = index_scores(q, k, w, mask)
    want = numpy_scores(want_q, want_k, want_w, visibility(mask, b, t, t))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"[seed={seed}] mask")
    finite = np.isfinite(want)
    np.testing.assert_allclose(
        np.asarray(got)[finite], want[finite], rtol=1e-4, atol=1e-4, err_msg=f"[seed={seed}]"
    )


def test_scores_of_selected_keys_equal_the_score_matrix_entries(seed):
    rng = np.random.default_rng(seed)
    b, t, n = 2, 37, 9
    q = jnp.asarray(rng.standard_normal((b, t, HEADS, DIM)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, t, DIM)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((b, t, HEADS)), jnp.float32)
    indices = jnp.asarray(rng.integers(0, t, (b, t, n)), jnp.int32)
    valid = jnp.asarray(rng.random((b, t, n)) < 0.7)
    got = scores_at(q, k, w, indices, valid)
    full = numpy_scores(*(np.asarray(x, np.float64) for x in (q, k, w)), np.ones((b, t, t), bool))
    want = np.where(valid, np.take_along_axis(full, np.asarray(indices), -1), -np.inf)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"[seed={seed}]")


def test_scores_depend_on_relative_positions_only(seed):
    rng = np.random.default_rng(seed)
    module, params = random_indexer(rng)
    x = jnp.asarray(rng.standard_normal((1, 20, 24)), jnp.float32)
    positions = jnp.arange(20)[None]
    scores = [
        index_scores(*module.apply({"params": params}, x, positions + shift), AttentionMask())
        for shift in (0, int(rng.integers(1, 5000)))
    ]
    np.testing.assert_allclose(scores[0], scores[1], rtol=2e-3, atol=2e-3)


def test_bad_rope_dim_raises_value_error():
    module = LightningIndexer(num_heads=2, head_dim=8, rope_dim=9)
    with pytest.raises(ValueError, match="rope_dim=9"):
        module.init(jax.random.key(0), jnp.zeros((1, 3, 4)), jnp.zeros((1, 3), jnp.int32))
