"""Bad arguments raise ValueError naming the argument, before any compilation (DESIGN.md §3)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import AttentionMask, attention, attention_weights

B, T, S, N, K, H = 2, 8, 10, 4, 2, 16
IMPLS = ["reference", "blockwise", "auto"]


def arrays(dtype=jnp.float32, *, q_shape=(B, T, N, H), kv_shape=(B, S, K, H), v_shape=None):
    rng = np.random.default_rng(0)  # values do not matter: only shapes and dtypes
    q = jnp.asarray(rng.standard_normal(q_shape), dtype)
    k = jnp.asarray(rng.standard_normal(kv_shape), dtype)
    v = jnp.asarray(rng.standard_normal(v_shape or kv_shape), dtype)
    return q, k, v


def ids(shape, dtype=jnp.int32):
    return jnp.zeros(shape, dtype)


P = pytest.param
BAD_SHAPES = [
    P(dict(kv_shape=(B + 1, S, K, H)), r"batch", id="batch"),
    P(dict(kv_shape=(B, S, K, H // 2)), r"head_dim", id="head_dim"),
    P(dict(kv_shape=(B, S, 3, H)), r"num_heads=4.*num_kv_heads=3", id="heads_not_multiple"),
    P(dict(v_shape=(B, S + 1, K, H)), r"\bv\b", id="v_shape"),
    P(dict(q_shape=(B, T, N * H)), r"\bq\b", id="q_3d"),
]
SEG_KV, SEG_F32 = ids((B, S)), jnp.zeros((B, T))
BAD_MASKS = [
    P(dict(q_segment_ids=ids((B, T + 1)), kv_segment_ids=SEG_KV), r"q_segment_ids", id="q_seg_len"),
    P(dict(q_segment_ids=ids((B, T)), kv_segment_ids=ids((S,))), r"kv_segment_ids", id="kv_seg_1d"),
    P(dict(q_positions=ids((1, T))), r"q_positions", id="q_pos_batch"),
    P(dict(kv_positions=ids((B, T))), r"kv_positions", id="kv_pos_len"),
    P(dict(q_positions=jnp.zeros((B, T))), r"q_positions.*dtype", id="pos_float"),
    P(dict(q_segment_ids=SEG_F32, kv_segment_ids=SEG_KV), r"q_seg.*dtype", id="seg_f32"),
    P(dict(q_segment_ids=ids((B, T))), r"kv_segment_ids", id="only_q_seg"),
    P(dict(kv_segment_ids=SEG_KV), r"q_segment_ids", id="only_kv_seg"),
    P(dict(causal=True, window=0), r"window=0", id="window_0"),
    P(dict(causal=True, window=-3), r"window=-3", id="window_negative"),
    P(dict(window=2.5), r"window=2\.5", id="window_float"),
    P(dict(window="4"), r"window='4'", id="window_str"),
    P(dict(window=True), r"window=True", id="window_bool"),
    P(dict(causal="yes"), r"causal='yes'", id="causal_str"),
]  # fmt: skip
BAD_OPTIONS = [
    P(dict(logits_soft_cap=0.0), r"logits_soft_cap=0\.0", id="soft_cap_0"),
    P(dict(logits_soft_cap=-5.0), r"logits_soft_cap=-5\.0", id="soft_cap_negative"),
    P(dict(logits_soft_cap=math.nan), r"logits_soft_cap=nan", id="soft_cap_nan"),
    P(dict(logits_soft_cap="30"), r"logits_soft_cap='30'", id="soft_cap_str"),
    P(dict(scale=math.nan), r"scale=nan", id="scale_nan"),
    P(dict(scale=math.inf), r"scale=inf", id="scale_inf"),
    P(dict(scale="0.1"), r"scale='0.1'", id="scale_str"),
    P(dict(alibi_slopes=jnp.ones(K)), r"alibi_slopes.*\(2,\)", id="slopes_per_kv_head"),
    P(dict(alibi_slopes=jnp.ones((N, 1))), r"alibi_slopes.*\(4, 1\)", id="slopes_2d"),
    P(dict(alibi_slopes=jnp.float32(0.5)), r"alibi_slopes", id="slopes_scalar"),
    P(dict(mask=jnp.ones((B, T, S), bool)), r"mask=.*AttentionMask", id="mask_array"),
    P(dict(mask={"causal": True}), r"mask=.*AttentionMask", id="mask_dict"),
]

# Both public entry points validate with the same rules.
ENTRIES = {
    "attention": lambda q, k, v, **kw: attention(q, k, v, impl="blockwise", **kw),
    "attention_weights": lambda q, k, v, **kw: attention_weights(q, k, v, **kw),
}


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("shapes,match", BAD_SHAPES)
def test_bad_shapes(entry, shapes, match):
    with pytest.raises(ValueError, match=match):
        ENTRIES[entry](*arrays(**shapes))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("fields,match", BAD_MASKS)
def test_bad_masks(entry, fields, match):
    with pytest.raises(ValueError, match=match):
        ENTRIES[entry](*arrays(), mask=AttentionMask(**fields))


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kwargs,match", BAD_OPTIONS)
def test_bad_options(entry, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ENTRIES[entry](*arrays(), **kwargs)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(
    "qkv,match",
    [
        (lambda: arrays(jnp.int32), r"\bq\b.*dtype int32"),
        (lambda: (arrays()[0], *arrays(jnp.int8)[1:]), r"\bk\b.*dtype int8"),
        (lambda: (*arrays()[:2], arrays(jnp.bfloat16)[2]), r"float32.*float32.*bfloat16"),
        (lambda: (arrays(jnp.bfloat16)[0], *arrays()[1:]), r"bfloat16.*float32.*float32"),
    ],
    ids=["int_inputs", "int_k", "mixed_v", "mixed_q"],
)
def test_bad_dtypes(entry, qkv, match):
    with pytest.raises(ValueError, match=match):
        ENTRIES[entry](*qkv())


@pytest.mark.parametrize("impl", ["flash", "", "Reference", "pallas", "cuDNN"])
def test_bad_impl(impl):
    with pytest.raises(ValueError, match=rf"impl='{impl}'"):
        attention(*arrays(), impl=impl)


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(), "dtype float32"),
        (dict(mask=AttentionMask(causal=True, q_positions=ids((B, S)))), "positions"),
        (dict(mask=AttentionMask(window=3)), "bidirectional window"),
        (dict(logits_soft_cap=5.0), "logits_soft_cap"),
    ],
    ids=["float32", "positions", "bidirectional_window", "soft_cap"],
)
def test_cudnn_refuses_what_it_cannot_compute(options, match):
    q, k, v = arrays(q_shape=(B, S, N, H))  # cuDNN takes equal lengths only
    if "mask" in options or "logits_soft_cap" in options:
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    with pytest.raises(ValueError, match=rf"impl='cudnn' cannot take .*{match}"):
        attention(q, k, v, impl="cudnn", **options)


def test_errors_raise_while_tracing_under_jit():
    """Validation is on shapes and static fields, so it also fires inside jax.jit."""
    q, k, v = arrays()
    with pytest.raises(ValueError, match=r"window=0"):
        jax.jit(lambda q, k, v: attention(q, k, v, mask=AttentionMask(window=0)))(q, k, v)
    with pytest.raises(ValueError, match=r"kv_positions"):
        jax.jit(lambda q, k, v, m: attention(q, k, v, mask=m))(
            q, k, v, AttentionMask(kv_positions=ids((B, S + 1)))
        )


def test_accepted_argument_types():
    """Numpy integer window, int16 / int64-numpy ids, numpy float scale and cap are fine."""
    q, k, v = arrays()
    mask = AttentionMask(
        causal=np.bool_(True),
        window=np.int64(3),
        q_segment_ids=ids((B, T), jnp.int16),
        kv_segment_ids=np.zeros((B, S), np.int64),
        q_positions=np.arange(T)[None].repeat(B, 0),
    )
    for impl in ("reference", "blockwise"):
        out = attention(
            q, k, v, mask=mask, impl=impl, scale=np.float32(0.2), logits_soft_cap=np.float64(5)
        )
        assert out.shape == q.shape and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_infinite_soft_cap(impl):
    """logits_soft_cap=inf would make cap * tanh(s / cap) = inf * 0 = NaN: rejected by name."""
    q, k, v = arrays()
    with pytest.raises(ValueError, match="logits_soft_cap"):
        attention(q, k, v, impl=impl, logits_soft_cap=math.inf)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_kv(impl):
    """kv_len == 0 is rejected by name before any compilation."""
    q, k, v = arrays(kv_shape=(B, 0, K, H))
    with pytest.raises(ValueError, match="kv_len=0"):
        attention(q, k, v, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_input_propagates(impl):
    """A NaN query row gives NaN output in every implementation (never a silent 0)."""
    q, k, v = arrays()
    q = q.at[0, 3].set(jnp.nan)
    out = np.asarray(attention(q, k, v, impl=impl))
    assert np.isnan(out[0, 3]).all()
    assert np.isfinite(np.delete(out[0], 3, axis=0)).all() and np.isfinite(out[1]).all()
