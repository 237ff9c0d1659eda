"""Scoring retrieval-task examples (`TaskExample`) in one teacher-forced pass per batch.

    predict = greedy_predictions_fn(model_logits_fn(config.model))
    scores = score_task_examples(predict, params, examples, pad_len=length, batch_size=8)
    scores[0].exact, scores[0].spans, scores[0].token_hits

A `TaskExample` marks its answer tokens; the model predicts target[t] at position t - 1
(`target_tokens()`: tokens[t] itself, or MQAR's value label where the input holds noise). One
forward pass over tokens[:-1] (right-padded with zeros to `pad_len`) gives g[t - 1] = argmax of the
logits at t - 1 for every answer token t at once. Per example:

  * `exact`: every answer token right (g[t - 1] == target[t] for all masked t). For prompt +
    answer tasks (NIAH, passkey, variable tracking) this *is* exact match of greedy decoding of
    len(answer) tokens after the prompt: greedy reproduces the answer iff each teacher-forced
    argmax is right (the induction is in `longctx_jax.eval.passkey_eval`'s docstring; causality
    means right-padding after the last scored position changes nothing).
  * `spans`: per answer span, all its tokens right. For MQAR each span is one query's value,
    scored given the tokens before it (the pairs, earlier queries and the noise after them; no
    value is ever shown after a query): that is MQAR's per-query accuracy (Zoology scores every
    query position in one forward pass).
  * `token_hits` / `num_tokens`: teacher-forced answer tokens right (partial credit).

Batches have a fixed shape [batch_size, pad_len] (a short last batch is filled with copies of
its first row, whose results are dropped), so a caller that fixes pad_len per length compiles
once per length. Caveat, as for passkey: RoPE kinds whose frequencies depend on the pass length
(`dynamic`, `longrope`) see T = pad_len.

Evaluation examples never coincide with training examples: generators are deterministic in
(seed, index) and their random streams are keyed by the seed; the evaluators draw examples
0 .. num_examples - 1 of their `seed` field, which must be below `EVAL_SEED_LIMIT` = 2**62, while
training task rows (`longctx_jax.data.task_source.train_task_seed`) use seeds hashed into
[2**62, 2**63).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.data.tasks import TaskExample
from longctx_jax.eval.perplexity import LogitsFn

EVAL_SEED_LIMIT = 1 << 62  # training task seeds are >= this (data/task_source.py)


def greedy_predictions_fn(logits_fn: LogitsFn):
    """jit((params, tokens [B, T], positions [B, T]) -> argmax tokens int32 [B, T])."""

    def predict(params, tokens_BT, positions_BT):
        return jnp.argmax(logits_fn(params, tokens_BT, positions_BT), axis=-1).astype(jnp.int32)

    return jax.jit(predict)


def padded_batch(rows: Sequence[np.ndarray], pad_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, positions) int32 [len(rows), pad_len]: rows right-padded with zeros, positions
    0..pad_len - 1. ValueError if a row is longer than pad_len."""
    longest = max(len(r) for r in rows)
    if pad_len < longest:
        raise ValueError(f"pad_len={pad_len}: expected >= the longest row ({longest} tokens)")
    tokens = np.zeros((len(rows), pad_len), np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    positions = np.broadcast_to(np.arange(pad_len, dtype=np.int32), tokens.shape)
    return tokens, positions


def forced_argmax(predict, params, rows: Sequence[np.ndarray], pad_len: int) -> np.ndarray:
    """int32 [len(rows), pad_len]: `predict` (a `greedy_predictions_fn`) of the padded rows."""
    tokens, positions = padded_batch(rows, pad_len)
    return np.asarray(predict(params, tokens, positions), np.int32)


@dataclasses.dataclass(frozen=True)
class TaskScore:
    """One example's teacher-forced score (see the module docstring)."""

    exact: bool  # every answer token right: greedy exact match for prompt + answer tasks
    spans: tuple[bool, ...]  # per answer span, all its tokens right
    token_hits: int  # answer tokens whose teacher-forced argmax is right
    num_tokens: int  # answer tokens
    predicted: np.ndarray  # int32 [num_tokens]: the argmax at each answer token's position


def score_row(example: TaskExample, argmax_T: np.ndarray) -> TaskScore:
    """The TaskScore of `example` from the argmax tokens of its teacher-forced pass."""
    targets = np.flatnonzero(example.answer_mask)
    predicted = np.asarray(argmax_T[targets - 1], np.int32)
    hits = predicted == example.target_tokens()[targets]
    right = np.zeros(len(example.tokens), bool)
    right[targets] = hits
    return TaskScore(
        exact=bool(hits.all()),
        spans=tuple(bool(right[s:e].all()) for s, e in example.answer_spans),
        token_hits=int(hits.sum()),
        num_tokens=len(targets),
        predicted=predicted,
    )


def score_task_examples(
    predict,
    params,
    examples: Sequence[TaskExample],
    *,
    pad_len: int,
    batch_size: int,
    on_batch: Callable[[], None] | None = None,
) -> list[TaskScore]:
    """Scores of `examples`, from passes of shape [batch_size, pad_len] (see the module docstring).

    `predict`: a `greedy_predictions_fn`. Each example feeds tokens[:-1] (the last token is only a
    target), so pad_len must be >= len(tokens) - 1 for every example. `on_batch` is called after
    each pass (a progress bar's update).
    """
    if not examples:
        raise ValueError("examples: none given; expected at least one TaskExample")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    for i, example in enumerate(examples):
        if not example.answer_spans:
            raise ValueError(f"examples[{i}]: no answer tokens to score")
    scores = []
    for first in range(0, len(examples), batch_size):
        chunk = list(examples[first : first + batch_size])
        padded = chunk + [chunk[0]] * (batch_size - len(chunk))  # fixed batch shape
        argmax_BT = forced_argmax(predict, params, [e.tokens[:-1] for e in padded], pad_len)
        scores.extend(score_row(e, argmax_BT[row]) for row, e in enumerate(chunk))
        if on_batch is not None:
            on_batch()
    return scores


# ------------------------------------------------------------------ evaluator field helpers


def check_int_field(prefix, cfg, name, minimum) -> None:
    value = cfg[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{prefix}.{name}={value!r}: expected an integer >= {minimum}")


def check_fraction_field(prefix, cfg, name) -> None:
    value = cfg[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{prefix}.{name}={value!r}: expected a number in [0, 1]")


def check_seed_field(prefix, cfg, name="seed") -> None:
    value = cfg[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < EVAL_SEED_LIMIT:
        raise ValueError(
            f"{prefix}.{name}={value!r}: expected an integer in [0, 2**62) (training task "
            "examples use seeds in [2**62, 2**63))"
        )


def check_depths_field(prefix, cfg, name="depths") -> None:
    depths = cfg[name]
    if (
        not isinstance(depths, tuple | list)
        or not depths
        or any(
            isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x <= 1 for x in depths
        )
    ):
        raise ValueError(f"{prefix}.{name}={depths!r}: expected a tuple of numbers in [0, 1]")


def generator_error(prefix, error: ValueError, fields, renamed=None) -> ValueError:
    """A task generator's "name=value: expected ..." error as "prefix.field..." (the evaluator's
    field that set the generator's parameter `name`; `renamed` maps parameter -> field where
    they differ, e.g. length -> lengths)."""
    message = str(error)
    match = re.match(r"(\w+)=", message)
    name = match.group(1) if match else None
    renamed = renamed or {}
    if name in renamed:
        return ValueError(f"{prefix}.{renamed[name]}: {message}")
    if name in fields:
        return ValueError(f"{prefix}.{message}")
    return ValueError(f"{prefix}: {message}")
