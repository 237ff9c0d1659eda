"""attention() under jax.jit, with the AttentionMask passed as a (pytree) argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    DSLOPES_RTOL,
    F32_RTOL,
    SHAPES,
    assert_close,
    make_mask,
    random_qkv,
    reference_attention,
)

from longctx_jax.attention import attention


@pytest.mark.parametrize("kind", ["causal", "permuted"])
@pytest.mark.parametrize("impl", ["reference", "blockwise", "auto"])
def test_jit_matches_eager(impl, kind, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w = random_qkv(rng, shape)
    mask = make_mask(kind, rng, shape)
    slopes = jnp.asarray(rng.uniform(0.02, 0.5, shape.num_heads), jnp.float32)
    what = f"[seed={seed} impl={impl} mask={kind}]"
    traces = []

    def loss(q, k, v, mask, slopes):
        out = attention(q, k, v, mask=mask, impl=impl, logits_soft_cap=4.0, alibi_slopes=slopes)
        return jnp.sum(w * out), out

    def fwd_bwd(q, k, v, mask, slopes):
        traces.append(None)
        return jax.grad(loss, argnums=(0, 1, 2, 4), has_aux=True)(q, k, v, mask, slopes)

    eager_grads, eager_out = fwd_bwd(q, k, v, mask, slopes)
    jitted = jax.jit(fwd_bwd)
    jit_grads, jit_out = jitted(q, k, v, mask, slopes)
    assert_close(jit_out, eager_out, F32_RTOL, f"{what} jit out vs eager")
    for name, g, g0 in zip(("dq", "dk", "dv", "dslopes"), jit_grads, eager_grads, strict=True):
        rtol = DSLOPES_RTOL if name == "dslopes" else F32_RTOL
        assert_close(g, g0, rtol, f"{what} jit {name} vs eager")

    # Another mask of the same kind: only array leaves change, so no retrace, and still right.
    mask2 = make_mask(kind, rng, shape)
    _, out2 = jitted(q, k, v, mask2, slopes)
    assert len(traces) == 2, f"{what} retraced for a mask with the same static fields"
    expected, _ = reference_attention(q, k, v, mask2, soft_cap=4.0, slopes=slopes)
    assert_close(out2, expected, F32_RTOL, f"{what} jit out, second mask, vs float64 numpy")
