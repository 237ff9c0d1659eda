"""apply_rope against float64 numpy rotations, and RoPE's relative-position property."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.positions import apply_rope, rope_frequencies


def rng_for(request):
    """A generator seeded by the test's id: fresh inputs per test, reproducible across runs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def float32_angles(positions, inv_freq):
    """position * inv_freq rounded to float32, as HF (and apply_rope) compute the angle."""
    return positions.astype(np.float32)[:, :, None, None] * np.asarray(inv_freq, np.float32)


def reference_half(x, positions, inv_freq, attention_factor=1.0):
    """HF rotate_half in float64: x * cos + rotate_half(x) * sin on the rotary features."""
    x = np.asarray(x, np.float64)
    half = len(inv_freq)
    angle = np.concatenate([float32_angles(positions, inv_freq)] * 2, axis=-1).astype(np.float64)
    x_rot = x[..., : 2 * half]
    rotated_half = np.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    out = (x_rot * np.cos(angle) + rotated_half * np.sin(angle)) * attention_factor
    return np.concatenate([out, x[..., 2 * half :]], axis=-1)


def reference_interleaved(x, positions, inv_freq, attention_factor=1.0):
    """Meta's original form: features (2i, 2i+1) as one complex number, times e^{i angle}."""
    x = np.asarray(x, np.float64)
    half = len(inv_freq)
    z = x[..., 0 : 2 * half : 2] + 1j * x[..., 1 : 2 * half : 2]
    z = z * np.exp(1j * float32_angles(positions, inv_freq).astype(np.float64)) * attention_factor
    out = np.stack([z.real, z.imag], axis=-1).reshape(*x.shape[:-1], 2 * half)
    return np.concatenate([out, x[..., 2 * half :]], axis=-1)


REFERENCES = {"half": reference_half, "interleaved": reference_interleaved}


def random_inputs(rng, head_dim=64, batch=2, length=7, heads=3, max_position=100_000):
    x = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    positions = rng.integers(0, max_position, size=(batch, length)).astype(np.int32)
    return x, positions


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize(
    "kind,scaling",
    [
        ("default", {}),
        ("yarn", dict(factor=8.0, original_max_position_embeddings=4096)),
        ("default", dict(partial_rotary_factor=0.5)),
    ],
)
def test_matches_float64_reference(request, layout, kind, scaling):
    x, positions = random_inputs(rng_for(request))
    inv_freq, attention_factor = rope_frequencies(64, kind=kind, **scaling)
    out = apply_rope(x, positions, inv_freq, attention_factor=attention_factor, layout=layout)
    assert out.shape == x.shape and out.dtype == jnp.float32
    expected = REFERENCES[layout](x, positions, inv_freq, attention_factor)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_partial_rotary_passes_the_rest_through_unchanged(request, layout):
    x, positions = random_inputs(rng_for(request), head_dim=80)
    inv_freq, _ = rope_frequencies(80, partial_rotary_factor=0.4)  # rotary dim 32
    out = np.asarray(apply_rope(x, positions, inv_freq, layout=layout))
    np.testing.assert_array_equal(out[..., 32:], x[..., 32:])
    assert not np.allclose(out[..., :32], x[..., :32])


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_bfloat16_in_bfloat16_out(request, layout):
    x, positions = random_inputs(rng_for(request))
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    inv_freq, _ = rope_frequencies(64, base=500000.0)
    out = apply_rope(x_bf16, positions, inv_freq, layout=layout)
    assert out.dtype == jnp.bfloat16
    expected = REFERENCES[layout](np.asarray(x_bf16, np.float32), positions, inv_freq)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_scores_depend_only_on_relative_position(request, layout):
    rng = rng_for(request)
    batch, length, heads, head_dim = 2, 16, 4, 64
    q = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, length, heads, head_dim)).astype(np.float32)
    m = rng.integers(0, 1000, size=(batch, length))
    n = rng.integers(0, 1000, size=(batch, length))
    offset = int(rng.integers(1, 1000))
    inv_freq, _ = rope_frequencies(
        head_dim,
        kind="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=256,
    )

    def scores(q_positions, k_positions):
        rq = apply_rope(q, q_positions, inv_freq, layout=layout)
        rk = apply_rope(k, k_positions, inv_freq, layout=layout)
        return np.asarray(jnp.einsum("bthd,bthd->bth", rq, rk))

    base = scores(m, n)
    np.testing.assert_allclose(scores(m + offset, n + offset), base, rtol=1e-4, atol=2e-3)
    # Shifting only one side changes the scores: the check above is not vacuous.
    assert not np.allclose(scores(m + offset, n), base, rtol=1e-4, atol=2e-3)


def test_interleaved_is_half_after_pairing_permutation(request):
    x, positions = random_inputs(rng_for(request))
    inv_freq, _ = rope_frequencies(64, base=10000.0)
    # interleaved pairs (2i, 2i+1); half pairs (i, i+32): gather evens then odds.
    to_half = np.concatenate([np.arange(0, 64, 2), np.arange(1, 64, 2)])
    half = apply_rope(x[..., to_half], positions, inv_freq, layout="half")
    interleaved = apply_rope(x, positions, inv_freq, layout="interleaved")
    np.testing.assert_allclose(np.asarray(half), np.asarray(interleaved)[..., to_half], atol=1e-6)


def test_jit_matches_eager(request):
    x, positions = random_inputs(rng_for(request))
    inv_freq, attention_factor = rope_frequencies(
        64, kind="yarn", factor=4.0, original_max_position_embeddings=2048
    )
    eager = apply_rope(x, positions, inv_freq, attention_factor=attention_factor)
    jitted = jax.jit(apply_rope, static_argnames="layout")(
        x, positions, inv_freq, attention_factor=attention_factor
    )
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "x_shape,positions_shape,rotary_dim,layout,name",
    [
        ((2, 7, 3, 64), (2, 8), 64, "half", "positions"),
        ((2, 7, 3, 64), (7,), 64, "half", "positions"),
        ((2, 7, 3, 64), (2, 7), 64, "neox", "layout"),
        ((2, 7, 3, 64), (2, 7), 128, "half", "inv_freq"),
        ((7, 3, 64), (7,), 64, "half", "x"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(
    x_shape, positions_shape, rotary_dim, layout, name
):
    x = jnp.zeros(x_shape)
    positions = jnp.zeros(positions_shape, jnp.int32)
    inv_freq = jnp.ones(rotary_dim // 2)
    with pytest.raises(ValueError, match=name):
        apply_rope(x, positions, inv_freq, layout=layout)
