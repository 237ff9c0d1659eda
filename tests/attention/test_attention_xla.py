"""impl="xla" (jax.nn.dot_product_attention, the dense baseline) computes the same function."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    F32_RTOL,
    MASK_KINDS,
    SHAPES,
    assert_close,
    grid_case,
    impl_out_and_grads,
    random_qkv,
    reference_attention,
    reference_grads,
)

from longctx_jax.attention import AttentionMask, attention


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
def test_xla_matches_float64_reference(shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    slopes = jnp.asarray(rng.uniform(0.02, 0.5, shape.num_heads), jnp.float32)
    what = f"[seed={seed} xla shape={shape} mask={kind}]"
    out, grads = impl_out_and_grads(q, k, v, w, mask, slopes, impl="xla")
    expected, _ = reference_attention(q, k, v, mask, slopes=slopes)
    assert_close(out, expected, F32_RTOL, f"{what} out")
    for name, got, want in zip(
        ("dq", "dk", "dv"), grads, reference_grads(q, k, v, w, mask, slopes=slopes), strict=False
    ):
        assert_close(got, want, F32_RTOL, f"{what} {name}")


def test_xla_fully_masked_rows_are_zero(seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w = random_qkv(rng, shape)
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    mask = AttentionMask(
        causal=True,
        q_positions=np.tile(np.arange(t, dtype=np.int32) - t // 2, (b, 1)),
        kv_positions=np.tile(np.arange(s, dtype=np.int32), (b, 1)),
    )
    out, (dq, _, _, _) = impl_out_and_grads(q, k, v, w, mask, impl="xla")
    dead = np.arange(t) < t // 2  # positions < 0 see no key
    assert (np.asarray(out)[:, dead] == 0).all() and (np.asarray(dq)[:, dead] == 0).all()
    assert np.isfinite(np.asarray(out)).all()


def test_xla_rejects_soft_cap():
    q, k, v, _ = random_qkv(np.random.default_rng(0), SHAPES[0])
    with pytest.raises(ValueError, match="logits_soft_cap=30.0: impl='xla'"):
        attention(q, k, v, impl="xla", logits_soft_cap=30.0)
