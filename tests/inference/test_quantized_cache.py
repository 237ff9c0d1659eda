"""Quantised caches: what is stored, what is read back, and what it costs the attention output.

The codes are checked against an independent numpy quantiser (min-max / absmax over the groups
spec.py defines) applied to the keys and values a float cache holds for the same tokens: keys
written by single-token decode steps are quantised too, not only the prompt's.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from inference_testlib import config, forward, random_params, random_tokens

from longctx_jax.inference.generate import cached_logits
from longctx_jax.inference.quantize import dequantize, pack, quantize, unpack
from longctx_jax.inference.spec import CacheSpec

T = 16


def numpy_quantise(x, bits, axis, group, symmetric):
    """float64 dequantised x: groups of `group` along `axis`."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    g = x.reshape(x.shape[:-1] + (x.shape[-1] // group, group))
    if symmetric:
        mid = 2 ** (bits - 1) - 1
        scale = np.abs(g).max(-1, keepdims=True) / mid
        safe = np.where(scale > 0, scale, 1)
        y = (np.clip(np.round(g / safe) + mid, 0, 2**bits - 1) - mid) * scale
    else:
        lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
        scale = (hi - lo) / (2**bits - 1)
        safe = np.where(scale > 0, scale, 1)
        y = np.clip(np.round((g - lo) / safe), 0, 2**bits - 1) * scale + lo
    return np.moveaxis(y.reshape(x.shape), -1, axis)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trip(bits, seed):
    rng = np.random.default_rng(seed)
    codes = jnp.asarray(rng.integers(0, 2**bits, (3, 5, 16)), jnp.uint8)
    packed = pack(codes, bits)
    assert packed.shape == (3, 5, 16 * bits // 8)
    np.testing.assert_array_equal(unpack(packed, bits), codes)


@pytest.mark.parametrize(
    "bits, axis, group, symmetric", [(8, -1, None, True), (4, -1, 4, False), (2, 1, 4, False)]
)
def test_quantize_matches_numpy(bits, axis, group, symmetric, seed):
    x = np.random.default_rng(seed).normal(size=(2, 8, 3, 8)).astype(np.float32)
    q = quantize(jnp.asarray(x), bits, axis=axis, group_size=group, symmetric=symmetric)
    size = x.shape[axis] if group is None else group
    expected = numpy_quantise(x, bits, axis % 4, size, symmetric)
    np.testing.assert_allclose(dequantize(q), expected, rtol=1e-5, atol=1e-5)


SPECS = {
    "int8_token": CacheSpec(bits=8),
    "int4_token": CacheSpec(bits=4),
    "int2_kivi": CacheSpec(bits=2, key_quant="channel", group_size=4, residual=4),
    "int4_kivi_no_residual": CacheSpec(bits=4, key_quant="channel", group_size=4),
}


@pytest.mark.parametrize("name", SPECS)
def test_stored_codes_equal_numpy_quantisation_of_the_float_cache(name, seed):
    """Prefill 5 tokens, decode 11 one by one: every token outside KIVI's full-precision window
    reads back as the numpy quantisation of its float key / value (decode-written ones too)."""
    spec = SPECS[name]
    cfg = config({"num_layers": 1})
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    _, exact = cached_logits(cfg, params, tokens, chunk_size=(5, 1), return_caches=True)
    _, quantised = cached_logits(
        cfg, params, tokens, cache=spec, chunk_size=(5, 1), return_caches=True
    )
    keys, values = (np.asarray(x, np.float64) for x in exact[0].read(jnp.float32))
    got_k, got_v = (np.asarray(x) for x in quantised[0].read(jnp.float32))
    g = spec.token_group
    n_quantised = max(0, (T - spec.residual) // g) * g
    part = slice(0, n_quantised)
    symmetric = spec.bits == 8
    want_k = numpy_quantise(keys[:, part], spec.bits, 1, g, False)  # KIVI: per channel
    channels = spec.channel_group(values.shape[-1])
    if spec.key_quant != "channel":
        want_k = numpy_quantise(keys[:, part], spec.bits, 3, channels, symmetric)
    want_v = numpy_quantise(values[:, part], spec.bits, 3, channels, symmetric)
    np.testing.assert_allclose(got_k[:, part], want_k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_v[:, part], want_v, rtol=1e-5, atol=1e-5)
    assert np.abs(got_k[:, 5:n_quantised] - keys[:, 5:n_quantised]).max() > 1e-4  # decoded ones
    np.testing.assert_array_equal(got_k[:, n_quantised:], keys[:, n_quantised:])  # the window


def test_logit_error_falls_with_bits(seed):
    cfg = config()
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    full = np.asarray(forward(cfg, params, tokens))
    errors = []
    for bits in (2, 4, 8):
        got = cached_logits(cfg, params, tokens, cache=CacheSpec(bits=bits), chunk_size=(4, 1))
        errors.append(np.abs(np.asarray(got) - full).mean())
    assert errors[0] > errors[1] > errors[2] > 0, errors


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_the_decode_kernel_path_equals_write_then_attend(bits, seed):
    """kernel=True: float caches give the full forward's logits; quantised ones the same
    logits as attending over the stored (quantised) cache after writing the new token."""
    cfg = config()
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    spec = CacheSpec(bits=bits, kernel=True)
    got = cached_logits(cfg, params, tokens, cache=spec, chunk_size=(5, 1))
    if bits is None:
        np.testing.assert_allclose(got, forward(cfg, params, tokens), rtol=2e-5, atol=2e-5)
        return
    plain = cached_logits(cfg, params, tokens, cache=CacheSpec(bits=bits), chunk_size=(5, 1))
    np.testing.assert_allclose(got[:, :5], plain[:, :5], rtol=2e-5, atol=2e-5)  # prefill
    difference = np.abs(np.asarray(got[:, 5:]) - np.asarray(plain[:, 5:])).max()
    assert 0 < difference < 2.0
