"""The whole DecoderLM forward pass against an independent float64 numpy forward
(tests/model/numpy_reference.py):

    embed -> L x [x += out(attn(rope(q), rope(k), v)) of rmsnorm(x); x += swiglu(rmsnorm(x))]
          -> rmsnorm -> tied head (embedding transposed) or untied head

Attention is causal on positions, within a document (segment), with GQA (query head n reads
key/value head n // (num_heads // num_kv_heads)), scaled by 1 / sqrt(head_dim); RoPE is the
default kind, "half" layout (feature i pairs with i + head_dim / 2). Parameters come from
`model.init` with the test's seed; RMSNorm scales (all 1 at init) are then perturbed, so a norm
that ignored its scale would fail. float32 matches to rounding; bfloat16 activations stay within
bf16 rounding of the reference (RMS) and are measurably farther from it than float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import apply, packed_segments, random_tokens, tiny_config
from numpy_reference import reference_logits

from longctx_jax.model import DecoderLM

B, T = 2, 24
F32_TOL = 1e-5  # max |error| relative to max |reference logit| (observed <= 3e-6)
# bfloat16: root-mean-square error relative to the reference's RMS (observed 0.013 - 0.024 over 80
# seeds; the max error, dominated by a few sharp-softmax tokens, reaches 0.066).
BF16_TOL = 5e-2


def model_params(cfg, seed):
    """model.init's parameters, with every RMSNorm scale perturbed away from 1."""
    key_init, key_scale = jax.random.split(jax.random.key(seed))
    boxed = DecoderLM(cfg).init(key_init, jnp.zeros((1, T), jnp.int32))["params"]
    params = nn.unbox(boxed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key_scale, len(leaves))
    perturbed = [
        leaf * (1 + 0.2 * jax.random.normal(k, leaf.shape)) if leaf.ndim == 1 else leaf
        for (path, leaf), k in zip(leaves, keys, strict=True)
    ]
    assert sum(leaf.ndim == 1 for _, leaf in leaves) == 2 * cfg.num_layers + 1  # the norms
    return jax.tree_util.tree_unflatten(treedef, perturbed)


def inputs(rng, packed: bool):
    tokens = random_tokens(rng, B, T)
    if packed:
        segments, positions = packed_segments(rng, B, T, docs=3)
    else:
        segments = jnp.zeros((B, T), jnp.int32)
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return tokens, positions, segments


def max_error(got, want) -> float:
    """max |got - want| relative to max |want|."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def rms_error(got, want) -> float:
    """RMS of got - want relative to the RMS of want."""
    diff = np.asarray(got, np.float64) - want
    return float(np.sqrt(np.mean(diff**2) / np.mean(want**2)))


CASES = {
    "tied": ({}, False),
    # an untied head, and an epsilon large enough to matter next to mean(x**2) ~ init_std**2
    "untied-eps": ({"tie_embeddings": False, "norm_eps": 0.05}, False),
    "packed": ({}, True),  # three documents per row: positions restart, segments separate
    "mqa-rope-base": ({"num_kv_heads": 1, "position.rope_base": 500.0}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float32_logits_match_numpy_float64(case, seed):
    overrides, packed = CASES[case]
    cfg = tiny_config(overrides)
    rng = np.random.default_rng(seed)
    params = model_params(cfg, seed)
    tokens, positions, segments = inputs(rng, packed)
    want = reference_logits(params, cfg, tokens, np.asarray(positions), np.asarray(segments))
    kwargs = dict(positions=positions, segment_ids=segments) if packed else {}
    got = apply(cfg, {"params": params}, tokens, **kwargs)
    assert got.dtype == jnp.float32 and got.shape == (B, T, cfg.vocab_size)
    err = max_error(got, want)
    assert err <= F32_TOL, f"[seed={seed} {case}] float32 logits off by {err:.3g} (relative)"


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_bfloat16_logits_are_close_but_measurably_coarser(tied, seed):
    cfg32 = tiny_config({"tie_embeddings": tied})
    cfg16 = tiny_config({"tie_embeddings": tied, "dtype": "bfloat16"})
    rng = np.random.default_rng(seed)
    params = model_params(cfg32, seed)  # float32 parameters for both (param_dtype float32)
    tokens, positions, segments = inputs(rng, packed=True)
    want = reference_logits(params, cfg32, tokens, np.asarray(positions), np.asarray(segments))
    kwargs = dict(positions=positions, segment_ids=segments)
    got32 = apply(cfg32, {"params": params}, tokens, **kwargs)
    got16 = apply(cfg16, {"params": params}, tokens, **kwargs)
    assert got16.dtype == jnp.float32  # logits are float32 whatever the activation dtype
    err32, err16 = rms_error(got32, want), rms_error(got16, want)
    what = f"[seed={seed} tied={tied}] RMS error: float32 {err32:.3g}, bfloat16 {err16:.3g}"
    assert err16 <= BF16_TOL, what
    # bf16 keeps 8 significant bits (relative rounding 2**-9 ~ 2e-3): the activations really are
    # computed in bfloat16, not silently in float32 (observed ratio > 10000).
    assert err16 >= 1e-3 and err16 >= 100 * err32, what
