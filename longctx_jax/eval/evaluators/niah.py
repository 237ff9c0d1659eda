"""`kind="niah"`: needle-in-a-haystack accuracy over a (length x needle depth) grid, and the
effective length, optionally with eval-time RoPE scaling.

Each cell is the exact-match accuracy of greedy decoding over `num_examples` examples of
`make_niah_example(seed, length, depth, index=i, ...)`, i < num_examples (RULER's tasks,
`longctx_jax.data.tasks.niah`), decided in one teacher-forced pass (`longctx_jax.eval.task_eval`;
passes of [batch_size, length] tokens, one compile per length).

Fields: lengths (bytes of prompt + answer; () = data.seq_len), depths (in [0, 1]), num_examples
(per cell), variant / haystack / num_keys / num_values / num_queries (0 = the variant's) /
distractor_similarity / key_length / value_digits (`make_niah_example`'s knobs), seed, batch_size,
threshold (effective length), rope_kind ("default" = the model as trained; "linear", "ntk",
"dynamic", "yarn", "llama3" rescale a plain-RoPE model for each length and "string" applies
STRING, with train_len = data.seq_len, as the perplexity evaluator does: a grid "with and
without eval-time YaRN" is two entries differing only in rope_kind).

Scalars: accuracy (grid mean), accuracy@L (mean over depths), token_accuracy (teacher-forced
answer bytes right: partial credit, not a greedy metric), effective_length (`effective_length`:
the largest L such that accuracy@L' >= threshold for every evaluated L' <= L; 0 if none).
RULER calls a length effective when the score beats a fixed baseline (Llama-2-7B's 85.6% at 4K);
a small model has no such reference, so `threshold` is a field (default 0.5).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from tqdm import tqdm

from longctx_jax.data.tasks import HAYSTACKS, NIAH_VARIANTS, make_niah_example
from longctx_jax.eval.evaluators.perplexity import _check_lengths
from longctx_jax.eval.perplexity import EVAL_ROPE_KINDS, model_logits_fn, with_eval_rope
from longctx_jax.eval.registry import register
from longctx_jax.eval.task_eval import (
    check_depths_field,
    check_fraction_field,
    check_int_field,
    check_seed_field,
    generator_error,
    greedy_predictions_fn,
    score_task_examples,
)

BYTE_VOCAB = 256
# make_niah_example's knobs, as evaluator fields (0 = the variant's count).
NIAH_FIELDS = dict(
    variant="single",
    haystack="noise",
    num_keys=0,
    num_values=0,
    num_queries=0,
    distractor_similarity=0.0,
    key_length=6,
    value_digits=7,
)


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            lengths=(),
            depths=(0.0, 0.25, 0.5, 0.75, 1.0),
            num_examples=10,
            **NIAH_FIELDS,
            seed=0,
            batch_size=8,
            threshold=0.5,
            rope_kind="default",
        )
    )


def niah_kwargs(cfg) -> dict:
    """make_niah_example's keyword arguments from the evaluator's fields."""
    kwargs = {name: cfg[name] for name in NIAH_FIELDS}
    for name in ("num_keys", "num_values", "num_queries"):
        kwargs[name] = kwargs[name] or None
    return kwargs


def niah_examples(cfg, length, depth):
    """The evaluation examples of one (length, depth) cell."""
    return [
        make_niah_example(cfg.seed, length, depth, index=i, **niah_kwargs(cfg))
        for i in range(cfg.num_examples)
    ]


def eval_lengths(cfg, data_config) -> list[int]:
    return list(cfg.lengths or (data_config.seq_len,))


def validate_niah_fields(prefix, cfg, data_config) -> None:
    """The checks niah and needle_attention share; generates one example per length, so that a
    length too short for the task (or other impossible knobs) fails here, naming the field."""
    _check_lengths(prefix, cfg.lengths)
    check_depths_field(prefix, cfg)
    if cfg.variant not in NIAH_VARIANTS:
        variants = tuple(NIAH_VARIANTS)
        raise ValueError(f"{prefix}.variant={cfg.variant!r}: expected one of {variants}")
    if cfg.haystack not in HAYSTACKS:
        raise ValueError(f"{prefix}.haystack={cfg.haystack!r}: expected one of {HAYSTACKS}")
    check_seed_field(prefix, cfg)
    for name in ("num_keys", "num_values", "num_queries"):
        check_int_field(prefix, cfg, name, 0)
    for name in ("num_examples", "batch_size", "key_length", "value_digits"):
        check_int_field(prefix, cfg, name, 1)
    check_fraction_field(prefix, cfg, "distractor_similarity")
    if cfg.rope_kind not in EVAL_ROPE_KINDS:
        raise ValueError(f"{prefix}.rope_kind={cfg.rope_kind!r}: expected one of {EVAL_ROPE_KINDS}")
    lengths = cfg.lengths or ((data_config.seq_len,) if data_config is not None else ())
    for length in lengths:
        try:
            make_niah_example(cfg.seed, length, cfg.depths[0], index=0, **niah_kwargs(cfg))
        except ValueError as error:
            raise generator_error(prefix, error, cfg, {"length": "lengths"}) from None


def validate(prefix, cfg, data_config) -> None:
    validate_niah_fields(prefix, cfg, data_config)
    check_fraction_field(prefix, cfg, "threshold")


def check_model(kind, cfg, model_config) -> None:
    """ValueError unless the model reads byte tokens (NIAH examples are bytes)."""
    if model_config.vocab_size < BYTE_VOCAB:
        raise ValueError(
            f"model.vocab_size={model_config.vocab_size}: the {kind} evaluator feeds byte tokens; "
            f"expected a vocabulary of at least {BYTE_VOCAB}"
        )


def model_for_length(kind, cfg, model_config, data_config, length):
    """The model config at `length`: as trained, or with eval-time RoPE scaling (`rope_kind`)."""
    if cfg.rope_kind == "default":
        return model_config
    try:
        return with_eval_rope(model_config, cfg.rope_kind, data_config.seq_len, length)
    except ValueError as error:
        raise ValueError(f"{kind} evaluator rope_kind={cfg.rope_kind!r}: {error}") from None


def effective_length(lengths, accuracy_by_length, threshold) -> int:
    """The largest L of `lengths` such that accuracy >= threshold at L and at every shorter
    evaluated length (0 if the shortest already fails)."""
    if len(lengths) != len(accuracy_by_length):
        raise ValueError(
            f"accuracy_by_length: {len(accuracy_by_length)} values for {len(lengths)} lengths"
        )
    effective = 0
    for length, accuracy in sorted(zip(lengths, accuracy_by_length, strict=True)):
        if not accuracy >= threshold:
            break
        effective = int(length)
    return effective


@register("niah", defaults=defaults, validate=validate)
def niah(cfg, model_config, params, data_config, *, progress=True):
    check_model("niah", cfg, model_config)
    lengths, depths = eval_lengths(cfg, data_config), list(cfg.depths)
    exact = np.zeros((len(lengths), len(depths)))
    token_hits = np.zeros((len(lengths), len(depths)))
    num_tokens = np.zeros((len(lengths), len(depths)))
    per_length = len(depths) * cfg.num_examples
    total = len(lengths) * math.ceil(per_length / cfg.batch_size)
    bar = tqdm(total=total, desc="niah", unit="batch", disable=not progress)
    try:
        for li, length in enumerate(lengths):
            model = model_for_length("niah", cfg, model_config, data_config, length)
            predict = greedy_predictions_fn(model_logits_fn(model))
            examples, cells = [], []
            for di, depth in enumerate(depths):
                examples += niah_examples(cfg, length, depth)
                cells += [di] * cfg.num_examples
            scores = score_task_examples(
                predict,
                params,
                examples,
                pad_len=length,
                batch_size=cfg.batch_size,
                on_batch=lambda: bar.update(1),
            )
            for di, score in zip(cells, scores, strict=True):
                exact[li, di] += score.exact
                token_hits[li, di] += score.token_hits
                num_tokens[li, di] += score.num_tokens
    finally:
        bar.close()
    accuracy = exact / cfg.num_examples
    by_length = accuracy.mean(axis=1)
    scalars = {"accuracy": float(accuracy.mean())}
    scalars |= {f"accuracy@{n}": float(a) for n, a in zip(lengths, by_length, strict=True)}
    scalars["token_accuracy"] = float(token_hits.sum() / num_tokens.sum())
    scalars["effective_length"] = float(effective_length(lengths, by_length, cfg.threshold))
    details = {
        "lengths": lengths,
        "depths": [float(x) for x in depths],
        "num_examples": cfg.num_examples,
        "seed": cfg.seed,
        "rope_kind": cfg.rope_kind,
        "threshold": float(cfg.threshold),
        "accuracy": accuracy.tolist(),
        "token_accuracy": (token_hits / num_tokens).tolist(),
    }
    return scalars, details
