"""Task evaluators: the teacher-forced task scorer equals greedy decoding, mqar / niah through the
registry (random model in range, oracles at 1), effective length, and bad fields."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from eval_testlib import module_seed, tiny_model_config

from longctx_jax.data import default_data_config
from longctx_jax.data.task_source import train_task_seed
from longctx_jax.data.tasks import TaskExample, make_mqar_example, make_niah_example
from longctx_jax.eval import registry
from longctx_jax.eval.evaluators import mqar as mqar_module
from longctx_jax.eval.evaluators import niah as niah_module
from longctx_jax.eval.evaluators.niah import effective_length
from longctx_jax.eval.perplexity import model_logits_fn
from longctx_jax.eval.registry import eval_config, validate_evals
from longctx_jax.eval.task_eval import (
    EVAL_SEED_LIMIT,
    greedy_predictions_fn,
    score_task_examples,
)
from longctx_jax.model import DecoderLM

NIAH_LENGTH = 400  # the shortest single-needle NIAH example needs 343 bytes


@pytest.fixture(scope="module")
def tiny_model():
    """A random 1-layer model, shared by the tests of this module (fresh seed per run)."""
    seed = module_seed("tiny_model")
    cfg = tiny_model_config(num_layers=1)
    model = DecoderLM(cfg)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    return seed, cfg, model, params


def data_config(seq_len=NIAH_LENGTH):
    config = default_data_config()
    config.seq_len = seq_len
    return config


# ------------------------------------------------------------------ the scorer is greedy decoding


def greedy_decode(model, params, prompt, steps):
    """Step-by-step greedy decoding of one prompt: one unpadded forward pass per token."""
    sequence = jnp.asarray(prompt, jnp.int32)[None]
    apply = jax.jit(model.apply)
    for _ in range(steps):
        logits = apply({"params": params}, sequence)
        sequence = jnp.concatenate([sequence, jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)], 1)
    return np.asarray(sequence[0, len(prompt) :], np.int32)


def with_answer(example, answer):
    """`example` with its (single) answer span's tokens replaced by `answer`."""
    tokens = example.tokens.copy()
    tokens[example.prompt_len :] = answer
    return TaskExample(
        task=example.task,
        tokens=tokens,
        answer_mask=example.answer_mask,
        answer_spans=example.answer_spans,
        metadata=example.metadata,
    )


def test_teacher_forced_score_equals_greedy_decoding_on_niah(tiny_model):
    seed, cfg, model, params = tiny_model
    rng = np.random.default_rng(seed)
    examples = [
        make_niah_example(seed, NIAH_LENGTH, depth, index=i, value_digits=3)
        for i, depth in enumerate((0.0, 0.7))
    ]
    steps = len(examples[0].answer_tokens)
    greedy = [greedy_decode(model, params, e.tokens[: e.prompt_len], steps) for e in examples]
    predict = greedy_predictions_fn(model_logits_fn(cfg))
    score = lambda xs: score_task_examples(  # noqa: E731
        predict, params, xs, pad_len=NIAH_LENGTH, batch_size=4
    )

    # The true answers: exact iff greedy decoding produced them (a random model: never).
    for example, g, s in zip(examples, greedy, score(examples), strict=True):
        assert s.exact == np.array_equal(g, example.answer_tokens)
        assert s.token_hits == int(np.sum(s.predicted == example.answer_tokens))

    # Greedy's own output as the answer: exact match, every teacher-forced argmax is greedy's.
    own = [with_answer(e, g) for e, g in zip(examples, greedy, strict=True)]
    for g, s in zip(greedy, score(own), strict=True):
        assert s.exact and s.spans == (True,) and s.token_hits == s.num_tokens == steps
        np.testing.assert_array_equal(s.predicted, g)

    # One answer token changed at i: agrees with greedy up to i, fails there.
    changed = rng.integers(0, steps, len(examples))
    wrong = [g.copy() for g in greedy]
    for w, i in zip(wrong, changed, strict=True):
        w[i] = (w[i] + 1) % 256
    scores = score([with_answer(e, w) for e, w in zip(examples, wrong, strict=True)])
    for g, s, i in zip(greedy, scores, changed, strict=True):
        assert not s.exact and s.spans == (False,)
        np.testing.assert_array_equal(s.predicted[: i + 1], g[: i + 1])


def next_token_oracle(wrong_at=None):
    """A LogitsFn whose 'params' are the true next tokens [B, T]: one-hot of them (so every
    answer is right), or of a wrong token where `wrong_at` [B, T] is True."""

    def logits_fn(params, tokens_BT, positions_BT):
        del tokens_BT, positions_BT
        target = params if wrong_at is None else jnp.where(wrong_at, (params + 1) % 256, params)
        return 5.0 * jax.nn.one_hot(target, 256)

    return logits_fn


def next_tokens(examples, pad_len):
    out = np.zeros((len(examples), pad_len), np.int32)
    for b, e in enumerate(examples):
        out[b, : len(e.tokens) - 1] = e.target_tokens()[1:]
    return out


