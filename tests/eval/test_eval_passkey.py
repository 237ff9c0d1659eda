"""Passkey accuracy: random model ~0, a perfect retriever 1, and one teacher-forced pass equals
step-by-step greedy decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_testlib import module_seed, tiny_model_config

from longctx_jax.eval.passkey_eval import (
    greedy_predictions_fn,
    passkey_accuracy,
    teacher_forced_predictions,
)
from longctx_jax.eval.perplexity import model_logits_fn
from longctx_jax.model import DecoderLM

LENGTHS, DEPTHS = [260, 300], [0.0, 0.5, 1.0]
K = len("pass key is ")


def induction_logits_fn(params, tokens_BT, positions_BT):
    """A perfect induction head: after the K-gram ending at t, predict the token that followed
    that K-gram's most recent earlier occurrence (byte 0 if none)."""
    del params, positions_BT
    b, t = tokens_BT.shape
    shifted = jnp.stack(  # shifted[i][b, t] = tokens[b, t - i], -1 before the start
        [jnp.pad(tokens_BT, ((0, 0), (i, 0)), constant_values=-1)[:, :t] for i in range(K)]
    )
    match = jnp.all(shifted[:, :, :, None] == shifted[:, :, None, :], axis=0)  # [B, T, S]
    index = jnp.arange(t)
    match &= (index[None, :] < index[:, None]) & (index[None, :] >= K - 1)
    latest = jnp.max(jnp.where(match, index[None, None, :], -1), axis=-1)  # [B, T]
    following = jnp.take_along_axis(tokens_BT, jnp.clip(latest + 1, 0, t - 1), axis=1)
    predicted = jnp.where(latest >= 0, following, 0)
    return 10.0 * jax.nn.one_hot(predicted, 256)


def test_perfect_retriever_scores_one():
    result = passkey_accuracy(
        None,
        None,
        lengths=LENGTHS,
        depths=DEPTHS,
        num_examples=3,
        seed=1,
        batch_size=4,
        logits_fn=induction_logits_fn,
        progress=False,
    )
    assert result["lengths"] == LENGTHS and result["depths"] == DEPTHS
    np.testing.assert_array_equal(result["accuracy"], np.ones((2, 3)))
    np.testing.assert_array_equal(result["teacher_forced_digit_accuracy"], np.ones((2, 3)))


@pytest.fixture(scope="module")
def tiny_model():
    """A random 1-layer model, shared by the tests of this module (fresh seed per run)."""
    seed = module_seed("tiny_model")
    cfg = tiny_model_config(num_layers=1)
    model = DecoderLM(cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    return seed, cfg, model, params


def test_random_model_scores_zero(tiny_model):
    seed, cfg, _, params = tiny_model
    result = passkey_accuracy(
        cfg, params, lengths=LENGTHS, depths=DEPTHS, num_examples=2, seed=seed, progress=False
    )
    np.testing.assert_array_equal(result["accuracy"], np.zeros((2, 3)))


def greedy_decode(model, params, prompts, steps):
    """Step-by-step greedy decoding of equal-length prompts [B, P]: one unpadded forward pass
    per generated token."""
    sequence = jnp.asarray(prompts, jnp.int32)
    apply = jax.jit(model.apply)  # compiles once per (unpadded) length
    for _ in range(steps):
        logits = apply({"params": params}, sequence)
        sequence = jnp.concatenate([sequence, jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)], 1)
    return np.asarray(sequence[:, prompts.shape[1] :], np.int32)


def test_one_teacher_forced_pass_equals_greedy_decoding(tiny_model):
    seed, cfg, model, params = tiny_model
    rng = np.random.default_rng(seed)
    steps = 3
    short, long = rng.integers(0, 256, (2, 10)), rng.integers(0, 256, (1, 13))
    prompts = [*short, *long]  # different lengths in one padded teacher-forced batch
    greedy = np.concatenate(
        [greedy_decode(model, params, short, steps), greedy_decode(model, params, long, steps)]
    )
    predict = greedy_predictions_fn(model_logits_fn(cfg))

    # Teacher-forcing greedy's own output reproduces it: exact match.
    forced = teacher_forced_predictions(predict, params, prompts, greedy, pad_len=20)
    np.testing.assert_array_equal(forced, greedy)

    # Change one answer token at position i: teacher forcing agrees with greedy up to i and
    # mismatches there, so exact match fails (as greedy decoding does).
    rows = np.arange(len(prompts))
    wrong = greedy.copy()
    changed = rng.integers(0, steps, len(prompts))
    wrong[rows, changed] = (greedy[rows, changed] + 1) % 256
    forced = teacher_forced_predictions(predict, params, prompts, wrong, pad_len=20)
    for row, i in enumerate(changed):
        np.testing.assert_array_equal(forced[row, : i + 1], greedy[row, : i + 1])
        assert not np.array_equal(forced[row], wrong[row])


def test_bad_arguments_raise():
    kwargs = dict(depths=[0.5], num_examples=1, logits_fn=induction_logits_fn, progress=False)
    with pytest.raises(ValueError, match="lengths"):
        passkey_accuracy(None, None, lengths=[], **kwargs)
    with pytest.raises(ValueError, match="length"):
        passkey_accuracy(None, None, lengths=[100], **kwargs)  # shorter than the fixed text
    with pytest.raises(ValueError, match="depths"):
        passkey_accuracy(None, None, lengths=[300], depths=[1.5], num_examples=1, progress=False)
