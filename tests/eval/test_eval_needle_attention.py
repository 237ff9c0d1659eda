"""Needle attention: dilution statistics and retrieval-head scores against numpy on hand-built
attention, the evaluator through the registry, and the refusals."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from eval_testlib import module_seed, tiny_model_config

from longctx_jax.data import default_data_config
from longctx_jax.data.tasks import make_niah_example
from longctx_jax.eval import registry
from longctx_jax.eval.needle_attention import (
    answer_sources,
    needle_attention_fn,
    needle_attention_stats,
    needle_row_stats,
)
from longctx_jax.eval.registry import eval_config, validate_evals
from longctx_jax.model import DecoderLM, attention_maps

LENGTH = 400


def causal_softmax(rng, shape_LBNTT):
    logits = 3.0 * rng.standard_normal(shape_LBNTT)
    t = shape_LBNTT[-1]
    visible = np.tril(np.ones((t, t), bool))
    logits = np.where(visible, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_row_stats_match_numpy(seed):
    rng = np.random.default_rng(seed)
    L, B, N, T, R = 2, 2, 3, 12, 4
    attn = causal_softmax(rng, (L, B, N, T, T))
    tokens = rng.integers(0, 2, (B, T))  # two symbols, wide spans: hits and misses both occur
    rows = rng.integers(0, T, (B, R))
    starts = rng.integers(0, T // 2, (B, R))
    spans = np.stack([starts, starts + rng.integers(1, T, (B, R))], -1).clip(max=T)
    targets = rng.integers(0, 2, (B, R))
    out = jax.device_get(needle_row_stats(attn, tokens, rows, spans, targets))

    mass, entropy, hit = (np.zeros((L, B, N, R)) for _ in range(3))
    for l, b, n, r in np.ndindex(L, B, N, R):
        p = attn[l, b, n, rows[b, r]]
        start, end = spans[b, r]
        mass[l, b, n, r] = p[start:end].sum()
        entropy[l, b, n, r] = -sum(x * np.log(x) for x in p if x > 0)
        top = int(np.argmax(p))
        hit[l, b, n, r] = start <= top < end and tokens[b, top] == targets[b, r]
    np.testing.assert_allclose(out["mass"], mass, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["entropy"], entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["hit"], hit)
    assert 0 < hit.mean() < 1  # both outcomes are exercised


def test_uniform_attention_entropy_is_log_visible_keys():
    T = 16
    attn = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # row r: 1 / (r + 1)
    attn = np.broadcast_to(attn, (1, 1, 2, T, T))
    rows = np.arange(T)[None]
    spans = np.broadcast_to(np.array([3, 7]), (1, T, 2))
    out = jax.device_get(needle_row_stats(attn, np.zeros((1, T), int), rows, spans, rows * 0))
    np.testing.assert_allclose(out["entropy"][0, 0, 0], np.log(np.arange(1, T + 1)), rtol=1e-6)
    visible_in_span = np.clip(np.arange(T) + 1 - 3, 0, 4)
    np.testing.assert_allclose(out["mass"][0, 0, 1], visible_in_span / np.arange(1, T + 1))


def niah_examples(seed, variant="single"):
    length = LENGTH if variant == "single" else 640  # four needles need more room
    return [
        make_niah_example(seed, length, depth, index=i, variant=variant)
        for i, depth in enumerate((0.1, 0.6, 0.9))
    ]


@pytest.mark.parametrize("variant", ["single", "multivalue"])
def test_answer_sources_point_at_the_copied_needle_values(seed, variant):
    for example in niah_examples(seed, variant):
        rows, spans, targets = answer_sources(example)
        digits = sum(len(v) for v in example.metadata["answer"].split(", "))
        assert len(rows) == digits
        np.testing.assert_array_equal(example.tokens[rows + 1], targets)
        assert all(bytes([c]).isdigit() for c in targets)
        for (start, end), target in zip(spans, targets, strict=True):
            needle = example.tokens[start:end].astype(np.uint8).tobytes().decode()
            assert needle.startswith("One of the special magic numbers") and chr(target) in needle


def test_retrieval_score_picks_the_head_that_copies_from_the_needle(seed):
    """Hand-built attention over real NIAH examples: head (1, 2) puts most of its mass on the
    needle byte holding the digit being produced, head (0, 1) on the needle's first byte (in the
    needle, wrong token), the rest is uniform (argmax: the first key, outside the needle)."""
    examples = niah_examples(seed)
    L, N, T = 2, 4, LENGTH
    attn = np.broadcast_to(np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None], (L, 3, N, T, T))
    attn = attn.copy()
    for b, example in enumerate(examples):
        value = example.metadata["needles"][0]
        digits_start = value["end"] - 1 - len(value["value"])  # the value, before the "."
        for d, row in enumerate(answer_sources(example)[0]):
            attn[1, b, 2, row] *= 0.1
            attn[1, b, 2, row, digits_start + d] += 0.9
            attn[0, b, 1, row] *= 0.1
            attn[0, b, 1, row, value["start"]] += 0.9

    def stats_fn(params, tokens, positions, rows, spans, targets):
        del positions
        return needle_row_stats(params, tokens, rows, spans, targets)

    stats = needle_attention_stats(stats_fn, attn, examples, pad_len=T, batch_size=3)
    expected = np.zeros((L, N))
    expected[1, 2] = 1.0
    np.testing.assert_array_equal(stats["retrieval_score"], expected)
    assert stats["needle_mass"][1, 2] > 0.9 and stats["needle_mass"][0, 1] > 0.9
    assert stats["needle_mass"][0, 0] < 0.2
    assert stats["rows"] == 3 * 7


@pytest.fixture(scope="module")
def tiny_model():
    seed = module_seed("tiny_model")
    cfg = tiny_model_config()
    params = DecoderLM(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    return seed, cfg, params


def test_stats_of_the_model_are_its_captured_attention(tiny_model):
    seed, cfg, params = tiny_model
    example = niah_examples(seed)[1]
    stats = needle_attention_stats(
        needle_attention_fn(cfg), params, [example], pad_len=LENGTH, batch_size=2
    )
    tokens = jnp.asarray(example.tokens[None, :-1])
    _, state = DecoderLM(cfg).apply(
        {"params": params}, tokens, capture_attention=True, mutable=["intermediates"]
    )
    attn = np.asarray(attention_maps(state))[:, 0]  # [L, N, T, T]
    rows, spans, _ = answer_sources(example)
    mass = np.mean(
        [attn[:, :, r, s:e].sum(-1) for r, (s, e) in zip(rows, spans, strict=True)], axis=0
    )
    np.testing.assert_allclose(stats["needle_mass"], mass, rtol=1e-4, atol=1e-6)


def test_evaluator_through_the_registry(tiny_model):
    _, cfg, params = tiny_model
    data = default_data_config()
    data.seq_len = LENGTH
    evaluator = eval_config(
        "needle_attention", lengths=(400, 480), depths=(0.0, 1.0), num_examples=1, batch_size=2
    )
    validate_evals(ml_collections.ConfigDict({"x": evaluator}), data)
    scalars, details = registry.get("needle_attention").run(
        evaluator, cfg, params, data, progress=False
    )
    per_length = ["needle_mass", "needle_mass_max_head", "entropy", "uniform_entropy"]
    assert list(scalars) == [
        *(f"{name}@{n}" for n in (400, 480) for name in per_length),
        "top_head_score",
        "num_retrieval_heads",
    ]
    for n in (400, 480):
        assert 0 < scalars[f"needle_mass@{n}"] <= scalars[f"needle_mass_max_head@{n}"] <= 1
        assert 0 < scalars[f"entropy@{n}"] <= scalars[f"uniform_entropy@{n}"]
    assert 0 <= scalars["top_head_score"] <= 1
    assert scalars["num_retrieval_heads"] in range(cfg.num_layers * cfg.num_heads + 1)
    assert np.shape(details["retrieval_score"]) == (cfg.num_layers, cfg.num_heads)
    assert np.shape(details["by_length"]["480"]["needle_mass"]) == (cfg.num_layers, cfg.num_heads)


def test_refuses_models_without_dense_attention(tiny_model):
    _, cfg, params = tiny_model
    sparse = tiny_model_config({"attention.kind": "sparse_topk"})
    data = default_data_config()
    data.seq_len = LENGTH
    evaluator = eval_config("needle_attention", depths=(0.5,), num_examples=1)
    with pytest.raises(ValueError, match=r"model\.attention\.kind='sparse_topk'.*'dense'"):
        registry.get("needle_attention").run(evaluator, sparse, params, data, progress=False)
