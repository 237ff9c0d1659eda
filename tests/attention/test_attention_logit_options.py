"""Soft cap, ALiBi (including the gradient w.r.t. the slopes) and a custom scale."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    DSLOPES_RTOL,
    F32_RTOL,
    IMPLS,
    SHAPES,
    assert_close,
    grid_case,
    impl_out_and_grads,
    jax_nn_out_and_grads,
    reference_attention,
    reference_grads,
)

NAMES = ("dq", "dk", "dv", "dslopes")


def random_options(option: str, rng, num_heads: int) -> dict:
    """Random soft cap / ALiBi slopes / scale, as `impl_out_and_grads` keyword arguments."""
    kwargs = {}
    if option in ("soft_cap", "all"):
        kwargs["soft_cap"] = round(float(rng.uniform(1.0, 4.0)), 3)  # binds: logits std ~1.5
    if option in ("alibi", "all"):
        kwargs["slopes"] = jnp.asarray(rng.uniform(0.02, 0.5, num_heads), jnp.float32)
    if option in ("scale", "all"):
        kwargs["scale"] = round(float(rng.uniform(0.05, 0.5)), 4)
    return kwargs


OPTION_CASES = [
    pytest.param("soft_cap", "permuted", SHAPES[0], id="soft_cap-permuted"),
    pytest.param("alibi", "permuted", SHAPES[0], id="alibi-permuted"),
    # no mask: keys after the query too, ALiBi distances of both signs
    pytest.param("alibi", "none", SHAPES[0], id="alibi-none"),
    pytest.param("scale", "permuted", SHAPES[0], id="scale-permuted"),
    pytest.param("all", "permuted", SHAPES[0], id="all-permuted"),
    *(
        pytest.param("all", kind, shape, id=f"all-{kind}-{shape}", marks=pytest.mark.slow)
        for shape in SHAPES
        for kind in ("window", "combined")
    ),
]


@pytest.mark.parametrize("option,kind,shape", OPTION_CASES)
@pytest.mark.parametrize("impl", IMPLS[:3])
def test_logit_options(impl, option, kind, shape, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    opts = random_options(option, rng, shape.num_heads)
    slopes = opts.pop("slopes", None)
    what = f"[seed={seed} impl={impl} shape={shape} mask={kind} {opts} alibi={slopes is not None}]"

    out, grads = impl_out_and_grads(q, k, v, w, mask, slopes, impl=impl, **opts)
    ref_opts = dict(opts, slopes=slopes)
    expected, _ = reference_attention(q, k, v, mask, **ref_opts)
    assert_close(out, expected, F32_RTOL, f"{what} out vs float64 numpy")

    expected_grads = reference_grads(q, k, v, w, mask, **ref_opts)
    _, ref_impl_grads = impl_out_and_grads(q, k, v, w, mask, slopes, impl="reference", **opts)
    for name, got, want, ref_impl in zip(NAMES, grads, expected_grads, ref_impl_grads, strict=True):
        if want is None:
            assert got is None, f"{what} {name}: expected no gradient"
            continue
        rtol = DSLOPES_RTOL if name == "dslopes" else F32_RTOL
        assert_close(got, want, rtol, f"{what} {name} vs float64 jax.grad reference")
        assert_close(got, ref_impl, rtol, f"{what} {name} vs impl='reference'")

    if "soft_cap" not in opts:  # jax.nn has no soft cap; ALiBi goes in as a bias
        nn_out, _, rows = jax_nn_out_and_grads(q, k, v, w, mask, slopes=slopes, **opts)
        assert_close(np.asarray(out)[rows], np.asarray(nn_out)[rows], F32_RTOL, f"{what} vs jax.nn")


@pytest.mark.parametrize("impl", IMPLS[:3])
def test_saturated_soft_cap(impl, seed):
    """Logits far beyond the cap (tanh saturated): output and gradients still match float64."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]
    q, k, v, w, mask = grid_case(rng, shape, "causal")
    q = q * 20.0  # raw logits ~30 * N(0, 1), cap 2
    what = f"[seed={seed} impl={impl} shape={shape}]"

    out, grads = impl_out_and_grads(q, k, v, w, mask, impl=impl, soft_cap=2.0)
    expected, _ = reference_attention(q, k, v, mask, soft_cap=2.0)
    assert_close(out, expected, F32_RTOL, f"{what} out vs float64 numpy")
    expected_grads = reference_grads(q, k, v, w, mask, soft_cap=2.0)
    for name, got, want in zip(NAMES, grads[:3], expected_grads, strict=False):
        assert_close(got, want, F32_RTOL, f"{what} {name} vs float64 jax.grad reference")
