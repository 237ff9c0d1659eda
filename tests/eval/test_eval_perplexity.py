"""Sliding-window perplexity: which targets are scored, with which context, and the NLL itself."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_testlib import folder_corpus, tiny_model_config

from longctx_jax.eval.perplexity import perplexity_by_position, sliding_windows
from longctx_jax.model import DecoderLM

VOCAB = 256


def test_sliding_windows_score_every_target_once_with_documented_context():
    for num_targets, eval_len, stride in itertools.product(
        range(1, 40), (1, 4, 7, 8), (1, 3, 4, 7)
    ):
        if stride > eval_len:
            continue
        windows = sliding_windows(num_targets, eval_len, stride)
        if num_targets < eval_len:
            assert windows == []
            continue
        scored = np.zeros(num_targets, np.int64)
        for k, (start, first) in enumerate(windows):
            assert 0 <= start and start + eval_len <= num_targets  # whole window in the document
            if k == 0:
                assert (start, first) == (0, 0)
            else:
                assert eval_len - stride <= first < eval_len  # context >= eval_len - stride
                assert start >= windows[k - 1][0]
            scored[start + first : start + eval_len] += 1
        np.testing.assert_array_equal(scored, 1)
        assert len(windows) == 1 + math.ceil((num_targets - eval_len) / stride)


def reference_window(j, num_targets, eval_len, stride):
    """(start, window position) of the window scoring target j, from the docstring's rule."""
    if j < eval_len:
        return 0, j
    k = (j - eval_len) // stride + 1  # window k scores targets [e_{k-1}, e_k)
    end = min(eval_len + k * stride, num_targets)
    return end - eval_len, j - (end - eval_len)


def fake_logits_fn(params, tokens_BT, positions_BT):
    """Logits that depend on the window's first token, the position and the current token."""
    first = params["first"][tokens_BT[:, :1]]  # [B, 1, V]
    return first + params["position"][positions_BT] + params["token"][tokens_BT]


def log_softmax64(logits):
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


@pytest.mark.parametrize("eval_len,stride,batch_size", [(16, 5, 3), (12, 12, 4), (16, None, 8)])
def test_nll_matches_float64_reference(tmp_path, seed, eval_len, stride, batch_size):
    rng = np.random.default_rng(seed)
    data_config, docs = folder_corpus(tmp_path, rng, [5, 16, 17, 40, 63, 100])
    params = {
        name: jnp.asarray(rng.normal(size=shape), jnp.float32)
        for name, shape in (
            ("first", (VOCAB, VOCAB)),
            ("position", (eval_len, VOCAB)),
            ("token", (VOCAB, VOCAB)),
        )
    }
    np_params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    result = perplexity_by_position(
        None,
        params,
        data_config,
        eval_len=eval_len,
        stride=stride,
        batch_size=batch_size,
        buckets=4,
        logits_fn=fake_logits_fn,
        progress=False,
    )
    stride = stride or eval_len // 2

    edges = [round(i * eval_len / 4) for i in range(5)]
    sums, counts = np.zeros(4), np.zeros(4, np.int64)
    evaluated = 0
    for doc in docs:
        num_targets = len(doc) - 1
        if num_targets < eval_len:
            continue
        evaluated += 1
        for j in range(num_targets):
            start, p = reference_window(j, num_targets, eval_len, stride)
            assert p >= (0 if start == 0 else eval_len - stride)
            logits = (
                np_params["first"][doc[start]]
                + np_params["position"][p]
                + np_params["token"][doc[j]]  # the input at target j is byte j
            )
            bucket = np.searchsorted(edges, p, side="right") - 1
            sums[bucket] -= log_softmax64(logits)[doc[j + 1]]
            counts[bucket] += 1

    assert result["tokens"] == sum(len(d) - 1 for d in docs if len(d) - 1 >= eval_len)
    assert result["num_documents"] == evaluated
    assert result["skipped_documents"] == len(docs) - evaluated
    assert result["by_position"]["edges"] == edges
    assert result["by_position"]["tokens"] == counts.tolist()
    np.testing.assert_allclose(result["nll"], sums.sum() / counts.sum(), rtol=1e-6)
    expected_by_position = [s / c if c else None for s, c in zip(sums, counts, strict=True)]
    for got, want in zip(result["by_position"]["nll"], expected_by_position, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(result["perplexity"], math.exp(result["nll"]), rtol=1e-12)
    np.testing.assert_allclose(result["bits_per_byte"], result["nll"] / math.log(2), rtol=1e-12)


def test_real_model_windows_and_cap(tmp_path, seed):
    """A tiny DecoderLM, windows capped and batched with padding, against per-window logits."""
    rng = np.random.default_rng(seed)
    eval_len, stride, cap = 24, 10, 5
    data_config, docs = folder_corpus(tmp_path, rng, [30, 70])
    cfg = tiny_model_config()
    model = DecoderLM(cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    apply = jax.jit(model.apply)
    result = perplexity_by_position(
        cfg,
        params,
        data_config,
        eval_len=eval_len,
        stride=stride,
        num_windows=cap,
        batch_size=2,
        buckets=[0, 14, 24],
        progress=False,
    )
    # The first `cap` windows in document order, each run alone at positions 0..eval_len-1.
    windows = [
        (d, w)
        for d, doc in enumerate(docs)
        for w in sliding_windows(len(doc) - 1, eval_len, stride)
    ]
    total, count, by_bucket = 0.0, 0, np.zeros(2)
    for d, (start, first) in windows[:cap]:
        tokens = docs[d][start : start + eval_len]
        logits = apply({"params": params}, jnp.asarray(tokens, jnp.int32)[None])[0]
        nll = -log_softmax64(logits)[np.arange(eval_len), docs[d][start + 1 : start + eval_len + 1]]
        total += nll[first:].sum()
        count += eval_len - first
        by_bucket += [nll[first:14].sum(), nll[max(first, 14) :].sum()]
    assert result["num_windows"] == cap and result["tokens"] == count
    np.testing.assert_allclose(result["nll"], total / count, rtol=1e-5)
    counts = result["by_position"]["tokens"]
    np.testing.assert_allclose(
        [n * c for n, c in zip(result["by_position"]["nll"], counts, strict=True)],
        by_bucket,
        rtol=1e-5,
    )


def test_bad_arguments_raise(tmp_path):
    data_config, _ = folder_corpus(tmp_path, np.random.default_rng(0), [20])
    kwargs = dict(logits_fn=fake_logits_fn, progress=False)
    with pytest.raises(ValueError, match="no validation document"):
        perplexity_by_position(None, {}, data_config, eval_len=64, **kwargs)
    with pytest.raises(ValueError, match="stride"):
        perplexity_by_position(None, {}, data_config, eval_len=8, stride=9, **kwargs)
    with pytest.raises(ValueError, match="buckets"):
        perplexity_by_position(None, {}, data_config, eval_len=8, buckets=[0, 5, 4, 8], **kwargs)
    with pytest.raises(ValueError, match="eval_len"):
        perplexity_by_position(None, {}, data_config, eval_len=0, **kwargs)