@pytest.mark.parametrize("task", ["mqar", "niah"])
def test_oracle_scores_one_and_wrong_oracle_zero(seed, task):
    if task == "mqar":
        examples = [make_mqar_example(seed, 48, 5, index=i) for i in range(3)]
    else:
        examples = [
            make_niah_example(seed, 640, 0.5, index=i, variant="multiquery") for i in (0, 1)
        ]
    pad = 640
    truth = next_tokens(examples, pad)
    right = score_task_examples(
        greedy_predictions_fn(next_token_oracle()), truth, examples, pad_len=pad, batch_size=4
    )
    assert all(s.exact and all(s.spans) and s.token_hits == s.num_tokens for s in right)
    everywhere = np.ones(truth.shape, bool)
    wrong = score_task_examples(
        greedy_predictions_fn(next_token_oracle(everywhere)),
        truth,
        examples,
        pad_len=pad,
        batch_size=4,
    )
    assert all(not s.exact and not any(s.spans) and s.token_hits == 0 for s in wrong)


def test_per_span_scores_mqar_queries_separately(seed):
    examples = [make_mqar_example(seed, 64, 6, index=i) for i in range(2)]
    truth = next_tokens(examples, 64)
    wrong_at = np.zeros(truth.shape, bool)
    start = examples[0].answer_spans[2][0]  # example 0's third query's value
    wrong_at[0, start - 1] = True
    scores = score_task_examples(
        greedy_predictions_fn(next_token_oracle(jnp.asarray(wrong_at))),
        truth,
        examples,
        pad_len=64,
        batch_size=2,
    )
    assert scores[0].spans == (True, True, False, True, True, True) and not scores[0].exact
    assert scores[0].token_hits == 5 and scores[0].num_tokens == 6
    assert scores[1].exact and all(scores[1].spans)


# ------------------------------------------------------------------ evaluators through the registry


def recall_logits_fn(params, tokens_BT, positions_BT):
    """A perfect MQAR solver: predict the token that followed the current token's first
    occurrence (keys are distinct and the pairs come first)."""
    del params, positions_BT
    t = tokens_BT.shape[1]
    index = jnp.arange(t)
    same = tokens_BT[:, :, None] == tokens_BT[:, None, :]  # [B, T, S]
    first = jnp.argmax(same & (index[None, None, :] < index[None, :, None]), axis=-1)
    seen = jnp.any(same & (index[None, None, :] < index[None, :, None]), axis=-1)
    following = jnp.take_along_axis(tokens_BT, jnp.clip(first + 1, 0, t - 1), axis=1)
    return 5.0 * jax.nn.one_hot(jnp.where(seen, following, 0), 256)


def induction_logits_fn(k):
    """After the k-gram ending at t, predict what followed its latest earlier occurrence."""

    def logits_fn(params, tokens_BT, positions_BT):
        del params, positions_BT
        t = tokens_BT.shape[1]
        shifted = jnp.stack(
            [jnp.pad(tokens_BT, ((0, 0), (i, 0)), constant_values=-1)[:, :t] for i in range(k)]
        )
        match = jnp.all(shifted[:, :, :, None] == shifted[:, :, None, :], axis=0)
        index = jnp.arange(t)
        match &= (index[None, :] < index[:, None]) & (index[None, :] >= k - 1)
        latest = jnp.max(jnp.where(match, index[None, None, :], -1), axis=-1)
        following = jnp.take_along_axis(tokens_BT, jnp.clip(latest + 1, 0, t - 1), axis=1)
        return 5.0 * jax.nn.one_hot(jnp.where(latest >= 0, following, 0), 256)

    return logits_fn


def run(name_cfg, model_cfg, params, data):
    validate_evals(ml_collections.ConfigDict({"x": name_cfg}), data)
    return registry.get(name_cfg.kind).run(name_cfg, model_cfg, params, data, progress=False)


def test_mqar_evaluator(tiny_model, monkeypatch):
    _, cfg, _, params = tiny_model
    evaluator = eval_config("mqar", num_pairs=(2, 5), num_examples=3, batch_size=2)
    scalars, details = run(evaluator, cfg, params, data_config(48))
    assert list(scalars) == ["accuracy", "accuracy@2", "exact@2", "accuracy@5", "exact@5"]
    assert all(0.0 <= v <= 1.0 for v in scalars.values())
    assert details["length"] == 48
    assert details["by_num_pairs"]["5"]["queries"] == 15

    monkeypatch.setattr(mqar_module, "model_logits_fn", lambda _: recall_logits_fn)
    scalars, _ = run(evaluator, cfg, params, data_config(48))
    assert scalars == dict.fromkeys(scalars, 1.0)

    with pytest.raises(ValueError, match="vocab_size"):
        run(eval_config("mqar", vocab_size=512, num_pairs=(2,)), cfg, params, data_config(48))


