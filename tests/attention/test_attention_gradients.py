"""Gradients dq, dk, dv of every implementation against independent references."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    BF16_RTOL,
    F32_RTOL,
    IMPLS,
    MASK_KINDS,
    SHAPES,
    Shape,
    assert_close,
    bf16_cases,
    grid_case,
    impl_out_and_grads,
    jax_nn_out_and_grads,
    reference_attention,
    reference_grads,
)

NAMES = ("dq", "dk", "dv")


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_references(impl, shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind}]"

    _, grads = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    for got, x in zip(grads[:3], (q, k, v), strict=True):
        assert got.dtype == x.dtype, f"{what} gradient dtype {got.dtype} != {x.dtype}"

    expected = reference_grads(q, k, v, w, mask)
    for name, got, want in zip(NAMES, grads, expected, strict=False):
        assert_close(got, want, F32_RTOL, f"{what} {name} vs float64 jax.grad reference")

    if impl != "reference":
        _, ref_grads = impl_out_and_grads(q, k, v, w, mask, impl="reference")
        for name, got, want in zip(NAMES, grads, ref_grads, strict=False):
            assert_close(got, want, F32_RTOL, f"{what} {name} vs impl='reference'")

    # jax.nn averages rows that see no key: the cotangent is zeroed there, for both sides.
    _, nn_grads, rows = jax_nn_out_and_grads(q, k, v, w, mask)
    w_rows = w * jnp.asarray(rows[:, :, None, None], w.dtype)
    _, grads = impl_out_and_grads(q, k, v, w_rows, mask, impl=impl)
    for name, got, want in zip(NAMES, grads, nn_grads, strict=False):
        assert_close(got, want, F32_RTOL, f"{what} {name} vs jax.nn")


@pytest.mark.parametrize("shape,kind", bf16_cases())
@pytest.mark.parametrize("impl", IMPLS[:3])
def test_gradients_bfloat16(impl, shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind, jnp.bfloat16)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind} bf16]"

    _, grads = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    expected = reference_grads(q, k, v, w, mask)  # float64 of the bf16-rounded inputs
    for name, got, want in zip(NAMES, grads, expected, strict=False):
        assert got.dtype == jnp.bfloat16, f"{what} {name} dtype {got.dtype}"
        assert_close(got, want, BF16_RTOL, f"{what} {name} vs float64 jax.grad reference")


def test_float64_gradient_reference_matches_finite_differences(seed):
    """Checks the gradient reference itself: directional derivatives by central differences."""
    rng = np.random.default_rng(seed)
    shape = Shape(2, 9, 11, 4, 2, 8, window=4)
    q, k, v, w, mask = grid_case(rng, shape, "permuted")
    q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
    slopes = rng.uniform(0.05, 0.5, shape.num_heads)
    kwargs = dict(scale=0.3, soft_cap=2.5)

    grads = reference_grads(q, k, v, w, mask, slopes=slopes, **kwargs)
    x = (q, k, v, slopes)
    dirs = [rng.standard_normal(a.shape) for a in x]
    eps = 1e-6

    def loss(args):
        out, _ = reference_attention(*args[:3], mask, slopes=args[3], **kwargs)
        return float(np.sum(w * out))

    for i, name in enumerate(("q", "k", "v", "alibi_slopes")):
        plus = [a + eps * d if j == i else a for j, (a, d) in enumerate(zip(x, dirs, strict=True))]
        minus = [a - eps * d if j == i else a for j, (a, d) in enumerate(zip(x, dirs, strict=True))]
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = float(np.sum(grads[i] * dirs[i]))
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (
            f"[seed={seed}] d/d{name}: jax.grad float64 {analytic} vs finite differences {numeric}"
        )
