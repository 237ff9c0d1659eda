"""What a query may not see: fully-masked rows, causality by gradient, packed documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    DSLOPES_RTOL,
    F32_RTOL,
    IMPLS,
    SHAPES,
    assert_close,
    call_impl,
    explicit_mask,
    grid_case,
    impl_out_and_grads,
    mask_arrays,
    random_qkv,
    reference_attention,
    reference_grads,
    visibility,
)

from longctx_jax.attention import AttentionMask


def masked_rows_mask(scenario: str, rng, shape) -> AttentionMask:
    """A mask under which some (or all) queries see no key."""
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    if scenario == "foreign_segment":  # q segment 7 exists in no key; unsorted ids
        q_seg = rng.choice([0, 1, 7], size=(b, t))
        q_seg[:, 0] = 7
        return AttentionMask(
            q_segment_ids=jnp.asarray(q_seg, jnp.int32),
            kv_segment_ids=jnp.asarray(rng.integers(0, 2, (b, s)), jnp.int32),
        )
    if scenario == "before_every_key":  # causal, some q positions precede every kv position
        q_pos = rng.integers(0, 40 + s, (b, t))
        q_pos[:, 0] = 0
        return AttentionMask(
            causal=True,
            q_positions=jnp.asarray(q_pos, jnp.int32),
            kv_positions=jnp.asarray(np.broadcast_to(40 + np.arange(s), (b, s)), jnp.int32),
        )
    if scenario == "all_rows":  # causal, every q position precedes every kv position
        return AttentionMask(
            causal=True,
            q_positions=jnp.asarray(rng.integers(0, 30, (b, t)), jnp.int32),
            kv_positions=jnp.asarray(rng.integers(30, 100, (b, s)), jnp.int32),
        )
    raise ValueError(scenario)


@pytest.mark.parametrize("scenario", ["foreign_segment", "before_every_key", "all_rows"])
@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows(impl, scenario, seed):
    """Rows with no visible key: output exactly 0, their dq exactly 0, nothing NaN (eager calls)."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w = random_qkv(rng, shape)
    mask = masked_rows_mask(scenario, rng, shape)
    slopes = jnp.asarray(rng.uniform(0.02, 0.5, shape.num_heads), jnp.float32)
    opts = dict(soft_cap=3.0, slopes=slopes)  # every logit path, including ALiBi's gradient
    what = f"[seed={seed} impl={impl} scenario={scenario}]"
    dead = ~visibility(mask, shape.batch, shape.q_len, shape.kv_len).any(-1)  # [B, T]
    assert dead.any(), what

    def loss(q, k, v, slopes):
        out = call_impl(impl, q, k, v, mask, soft_cap=3.0, slopes=slopes)
        return jnp.sum(w * out), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, slopes)
    out = np.asarray(out)
    assert (out[dead] == 0).all(), f"{what} output of rows with no visible key is not 0"
    for name, g in zip(("dq", "dk", "dv", "dslopes"), grads, strict=True):
        assert np.isfinite(np.asarray(g)).all(), f"{what} {name} has non-finite values"
    assert (np.asarray(grads[0])[dead] == 0).all(), f"{what} dq of rows with no visible key != 0"
    if dead.all():
        for name, g in zip(("dk", "dv", "dslopes"), grads[1:], strict=True):
            assert (np.asarray(g) == 0).all(), f"{what} {name} != 0 though no query sees a key"

    assert_close(out, reference_attention(q, k, v, mask, **opts)[0], F32_RTOL, f"{what} out")
    expected = reference_grads(q, k, v, w, mask, **opts)
    for name, got, want in zip(("dq", "dk", "dv", "dslopes"), grads, expected, strict=True):
        if np.abs(want).max() > 0:
            rtol = DSLOPES_RTOL if name == "dslopes" else F32_RTOL
            assert_close(got, want, rtol, f"{what} {name} vs float64 jax.grad reference")


@pytest.mark.parametrize("impl", IMPLS[:3])
def test_causal_gradient_ignores_future_keys(impl, seed):
    """d out[t] / d (k, v)[j] == 0 exactly when kv_pos[j] > q_pos[t] (permuted positions)."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w, _ = grid_case(rng, shape, "none")
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    q_pos = np.stack([rng.permutation(t) + (s - t) for _ in range(b)])
    kv_pos = np.stack([rng.permutation(s) for _ in range(b)])
    mask = explicit_mask(
        AttentionMask(
            causal=True, q_positions=jnp.asarray(q_pos), kv_positions=jnp.asarray(kv_pos)
        ),
        b,
        t,
        s,
    )
    for row in rng.choice(t, size=3, replace=False):
        what = f"[seed={seed} impl={impl} query row {row}]"
        w_row = jnp.zeros_like(w).at[:, row].set(w[:, row])
        _, (dq, dk, dv, _) = impl_out_and_grads(q, k, v, w_row, mask, impl=impl)
        dk, dv = np.asarray(dk), np.asarray(dv)
        future = kv_pos > q_pos[:, row][:, None]  # [B, S]
        assert future.any() and (~future).any(), what
        assert (dk[future] == 0).all(), f"{what} dk of future keys is not exactly 0"
        assert (dv[future] == 0).all(), f"{what} dv of future keys is not exactly 0"
        assert (np.abs(dv[~future]).sum(-1) > 0).all(), f"{what} dv of visible keys is 0"
        assert (np.delete(np.asarray(dq), row, axis=1) == 0).all(), f"{what} dq of other rows"


@pytest.mark.parametrize("kind", ["segments", "combined"])
@pytest.mark.parametrize("impl", IMPLS[:3])
def test_packed_documents_are_independent(impl, kind, seed):
    """Changing document A's keys and values leaves every other document's output unchanged."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w, mask = grid_case(rng, shape, kind)
    _, _, _, _, q_seg, kv_seg = mask_arrays(mask, shape.batch, shape.q_len, shape.kv_len)
    doc = np.array([rng.choice(row) for row in kv_seg])[:, None]  # document A, per batch row
    in_a_kv, in_a_q = kv_seg == doc, q_seg == doc
    what = f"[seed={seed} impl={impl} mask={kind}]"

    noise = lambda x: jnp.where(  # noqa: E731
        in_a_kv[:, :, None, None], jnp.asarray(rng.standard_normal(x.shape), x.dtype), x
    )
    w_others = w * jnp.asarray(~in_a_q[:, :, None, None], w.dtype)
    out, (_, dk, dv, _) = impl_out_and_grads(q, k, v, w_others, mask, impl=impl)
    out2, _ = impl_out_and_grads(q, noise(k), noise(v), w_others, mask, impl=impl)
    out, out2 = np.asarray(out), np.asarray(out2)
    np.testing.assert_array_equal(out2[~in_a_q], out[~in_a_q], err_msg=f"{what} other documents")
    seen_a = visibility(mask, shape.batch, shape.q_len, shape.kv_len).any(-1) & in_a_q
    if seen_a.any():
        assert (out2[seen_a] != out[seen_a]).any(), f"{what} document A's output did not change"
    # and by gradient: other documents' outputs do not depend on A's keys and values at all
    assert (np.asarray(dk)[in_a_kv] == 0).all(), f"{what} d(others)/dk_A != 0"
    assert (np.asarray(dv)[in_a_kv] == 0).all(), f"{what} d(others)/dv_A != 0"
