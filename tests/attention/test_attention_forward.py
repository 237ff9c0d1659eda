"""Forward pass of every implementation against float64 numpy and jax.nn.dot_product_attention."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    BF16_RTOL,
    F32_RTOL,
    IMPLS,
    MASK_KINDS,
    SHAPES,
    assert_close,
    bf16_cases,
    call_impl,
    explicit_mask,
    grid_case,
    impl_out_and_grads,
    jax_nn_out_and_grads,
    make_mask,
    random_qkv,
    reference_attention,
)

from longctx_jax.attention import attention_weights


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_forward_matches_references(impl, shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind}]"

    out, _ = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    assert out.dtype == jnp.float32, f"{what} output dtype {out.dtype}"
    expected, _ = reference_attention(q, k, v, mask)
    assert_close(out, expected, F32_RTOL, f"{what} out vs float64 numpy")

    nn_out, _, rows = jax_nn_out_and_grads(q, k, v, w, mask)
    assert_close(np.asarray(out)[rows], np.asarray(nn_out)[rows], F32_RTOL, f"{what} out vs jax.nn")


@pytest.mark.parametrize("shape,kind", bf16_cases())
@pytest.mark.parametrize("impl", IMPLS[:3])
def test_forward_bfloat16(impl, shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind, jnp.bfloat16)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind} bf16]"

    out, _ = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    assert out.dtype == jnp.bfloat16, f"{what} output dtype {out.dtype}"
    expected, _ = reference_attention(q, k, v, mask)  # float64 of the bf16-rounded inputs
    assert_close(out, expected, BF16_RTOL, f"{what} out vs float64 numpy")


@pytest.mark.parametrize("kind", ["none", "causal", "window", "sliding"])
@pytest.mark.parametrize("impl", IMPLS)
def test_default_mask_fields(impl, kind, seed):
    """Omitted positions / segment ids mean arange / one segment (eager call, no jit)."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[2]
    q, k, v, _ = random_qkv(rng, shape)
    mask = make_mask(kind, rng, shape)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind}]"

    out = call_impl(impl, q, k, v, mask)
    full = explicit_mask(mask, shape.batch, shape.q_len, shape.kv_len)
    np.testing.assert_array_equal(out, call_impl(impl, q, k, v, full), err_msg=what)
    assert_close(out, reference_attention(q, k, v, mask)[0], F32_RTOL, f"{what} vs float64 numpy")


@pytest.mark.parametrize("kind", ["none", "sliding", "permuted"])
def test_attention_weights(kind, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, _, _ = random_qkv(rng, shape)
    mask = make_mask(kind, rng, shape)
    what = f"[seed={seed} shape={shape} mask={kind}]"

    probs = attention_weights(q, k, mask=mask)
    b, t, n, _ = q.shape
    assert probs.shape == (b, n, t, shape.kv_len) and probs.dtype == jnp.float32, what
    _, expected = reference_attention(q, k, k, mask)
    assert_close(probs, expected, F32_RTOL, f"{what} probabilities vs float64 numpy")
    sums = np.asarray(probs).sum(-1)
    seen = expected.sum(-1) > 0
    np.testing.assert_allclose(sums[seen], 1.0, rtol=1e-5, err_msg=what)
    assert (sums[~seen] == 0).all(), f"{what} rows with no visible key must be all 0"
