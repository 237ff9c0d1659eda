"""Span recall: the example's layout, a distance-d copier solves it exactly at d (and no other
distance), the control cannot be recalled, and the evaluator through the registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from eval_testlib import module_seed, tiny_model_config

from longctx_jax.data import default_data_config
from longctx_jax.data.tasks.span_recall import make_span_recall_example
from longctx_jax.eval import registry
from longctx_jax.eval.evaluators import span_recall as span_recall_module
from longctx_jax.eval.registry import eval_config, validate_evals
from longctx_jax.eval.task_eval import greedy_predictions_fn, score_task_examples
from longctx_jax.model import DecoderLM


def copier_logits_fn(distance):
    """Predicts at position t the token at t + 1 - distance: recall from exactly `distance` back."""

    def logits_fn(params, tokens_BT, positions_BT):
        del params, positions_BT
        back = jnp.pad(tokens_BT, ((0, 0), (distance - 1, 0)))[:, : tokens_BT.shape[1]]
        return 5.0 * jax.nn.one_hot(back, 256)

    return logits_fn


@pytest.mark.parametrize("length, distance, span_len", [(128, 64, 12), (200, 188, 12), (64, 8, 8)])
def test_example_layout(length, distance, span_len):
    seed = module_seed(f"layout{length}")
    example = make_span_recall_example(seed, length, distance, index=3, span_len=span_len)
    tokens = example.tokens
    meta = example.metadata
    assert len(tokens) == length and tokens.dtype == np.int32
    assert meta["second"] - meta["first"] == distance and meta["second"] == length - span_len
    first = tokens[meta["first"] : meta["first"] + span_len]
    second = tokens[meta["second"] :]
    np.testing.assert_array_equal(first, second)
    assert bytes(second.astype(np.uint8)).decode() == meta["span"]
    assert set(meta["span"]) <= set("abcdefghijklmnopqrstuvwxyz")
    assert example.answer_spans == ((length - span_len + 1, length),)  # all but the cue
    control = make_span_recall_example(
        seed, length, distance, index=3, span_len=span_len, control=True
    )
    differs = np.flatnonzero(control.tokens != tokens)
    assert (
        differs.size and differs.min() >= meta["first"] and differs.max() < meta["first"] + span_len
    )
    again = make_span_recall_example(seed, length, distance, index=3, span_len=span_len)
    np.testing.assert_array_equal(again.tokens, tokens)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(length=64, distance=60), "distance=60"),
        (dict(length=64, distance=4), "distance=4"),
        (dict(length=20, distance=12), "length=20"),
        (dict(length=64, distance=20, span_len=1), "span_len=1"),
        (dict(length=64, distance=20, haystack="web"), "haystack='web'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_span_recall_example(0, **kwargs)


def test_a_copier_recalls_at_its_distance_only():
    predict_64 = greedy_predictions_fn(copier_logits_fn(64))
    for distance, expected in ((64, 1.0), (48, 0.0)):
        examples = [make_span_recall_example(1, 128, distance, index=i) for i in range(6)]
        scores = score_task_examples(predict_64, None, examples, pad_len=128, batch_size=4)
        assert np.mean([s.exact for s in scores]) == expected
    control = [make_span_recall_example(1, 128, 64, index=i, control=True) for i in range(6)]
    scores = score_task_examples(predict_64, None, control, pad_len=128, batch_size=4)
    assert not any(s.exact for s in scores)


def data_config(seq_len=128):
    config = default_data_config()
    config.seq_len = seq_len
    return config


def run(cfg, model_cfg, params, data):
    validate_evals(ml_collections.ConfigDict({"x": cfg}), data)
    return registry.get(cfg.kind).run(cfg, model_cfg, params, data, progress=False)


def test_evaluator(monkeypatch):
    model_cfg = tiny_model_config(num_layers=1)
    params = DecoderLM(model_cfg).init(
        jax.random.key(module_seed("span_recall")), jnp.zeros((1, 8), jnp.int32)
    )["params"]
    # default distances: 2 x span_len, doubling, then length - span_len
    assert span_recall_module.distances_for(eval_config("span_recall"), 128) == [24, 48, 96, 116]
    assert span_recall_module.distances_for(eval_config("span_recall"), 160) == [24, 48, 96, 148]
    cfg = eval_config("span_recall", lengths=(64,), num_examples=3, batch_size=4)
    scalars, details = run(cfg, model_cfg, params, data_config())
    assert [(c["length"], c["distance"]) for c in details["cells"]] == [
        (64, 24),
        (64, 48),
        (64, 52),
    ]
    assert all(0.0 <= v <= 1.0 for v in scalars.values())
    assert {"accuracy", "accuracy@64/24", "token_accuracy@64/52", "control_token_accuracy"} <= set(
        scalars
    )

    monkeypatch.setattr(span_recall_module, "model_logits_fn", lambda _: copier_logits_fn(48))
    fixed = eval_config("span_recall", lengths=(128,), distances=(48, 96), num_examples=3)
    scalars, _ = run(fixed, model_cfg, params, data_config())
    assert scalars["accuracy@128/48"] == scalars["token_accuracy@128/48"] == 1.0
    assert scalars["accuracy@128/96"] == 0.0
    assert scalars["control_token_accuracy"] < 0.5


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(distances=(4,)), r"evals\.x\.distances=\(4,\)"),
        (dict(lengths=(128,), distances=(200,)), r"evals\.x\.lengths: length 128 fits no distance"),
        (dict(span_len=1), r"evals\.x\.span_len=1"),
        (dict(haystack="web"), r"evals\.x\.haystack='web'"),
        (dict(rope_kind="nope"), r"evals\.x\.rope_kind='nope'"),
    ],
)
def test_bad_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        validate_evals(
            ml_collections.ConfigDict({"x": eval_config("span_recall", **fields)}), data_config()
        )
