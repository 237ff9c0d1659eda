"""`kind="mqar"`: multi-query associative recall accuracy (Zoology's per-query accuracy) for each
number of key-value pairs.

Examples are `make_mqar_example(seed, length, P, index=i, ...)`, i < num_examples
(`longctx_jax.data.tasks.mqar`), scored in one teacher-forced pass per batch
(`longctx_jax.eval.task_eval`): each query's value is right iff the argmax at the query's position
is that value, given the true tokens before it (earlier queries and their true values), which is
MQAR's standard per-query accuracy, not free-running generation. Passes are [batch_size, length]
tokens: one compile for all of `num_pairs`.

Fields: length (tokens per example; 0 = data.seq_len), num_pairs (a tuple of P), num_queries
(0 = P: every key asked once, as Zoology), num_examples (per P), seed, batch_size, vocab_size
(tokens in [0, vocab_size); 256 = bytes, the generator's default; at most model.vocab_size),
key_range / value_range (() = the generator's defaults [1, V/2) and [V/2, V)), power_a, noise.

Scalars: accuracy (mean of accuracy@P), accuracy@P (fraction of queries answered right), exact@P
(fraction of examples with every query right).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from tqdm import tqdm

from longctx_jax.data.tasks import make_mqar_example
from longctx_jax.data.tasks.mqar import NOISE_KINDS
from longctx_jax.eval.perplexity import model_logits_fn
from longctx_jax.eval.registry import register
from longctx_jax.eval.task_eval import (
    check_int_field,
    check_seed_field,
    generator_error,
    greedy_predictions_fn,
    score_task_examples,
)


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            length=0,
            num_pairs=(4, 8, 16),
            num_queries=0,
            num_examples=64,
            seed=0,
            batch_size=16,
            vocab_size=256,
            key_range=(),
            value_range=(),
            power_a=0.01,
            noise="random",
        )
    )


def mqar_kwargs(cfg) -> dict:
    """make_mqar_example's keyword arguments from the evaluator's fields."""
    return dict(
        num_queries=cfg.num_queries or None,
        vocab_size=cfg.vocab_size,
        key_range=tuple(cfg.key_range) or None,
        value_range=tuple(cfg.value_range) or None,
        power_a=cfg.power_a,
        noise=cfg.noise,
    )


def mqar_examples(cfg, length, num_pairs):
    return [
        make_mqar_example(
            cfg.seed,
            length,
            num_pairs,
            index=i,
            **mqar_kwargs(cfg),
        )
        for i in range(cfg.num_examples)
    ]


def validate(prefix, cfg, data_config) -> None:
    check_int_field(prefix, cfg, "length", 0)
    pairs = cfg.num_pairs
    if (
        not isinstance(pairs, tuple | list)
        or not pairs
        or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in pairs)
    ):
        raise ValueError(f"{prefix}.num_pairs={pairs!r}: expected a tuple of positive integers")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{prefix}.num_pairs={pairs!r}: expected distinct values")
    for name, minimum in (
        ("num_queries", 0),
        ("num_examples", 1),
        ("batch_size", 1),
        ("vocab_size", 2),
    ):
        check_int_field(prefix, cfg, name, minimum)
    check_seed_field(prefix, cfg)
    if cfg.num_queries > min(pairs):
        raise ValueError(
            f"{prefix}.num_queries={cfg.num_queries}: expected 0 (all keys) or at most the "
            f"smallest num_pairs={min(pairs)}"
        )
    for name in ("key_range", "value_range"):
        if not isinstance(cfg[name], tuple | list) or len(cfg[name]) not in (0, 2):
            raise ValueError(
                f"{prefix}.{name}={cfg[name]!r}: expected () (the default) or (lo, hi)"
            )
    power_a = cfg.power_a
    if isinstance(power_a, bool) or not isinstance(power_a, int | float) or not power_a > 0:
        raise ValueError(f"{prefix}.power_a={power_a!r}: expected a number > 0")
    if cfg.noise not in NOISE_KINDS:
        raise ValueError(f"{prefix}.noise={cfg.noise!r}: expected one of {NOISE_KINDS}")
    length = cfg.length or (data_config.seq_len if data_config is not None else 0)
    for num_pairs in pairs if length else ():
        try:
            make_mqar_example(cfg.seed, length, num_pairs, index=0, **mqar_kwargs(cfg))
        except ValueError as error:
            renamed = {} if cfg.length else {"length": f"length (0: data.seq_len={length})"}
            raise generator_error(prefix, error, cfg, renamed) from None


@register("mqar", defaults=defaults, validate=validate)
def mqar(cfg, model_config, params, data_config, *, progress=True):
    if cfg.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"mqar evaluator vocab_size={cfg.vocab_size}: expected at most the model's "
            f"vocab_size={model_config.vocab_size}"
        )
    length = cfg.length or data_config.seq_len
    predict = greedy_predictions_fn(model_logits_fn(model_config))
    total = len(cfg.num_pairs) * math.ceil(cfg.num_examples / cfg.batch_size)
    bar = tqdm(total=total, desc="mqar", unit="batch", disable=not progress)
    scalars, per_pairs = {}, {}
    try:
        for num_pairs in cfg.num_pairs:
            scores = score_task_examples(
                predict,
                params,
                mqar_examples(cfg, length, num_pairs),
                pad_len=length,
                batch_size=cfg.batch_size,
                on_batch=lambda: bar.update(1),
            )
            correct = sum(sum(s.spans) for s in scores)
            queries = sum(len(s.spans) for s in scores)
            exact = sum(s.exact for s in scores)
            per_pairs[str(num_pairs)] = dict(
                queries=queries,
                correct=correct,
                accuracy=correct / queries,
                exact=exact / len(scores),
            )
            scalars[f"accuracy@{num_pairs}"] = correct / queries
            scalars[f"exact@{num_pairs}"] = exact / len(scores)
    finally:
        bar.close()
    accuracy = float(np.mean([scalars[f"accuracy@{p}"] for p in cfg.num_pairs]))
    scalars = {"accuracy": accuracy} | {k: float(v) for k, v in scalars.items()}
    details = {
        "length": length,
        "num_pairs": list(cfg.num_pairs),
        "num_examples": cfg.num_examples,
        "seed": cfg.seed,
        "by_num_pairs": per_pairs,
    }
    return scalars, details
