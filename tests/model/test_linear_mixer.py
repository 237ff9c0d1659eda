"""attention.kind = "linear" (model/linear_mixer.py): the chunked scan against a step-by-step
recurrence written out here (float64), forward and gradients; the whole layer against the same
recurrence with the layer's projections, feature map, gate and output norm; causality and
document isolation by gradient through the whole model; chunk size does not change the function;
the state's size; and the config errors.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import (
    apply,
    assert_close,
    packed_segments,
    random_params,
    random_tokens,
    tiny_config,
)
from numpy_reference import rope

from longctx_jax.config import base_config, validate_config
from longctx_jax.model import DecoderLM, freeze_model_config
from longctx_jax.model.attention_block import SelfAttention
from longctx_jax.model.linear_mixer import (
    chunked_linear_attention,
    state_bytes_per_layer,
    timescale_bias_init,
)

# --- The reference: one token at a time (numpy or jax.numpy, so it can also be differentiated).


def step_by_step(xp, q, k, v, g, seg):
    """o_t = q_t S_t, S_t = exp(g_t) S_{t-1} + k_t^T v_t, S = 0 where seg changes (numpy seg).
    q [B, T, N, H], k [B, T, K, H], v [B, T, K, V], g [B, T, K]; query head n reads n // (N / K).
    """
    b, t, n, h = q.shape
    kv_of_head = np.arange(n) // (n // k.shape[2])
    state = xp.zeros((b, k.shape[2], h, v.shape[3]), q.dtype)
    outs = []
    for i in range(t):
        if i:
            state = state * (seg[:, i] == seg[:, i - 1]).astype(np.float64)[:, None, None, None]
        state = xp.exp(g[:, i])[:, :, None, None] * state + k[:, i, :, :, None] * v[:, i, :, None]
        outs.append(xp.einsum("bnh,bnhv->bnv", q[:, i], state[:, kv_of_head]))
    return xp.stack(outs, 1), state


def layer_step_by_step(xp, p, x, seg, *, eps, positions=None):
    """SelfAttention with kind "linear", written out: projections, RoPE (numpy only, when
    positions are given), L2-normalised q and k, the gate, the recurrence, RMSNorm per head,
    the output projection."""
    q = xp.einsum("btd,dnh->btnh", x, p["query"])
    k = xp.einsum("btd,dkh->btkh", x, p["key"])
    v = xp.einsum("btd,dkh->btkh", x, p["value"])
    if positions is not None:
        q, k = rope(q, positions, 10000.0), rope(k, positions, 10000.0)
    q = q / xp.sqrt((q**2).sum(-1, keepdims=True) + eps)
    k = k / xp.sqrt((k**2).sum(-1, keepdims=True) + eps)
    lin = p["linear"]
    g = -xp.logaddexp(0.0, xp.einsum("btd,dk->btk", x, lin["decay"]) + lin["decay_bias"])
    o, _ = step_by_step(xp, q, k, v, g, seg)
    o = o / xp.sqrt((o**2).mean(-1, keepdims=True) + eps) * lin["norm_scale"]
    return xp.einsum("btnh,nhd->btd", o, p["out"])


def random_mixer_inputs(rng, b, t, n, kh, h, hv=None):
    """q, k, v ~ normal / sqrt(h) and log-decays in [-1.5, 0): float64 numpy."""
    hv = hv or h
    q = rng.standard_normal((b, t, n, h)) / np.sqrt(h)
    k = rng.standard_normal((b, t, kh, h)) / np.sqrt(h)
    v = rng.standard_normal((b, t, kh, hv))
    g = -rng.uniform(0.0, 1.5, (b, t, kh))
    return q, k, v, g


chunked = jax.jit(chunked_linear_attention, static_argnames=("chunk_size", "return_state"))


def one_document(b, t):
    return np.zeros((b, t), np.int32)


SHAPES = [  # (batch, length, heads, kv heads, head_dim, value dim, chunk, packed)
    (2, 13, 4, 2, 8, 8, 4, True),  # 13 = 3 chunks + 1: padding
    (1, 16, 2, 2, 4, 6, 16, False),  # one chunk; value dim != key dim
    (2, 17, 3, 1, 4, 4, 5, True),  # MQA
    (1, 9, 2, 1, 4, 4, 1, True),  # one token per chunk: the scan alone
]


@pytest.mark.parametrize("b,t,n,kh,h,hv,chunk,packed", SHAPES, ids=lambda x: str(x))
def test_chunked_scan_matches_the_recurrence_float64(b, t, n, kh, h, hv, chunk, packed, seed):
    rng = np.random.default_rng(seed)
    q, k, v, g = random_mixer_inputs(rng, b, t, n, kh, h, hv)
    seg = np.asarray(packed_segments(rng, b, t)[0]) if packed else one_document(b, t)
    expected, expected_state = step_by_step(np, q, k, v, g, seg)
    with jax.enable_x64():
        out, state = chunked(
            *map(jnp.asarray, (q, k, v, g)),
            segment_ids_BT=jnp.asarray(seg) if packed else None,
            chunk_size=chunk,
            return_state=True,
        )
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, expected, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(state, expected_state, rtol=1e-11, atol=1e-11)
    # float32 inputs: float32 rounding of the same function.
    out32 = chunked(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v, g)),
        segment_ids_BT=jnp.asarray(seg),
        chunk_size=chunk,
    )
    assert out32.dtype == jnp.float32
    assert_close(out32, expected, 1e-5)


def test_chunked_scan_gradients_match_the_recurrence(seed):
    chunk = 4
    rng = np.random.default_rng(seed)
    b, t, n, kh, h = 2, 11, 4, 2, 4
    q, k, v, g = random_mixer_inputs(rng, b, t, n, kh, h)
    seg = np.asarray(packed_segments(rng, b, t)[0])
    readout = rng.standard_normal((b, t, n, h))
    with jax.enable_x64():
        args = tuple(map(jnp.asarray, (q, k, v, g)))

        def chunked_loss(*xs):
            out = chunked_linear_attention(*xs, segment_ids_BT=jnp.asarray(seg), chunk_size=chunk)
            return (out * readout).sum()

        def naive_loss(*xs):
            return (step_by_step(jnp, *xs, seg)[0] * readout).sum()

        chunked_grad = jax.jit(jax.grad(chunked_loss, argnums=(0, 1, 2, 3)))
        got = chunked_grad(*args)
        want = jax.jit(jax.grad(naive_loss, argnums=(0, 1, 2, 3)))(*args)
        for name, a, e in zip("qkvg", got, want, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10, err_msg=f"d/d{name}")
        # Decays strong enough that exp of a masked exponent would overflow: still finite.
        strong = chunked_grad(*args[:3], args[3] * 1000.0)
        assert all(np.isfinite(x).all() for x in strong), "non-finite gradients"


def linear_config(overrides=None):
    return tiny_config({"attention.kind": "linear", **(overrides or {})})


def layer_inputs(cfg, seed, b=2, t=13):
    """(params, x, positions, segment_ids) for one SelfAttention layer of cfg."""
    rng = np.random.default_rng(seed)
    frozen = freeze_model_config(cfg)
    x = jnp.asarray(rng.standard_normal((b, t, cfg.embed_dim)), jnp.float32)
    seg, pos = packed_segments(rng, b, t)
    abstract = jax.eval_shape(SelfAttention(frozen).init, jax.random.key(0), x, pos, seg)
    params = jax.tree.map(
        lambda leaf: jnp.asarray(0.3 * rng.standard_normal(leaf.shape), jnp.float32),
        nn.unbox(abstract)["params"],
    )
    return frozen, params, x, pos, seg


@pytest.mark.parametrize("position", ["nope", "rope"])
def test_layer_matches_the_written_out_layer(position, seed):
    cfg, params, x, pos, seg = layer_inputs(
        linear_config({"position.kind": position, "attention.linear.chunk_size": 4}), seed
    )
    got = jax.jit(SelfAttention(cfg).apply)({"params": params}, x, pos, seg)
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    expected = layer_step_by_step(
        np,
        p64,
        np.asarray(x, np.float64),
        np.asarray(seg),
        eps=cfg.norm_eps,
        positions=np.asarray(pos) if position == "rope" else None,
    )
    assert_close(got, expected, 1e-4)


def test_layer_gradients_match_the_written_out_layer(seed):
    cfg, params, x, pos, seg = layer_inputs(
        linear_config({"position.kind": "nope", "attention.linear.chunk_size": 4}), seed, t=9
    )
    readout = np.random.default_rng(seed + 1).standard_normal((*x.shape[:2], cfg.embed_dim))

    def loss(p, x):
        return (SelfAttention(cfg).apply({"params": p}, x, pos, seg) * readout).sum()

    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    with jax.enable_x64():
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        want = jax.jit(
            jax.grad(
                lambda p, x: (
                    layer_step_by_step(jnp, p, x, np.asarray(seg), eps=cfg.norm_eps) * readout
                ).sum(),
                argnums=(0, 1),
            )
        )(p64, jnp.asarray(x, jnp.float64))
        want = jax.tree.map(np.asarray, want)
    for (path, a), e in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        assert_close(a, e, 1e-4, what=jax.tree_util.keystr(path))


def test_model_outputs_depend_only_on_the_past_of_their_document(seed):
    """d logits[t] / d input[s] is 0 exactly when s is after t or in another document (or row)."""
    cfg = linear_config({"attention.linear.chunk_size": 4})  # with RoPE
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    b, t = 2, 12
    segment_ids, positions = packed_segments(rng, b, t)
    x = apply(cfg, params, random_tokens(rng, b, t), method="embed")
    readout = jnp.asarray(rng.standard_normal(cfg.vocab_size), jnp.float32)
    model = DecoderLM(cfg)

    def scalar_per_position(x_BTD):
        logits = model.apply(
            params, x_BTD, positions=positions, segment_ids=segment_ids, method="decode"
        )
        return logits @ readout

    influence = np.abs(np.asarray(jax.jit(jax.jacrev(scalar_per_position))(x))).sum(-1)
    seg = np.asarray(segment_ids)
    for row in range(b):
        visible = (seg[row][:, None] == seg[row][None, :]) & np.tri(t, dtype=bool)
        got = influence[row, :, row]
        leaks = np.argwhere((got != 0) & ~visible)
        assert leaks.size == 0, f"row {row}: logits at t depend on hidden t' (t, t') = {leaks[:5]}"
        dead = np.argwhere((got == 0) & visible)
        assert dead.size == 0, f"row {row}: no gradient from visible (t, t') = {dead[:5]}"
        assert not influence[row, :, 1 - row].any(), "batch rows mix"


def test_chunk_size_does_not_change_the_model(seed):
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, 2, 13)
    segment_ids, positions = packed_segments(rng, 2, 13)
    params = random_params(linear_config(), seed)
    logits = {
        chunk: apply(
            linear_config({"attention.linear.chunk_size": chunk}),
            params,
            tokens,
            positions=positions,
            segment_ids=segment_ids,
        )
        for chunk in (1, 5, 64)
    }
    assert np.isfinite(logits[64]).all()
    for chunk in (1, 5):
        assert_close(logits[chunk], logits[64], 1e-5, what=f"chunk_size={chunk} vs 64")


def test_decay_bias_init_spreads_the_timescales():
    bias = timescale_bias_init(8.0, 512.0)(None, (4,))
    timescales = 1.0 / np.asarray(jax.nn.softplus(bias), np.float64)
    np.testing.assert_allclose(timescales, np.geomspace(8.0, 512.0, 4), rtol=1e-5)
    (one,) = 1.0 / np.asarray(jax.nn.softplus(timescale_bias_init(8.0, 512.0)(None, (1,))))
    np.testing.assert_allclose(one, 64.0, rtol=1e-5)  # one head: the geometric mean


def test_state_bytes_are_the_state_arrays_bytes():
    cfg = linear_config({"num_kv_heads": 2, "head_dim": 8})
    b, t, n, kh, h = 1, 5, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v, g = (
        jnp.zeros(shape, jnp.float32)
        for shape in ((b, t, n, h), (b, t, kh, h), (b, t, kh, h), (b, t, kh))
    )
    _, state = chunked(q, k, v, g, return_state=True)
    assert state_bytes_per_layer(cfg) == state.nbytes == kh * h * h * 4


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"attention.kind": "linaer"}, "model.attention.kind"),
        ({"attention.linear.chunk_size": 0}, "model.attention.linear.chunk_size"),
        ({"attention.linear.timescale_min": 0.5}, "model.attention.linear.timescale_min"),
        (
            {"attention.linear.timescale_min": 64.0, "attention.linear.timescale_max": 32.0},
            "model.attention.linear.timescale_max",
        ),
        ({"position.kind": "alibi"}, "model.position.kind"),
        ({"attention.logits_soft_cap": 30.0}, "model.attention.logits_soft_cap"),
    ],
    ids=lambda x: str(x),
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        DecoderLM(linear_config(overrides))


def test_attention_capture_and_context_parallelism_are_refused():
    cfg = linear_config()
    tokens = jnp.zeros((2, 8), jnp.int32)
    params = random_params(cfg, 0)
    with pytest.raises(ValueError, match="capture_attention=True"):
        DecoderLM(cfg).apply(params, tokens, capture_attention=True, mutable=["intermediates"])
    mesh = jax.make_mesh((2,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
    with (
        jax.set_mesh(mesh),
        nn.logical_axis_rules((("length", "sequence"),)),
        pytest.raises(ValueError, match="context parallelism is not supported"),
    ):
        DecoderLM(cfg).apply(params, tokens)
    config = base_config()
    config.model.attention.kind = "linear"
    config.mesh.sequence = 2
    with pytest.raises(ValueError, match="^model.attention.kind='linear'"):
        validate_config(config)
