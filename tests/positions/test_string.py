"""STRING attention (`string_attention`) against a float64 numpy reference that remaps each
pair's relative distance explicitly: forward and gradients. The model's STRING option is tested
in tests/model/test_model_string.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.attention import AttentionMask, string_attention
from longctx_jax.positions import apply_rope, rope_frequencies

B, T, N, K, H = 2, 24, 4, 2, 8  # GQA: query head n reads kv head n // (N // K)
SHIFT, WINDOW = 9, 3


def packed_inputs(rng):
    """Two documents per row (each longer than SHIFT), positions from a random offset."""
    cut = rng.integers(SHIFT + 2, T - SHIFT - 1, size=(B, 1))
    segment_ids = (np.arange(T) >= cut).astype(np.int32)
    positions = np.where(segment_ids, np.arange(T) - cut, np.arange(T))
    positions = (positions + rng.integers(0, 100, size=(B, 1))).astype(np.int32)
    return positions, segment_ids


def numpy_string(q, k, v, w, positions, segment_ids, inv_freq, cap, window):
    """float64 (output, dq, dk, dv) of STRING attention; the gradients are of sum(output * w).

    Each pair's logit is q_m . R(d' * inv_freq) k_n / sqrt(H) on the unrotated q, k, where R
    rotates the feature pairs (i, i + H/2) and d' = d - SHIFT + WINDOW if d >= SHIFT else d.
    """
    q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
    d = (positions[:, :, None] - positions[:, None, :]).astype(np.float64)  # [B, T, S]
    phi = np.where(d >= SHIFT, d - SHIFT + WINDOW, d)[..., None] * np.asarray(inv_freq, np.float64)
    f = np.arange(len(inv_freq))
    rot = np.zeros((*phi.shape[:3], H, H))
    rot[..., f, f] = rot[..., f + H // 2, f + H // 2] = np.cos(phi)
    rot[..., f, f + H // 2], rot[..., f + H // 2, f] = np.sin(phi), -np.sin(phi)
    kr, vr = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
    raw = np.einsum("bmnh,bmshg,bsng->bnms", q, rot, kr) / np.sqrt(H)
    s = raw if cap is None else cap * np.tanh(raw / cap)
    visible = (d >= 0) & (segment_ids[:, :, None] == segment_ids[:, None, :])
    if window is not None:
        visible &= d < window
    assert (visible & (d >= SHIFT)).any(), "no far pair is visible: the test would not test STRING"
    e = np.where(visible[:, None], np.exp(s - s.max(-1, keepdims=True)), 0.0)
    p = e / e.sum(-1, keepdims=True)
    out = np.einsum("bnms,bsnh->bmnh", p, vr)
    dp = np.einsum("bmnh,bsnh->bnms", w, vr)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / np.sqrt(H)
    if cap is not None:
        ds *= 1 - np.tanh(raw / cap) ** 2
    dq = np.einsum("bnms,bmshg,bsng->bmnh", ds, rot, kr)
    dk = np.einsum("bnms,bmshg,bmnh->bsng", ds, rot, q)
    dv = np.einsum("bnms,bmnh->bsnh", p, w)
    per_kv = lambda x: x.reshape(B, T, K, N // K, H).sum(3)  # noqa: E731
    return out, dq, per_kv(dk), per_kv(dv)


@pytest.mark.parametrize("cap, window", [(None, None), (4.0, 14)])
def test_matches_float64_numpy_forward_and_gradients(cap, window, seed):
    rng = np.random.default_rng(seed)
    q, w = (rng.standard_normal((B, T, N, H)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((B, T, K, H)).astype(np.float32) for _ in range(2))
    positions, segment_ids = packed_inputs(rng)
    inv_freq, _ = rope_frequencies(H, base=10000.0)
    mask = AttentionMask(
        causal=True,
        window=window,
        q_positions=positions,
        kv_positions=positions,
        q_segment_ids=segment_ids,
        kv_segment_ids=segment_ids,
    )

    def string(q, k, v):
        q_far = apply_rope(q, positions - SHIFT + WINDOW, inv_freq)
        q, k = (apply_rope(x, positions, inv_freq) for x in (q, k))
        return string_attention(q, q_far, k, v, shift=SHIFT, mask=mask, logits_soft_cap=cap)

    out, vjp = jax.vjp(string, jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    got = (out, *vjp(jnp.asarray(w)))
    want = numpy_string(q, k, v, w, positions, segment_ids, inv_freq, cap, window)
    for name, g, x in zip(("output", "dq", "dk", "dv"), got, want, strict=True):
        assert g.dtype == jnp.float32
        np.testing.assert_allclose(g, x, rtol=1e-4, atol=1e-5 * np.abs(x).max(), err_msg=name)
