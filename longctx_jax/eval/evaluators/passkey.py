"""`kind="passkey"`: exact-match passkey retrieval over a (length x needle depth) grid
(`longctx_jax.eval.passkey_eval`, greedy exact match decided in one teacher-forced pass).

Fields: lengths (prompt lengths; () = data.seq_len), depths, num_examples (prompts per cell),
digits, seed, batch_size. Scalars: accuracy (mean over the grid), accuracy@L (mean over depths),
digit_accuracy (teacher-forced, partial credit).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from longctx_jax.data.tasks.passkey import make_passkey_example
from longctx_jax.eval.evaluators.perplexity import _check_lengths
from longctx_jax.eval.passkey_eval import passkey_accuracy
from longctx_jax.eval.registry import register
from longctx_jax.eval.task_eval import check_depths_field, check_int_field


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(lengths=(), depths=(0.0, 0.5, 1.0), num_examples=10, digits=5, seed=0, batch_size=8)
    )


def validate(prefix, cfg, data_config) -> None:
    _check_lengths(prefix, cfg.lengths)
    check_depths_field(prefix, cfg)
    for name, minimum in (("num_examples", 1), ("digits", 1), ("seed", 0), ("batch_size", 1)):
        check_int_field(prefix, cfg, name, minimum)
    lengths = cfg.lengths or ((data_config.seq_len,) if data_config is not None else ())
    for length in lengths:  # a prompt must fit the intro, the needle and the question
        try:
            make_passkey_example(cfg.seed, length, 0.0, index=0, digits=cfg.digits)
        except ValueError as error:
            raise ValueError(f"{prefix}.lengths: {error}") from None


@register("passkey", defaults=defaults, validate=validate)
def passkey(cfg, model_config, params, data_config, *, progress=True):
    lengths = list(cfg.lengths or (data_config.seq_len,))
    result = passkey_accuracy(
        model_config,
        params,
        lengths=lengths,
        depths=list(cfg.depths),
        num_examples=cfg.num_examples,
        seed=cfg.seed,
        digits=cfg.digits,
        batch_size=cfg.batch_size,
        progress=progress,
    )
    accuracy = np.asarray(result["accuracy"])
    scalars = {"accuracy": float(accuracy.mean())}
    scalars |= {
        f"accuracy@{n}": float(row.mean()) for n, row in zip(lengths, accuracy, strict=True)
    }
    scalars["digit_accuracy"] = float(np.mean(result["teacher_forced_digit_accuracy"]))
    return scalars, result