def test_niah_evaluator(tiny_model, monkeypatch):
    _, cfg, _, params = tiny_model
    evaluator = eval_config(
        "niah", lengths=(400, 440), depths=(0.0, 1.0), num_examples=2, batch_size=4
    )
    scalars, details = run(evaluator, cfg, params, data_config())
    assert list(scalars) == [
        "accuracy",
        "accuracy@400",
        "accuracy@440",
        "token_accuracy",
        "effective_length",
    ]
    assert all(0.0 <= scalars[k] <= 1.0 for k in scalars if k != "effective_length")
    assert scalars["effective_length"] in (0.0, 400.0, 440.0)
    assert np.shape(details["accuracy"]) == (2, 2)

    # " is: " precedes the value in the needle and ends the question: a 5-gram copier solves it.
    monkeypatch.setattr(niah_module, "model_logits_fn", lambda _: induction_logits_fn(5))
    scalars, details = run(evaluator, cfg, params, data_config())
    assert scalars["accuracy"] == scalars["token_accuracy"] == 1.0
    assert scalars["effective_length"] == 440.0
    # With eval-time YaRN the (fake) model is the same: the rope_kind path runs.
    yarn = eval_config("niah", lengths=(440,), depths=(0.5,), num_examples=1, rope_kind="yarn")
    assert run(yarn, cfg, params, data_config())[0]["accuracy"] == 1.0


def test_effective_length():
    assert effective_length([1024, 256, 512, 2048], [0.9, 1.0, 0.4, 0.8], 0.5) == 256
    assert effective_length([256, 512, 1024], [0.5, 0.6, 0.9], 0.5) == 1024  # >= counts
    assert effective_length([256, 512], [0.49, 1.0], 0.5) == 0
    assert effective_length([256, 512], [float("nan"), 1.0], 0.5) == 0
    with pytest.raises(ValueError, match="accuracy_by_length"):
        effective_length([256, 512], [1.0], 0.5)


# ------------------------------------------------------------------ bad fields


@pytest.mark.parametrize(
    "kind, fields, match",
    [
        ("niah", dict(depths=(1.5,)), r"evals\.x\.depths=\(1\.5,\)"),
        ("niah", dict(lengths=(100,)), r"evals\.x\.lengths: length=100: expected an integer >="),
        ("niah", dict(lengths=(0,)), r"evals\.x\.lengths"),
        ("niah", dict(variant="nope"), r"evals\.x\.variant='nope'"),
        ("niah", dict(haystack="web"), r"evals\.x\.haystack='web'"),
        ("niah", dict(num_queries=5), r"evals\.x\.num_queries=5: expected an integer in \[1, 1\]"),
        ("niah", dict(value_digits=0), r"evals\.x\.value_digits=0"),
        ("niah", dict(threshold=1.5), r"evals\.x\.threshold=1\.5"),
        ("niah", dict(rope_kind="longrope"), r"evals\.x\.rope_kind='longrope'"),
        ("niah", dict(num_examples=0), r"evals\.x\.num_examples=0"),
        ("mqar", dict(num_pairs=()), r"evals\.x\.num_pairs=\(\)"),
        ("mqar", dict(num_pairs=(4, 4)), r"evals\.x\.num_pairs=\(4, 4\): expected distinct"),
        ("mqar", dict(length=8, num_pairs=(4,)), r"evals\.x\.length=8: expected an integer >= 16"),
        ("mqar", dict(num_pairs=(300,)), r"evals\.x\.length \(0: data\.seq_len=400\): length="),
        ("mqar", dict(num_pairs=(4,), key_range=(1, 3)), r"evals\.x\.key_range=\(1, 3\)"),
        ("mqar", dict(key_range=(1,)), r"evals\.x\.key_range=\(1,\)"),
        ("mqar", dict(num_pairs=(4, 8), num_queries=5), r"evals\.x\.num_queries=5"),
        ("mqar", dict(noise="white"), r"evals\.x\.noise='white'"),
        ("mqar", dict(power_a=0.0), r"evals\.x\.power_a=0\.0"),
        ("mqar", dict(seed=2**62), r"evals\.x\.seed=4611686018427387904: expected .* 2\*\*62"),
        ("niah", dict(seed=-1), r"evals\.x\.seed=-1"),
        ("needle_attention", dict(lengths=(4096,)), r"evals\.x\.lengths=\(4096,\): expected"),
        ("needle_attention", dict(max_length=256), r"evals\.x\.lengths=\(\) \(data\.seq_len="),
        ("needle_attention", dict(head_threshold=-0.1), r"evals\.x\.head_threshold=-0\.1"),
        ("needle_attention", dict(lengths=(300,)), r"evals\.x\.lengths: length=300"),
    ],
)
def test_bad_fields_raise_naming_the_field(kind, fields, match):
    with pytest.raises(ValueError, match=match):
        validate_evals(ml_collections.ConfigDict({"x": eval_config(kind, **fields)}), data_config())


def test_evaluation_seeds_are_not_training_seeds():
    assert all(train_task_seed(s) >= EVAL_SEED_LIMIT for s in (0, 1, 2**31, EVAL_SEED_LIMIT - 1))


def test_registry_lists_the_task_evaluators():
    assert {"mqar", "niah", "needle_attention", "passkey"} <= set(registry.kinds())
