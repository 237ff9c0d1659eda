"""Causality and document isolation, by gradient and by perturbing tokens.

The gradient test differentiates the logits with respect to the input embeddings (the model's
`decode` entry point) and checks the full [t, t'] dependency pattern: logits at t depend on the
input at t' exactly when t' is in t's document and not after t (and never across batch rows).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import apply, packed_segments, random_params, random_tokens, tiny_config

from longctx_jax.model import DecoderLM

CASES = [  # (position kind, attention impl, packed documents)
    ("rope", "blockwise", True),
    ("alibi", "blockwise", False),
    ("nope", "blockwise", True),
    ("rope", "reference", False),
]


@pytest.mark.parametrize("kind,impl,packed", CASES, ids=lambda x: str(x))
def test_input_gradients_follow_the_mask(kind, impl, packed, seed):
    cfg = tiny_config({"position.kind": kind, "attention.impl": impl})
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    b, t = 2, 12
    tokens = random_tokens(rng, b, t)
    if packed:
        segment_ids, positions = packed_segments(rng, b, t)
    else:
        segment_ids, positions = None, jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x = apply(cfg, params, tokens, method="embed")
    readout = jnp.asarray(rng.standard_normal(cfg.vocab_size), jnp.float32)
    model = DecoderLM(cfg)

    def scalar_per_position(x_BTD):
        logits = model.apply(
            params, x_BTD, positions=positions, segment_ids=segment_ids, method="decode"
        )
        return logits @ readout  # [B, T]

    jac = jax.jit(jax.jacrev(scalar_per_position))(x)  # [B, T, B, T', D]
    influence = np.abs(np.asarray(jac)).sum(-1)  # [B, T, B, T']
    seg = np.zeros((b, t), int) if segment_ids is None else np.asarray(segment_ids)
    pos = np.asarray(positions)
    for row in range(b):
        visible = (seg[row][:, None] == seg[row][None, :]) & (
            pos[row][None, :] <= pos[row][:, None]
        )
        got = influence[row, :, row]
        leaks = np.argwhere((got != 0) & ~visible)
        assert leaks.size == 0, f"row {row}: logits at t depend on hidden t' (t, t') = {leaks[:5]}"
        dead = np.argwhere((got == 0) & visible)
        assert dead.size == 0, f"row {row}: no gradient from visible (t, t') = {dead[:5]}"
        for other in range(b):
            if other != row:
                assert not influence[row, :, other].any(), f"batch rows {row} and {other} mix"


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_future_tokens_leave_past_logits_bit_identical(impl, seed):
    cfg = tiny_config({"attention.impl": impl})
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, 2, 16)
    cut = int(rng.integers(1, 15))
    changed = tokens.at[:, cut:].set((tokens[:, cut:] + 1 + rng.integers(0, 254)) % 256)
    before, after = apply(cfg, params, tokens), apply(cfg, params, changed)
    np.testing.assert_array_equal(before[:, :cut], after[:, :cut], err_msg=f"cut={cut}")
    assert not np.allclose(before[:, cut:], after[:, cut:]), "changed tokens changed nothing"


@pytest.mark.parametrize("kind,impl", [("rope", "reference"), ("alibi", "blockwise")])
def test_documents_are_isolated_with_segment_ids(kind, impl, seed):
    """Changing document A leaves document B's logits bit-identical; without segment ids B moves."""
    cfg = tiny_config({"attention.impl": impl, "position.kind": kind})
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    segment_ids, positions = packed_segments(rng, 2, 20, docs=3)
    tokens = random_tokens(rng, 2, 20)
    doc_a = np.asarray(segment_ids) == 0
    changed = jnp.where(doc_a, (tokens + 1 + rng.integers(0, 254)) % 256, tokens)

    def logits(tok, segments):
        return np.asarray(apply(cfg, params, tok, positions=positions, segment_ids=segments))

    before, after = logits(tokens, segment_ids), logits(changed, segment_ids)
    np.testing.assert_array_equal(before[~doc_a], after[~doc_a], err_msg="documents leak")
    assert not np.allclose(before[doc_a], after[doc_a])

    # The same rows without document masking: later documents see document A.
    before, after = logits(tokens, None), logits(changed, None)
    assert not np.allclose(before[~doc_a], after[~doc_a]), "no leak without segment ids?"
