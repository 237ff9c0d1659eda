"""`kind="span_recall"`: accuracy of copying a random span seen `distance` bytes back, in real
text (`longctx_jax.data.tasks.span_recall`): retrieval accuracy by needle distance for a model
trained on text alone.

Each (length, distance) cell is the exact-match accuracy of greedily copying the span's
span_len - 1 bytes after its cue, over `num_examples` examples, decided in one teacher-forced
pass (`longctx_jax.eval.task_eval`). With `control`, the same examples with the first copy
replaced by other letters are scored too: their token accuracy is the guessing baseline that
recall must beat.

Fields: lengths (() = data.seq_len), distances (() = 2 * span_len, doubling, up to and including
length - span_len; a distance that does not fit a length is skipped there), span_len,
num_examples, seed, batch_size, haystack ("stdlib" | "noise"), control, rope_kind (as the
perplexity evaluator's: "default", an eval-time RoPE scaling, or "string").

Scalars: accuracy (mean over cells), accuracy@L/d and token_accuracy@L/d per cell,
control_token_accuracy (all cells).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from tqdm import tqdm

from longctx_jax.data.tasks import HAYSTACKS
from longctx_jax.data.tasks.span_recall import make_span_recall_example
from longctx_jax.eval.evaluators.niah import check_model, eval_lengths, model_for_length
from longctx_jax.eval.evaluators.perplexity import _check_lengths
from longctx_jax.eval.perplexity import EVAL_ROPE_KINDS, model_logits_fn
from longctx_jax.eval.registry import register
from longctx_jax.eval.task_eval import (
    check_int_field,
    check_seed_field,
    greedy_predictions_fn,
    score_task_examples,
)


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            lengths=(),
            distances=(),
            span_len=12,
            num_examples=16,
            seed=0,
            batch_size=8,
            haystack="stdlib",
            control=True,
            rope_kind="default",
        )
    )


def validate(prefix, cfg, data_config) -> None:
    _check_lengths(prefix, cfg.lengths)
    check_int_field(prefix, cfg, "span_len", 2)
    for name in ("num_examples", "batch_size"):
        check_int_field(prefix, cfg, name, 1)
    check_seed_field(prefix, cfg)
    if not isinstance(cfg.distances, tuple | list) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < cfg.span_len for d in cfg.distances
    ):
        raise ValueError(
            f"{prefix}.distances={cfg.distances!r}: expected a tuple of integers >= span_len="
            f"{cfg.span_len} (() = doubling from 2 * span_len)"
        )
    if cfg.haystack not in HAYSTACKS:
        raise ValueError(f"{prefix}.haystack={cfg.haystack!r}: expected one of {HAYSTACKS}")
    if cfg.rope_kind not in EVAL_ROPE_KINDS:
        raise ValueError(f"{prefix}.rope_kind={cfg.rope_kind!r}: expected one of {EVAL_ROPE_KINDS}")
    lengths = cfg.lengths or ((data_config.seq_len,) if data_config is not None else ())
    for length in lengths:
        if not distances_for(cfg, length):
            raise ValueError(
                f"{prefix}.lengths: length {length} fits no distance of {cfg.distances!r} "
                f"(a distance must be <= length - span_len = {length - cfg.span_len})"
            )


def distances_for(cfg, length) -> list[int]:
    """The distances evaluated at `length` (module docstring)."""
    longest = length - cfg.span_len
    if cfg.distances:
        return sorted(d for d in set(cfg.distances) if d <= longest)
    doubling = [2**k * 2 * cfg.span_len for k in range(64) if 2**k * 2 * cfg.span_len < longest]
    return doubling + [longest] if longest >= cfg.span_len else []


def _examples(cfg, length, distance, control):
    return [
        make_span_recall_example(
            cfg.seed,
            length,
            distance,
            index=i,
            span_len=cfg.span_len,
            haystack=cfg.haystack,
            control=control,
        )
        for i in range(cfg.num_examples)
    ]


@register("span_recall", defaults=defaults, validate=validate)
def span_recall(cfg, model_config, params, data_config, *, progress=True):
    check_model("span_recall", cfg, model_config)
    lengths = eval_lengths(cfg, data_config)
    cells = [(n, d) for n in lengths for d in distances_for(cfg, n)]
    controls = (False, True) if cfg.control else (False,)
    total = len(cells) * len(controls) * math.ceil(cfg.num_examples / cfg.batch_size)
    bar = tqdm(total=total, desc="span_recall", unit="batch", disable=not progress)
    exact, token_accuracy, control_hits = {}, {}, [0, 0]
    try:
        for length in lengths:
            model = model_for_length("span_recall", cfg, model_config, data_config, length)
            predict = greedy_predictions_fn(model_logits_fn(model))
            for distance in distances_for(cfg, length):
                for control in controls:
                    scores = score_task_examples(
                        predict,
                        params,
                        _examples(cfg, length, distance, control),
                        pad_len=length,
                        batch_size=cfg.batch_size,
                        on_batch=lambda: bar.update(1),
                    )
                    hits = sum(s.token_hits for s in scores)
                    tokens = sum(s.num_tokens for s in scores)
                    if control:
                        control_hits[0] += hits
                        control_hits[1] += tokens
                    else:
                        exact[length, distance] = float(np.mean([s.exact for s in scores]))
                        token_accuracy[length, distance] = hits / tokens
    finally:
        bar.close()
    scalars = {"accuracy": float(np.mean(list(exact.values())))}
    for (length, distance), value in exact.items():
        scalars[f"accuracy@{length}/{distance}"] = value
        scalars[f"token_accuracy@{length}/{distance}"] = token_accuracy[length, distance]
    if cfg.control:
        scalars["control_token_accuracy"] = control_hits[0] / control_hits[1]
    details = {
        "cells": [
            dict(
                length=n,
                distance=d,
                accuracy=exact[n, d],
                token_accuracy=token_accuracy[n, d],
            )
            for n, d in cells
        ],
        "span_len": cfg.span_len,
        "num_examples": cfg.num_examples,
        "seed": cfg.seed,
        "rope_kind": cfg.rope_kind,
        "control_token_accuracy": scalars.get("control_token_accuracy"),
    }
    return scalars, details
