"""The one example type of every retrieval task, and the argument checks the generators share.

A `TaskExample` is the whole token sequence a model reads, with its answer tokens marked:

    tokens       int32 [n]  what the model reads (teacher forcing): for NIAH, passkey and variable
                            tracking the prompt followed by the answer; for MQAR the pairs, then
                            queries, each followed by its value.
    answer_mask  bool  [n]  True exactly at the answer tokens themselves (the *targets*), never at
                            the token before them. The model predicts tokens[t] at position t - 1,
                            so the loss weight of position t is answer_mask[t + 1] (`loss_weights`,
                            in the `targets`/`weights` convention of `longctx_jax.data.packing`).
                            answer_mask[0] is always False: nothing predicts the first token.
    answer_spans            the [start, end) ranges of the answers in `tokens`, in order; the
                            mask is their union, so `target_tokens()[answer_mask]`
                            (`answer_tokens`) is the answers concatenated.
    targets      int32 [n] | None   what the model must predict at each position (for position t,
                            from position t - 1); None: `tokens` itself (the answer is part of the
                            input, as in NIAH and passkey). MQAR sets it: there the answer is a
                            label only and the input at its position is noise (zoology's layout);
                            targets equal tokens everywhere outside the answers.

This is passkey's convention (prompt + answer, answer[i] predicted at prompt_len - 1 + i): greedy
decoding after `tokens[:prompt_len]` yields the answer iff a teacher-forced pass over `tokens`
predicts every masked token (see `longctx_jax.eval.passkey_eval`). `metadata` holds what a task
knows about its example (needle positions and depths, keys, values, the answer as text, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from longctx_jax.checks import is_int, is_real


@dataclasses.dataclass(frozen=True, eq=False)
class TaskExample:
    """One task example: tokens, the answer tokens marked, and what the task knows about it."""

    task: str  # "mqar" | "niah" | "passkey" | "variable_tracking"
    tokens: np.ndarray  # int32 [n]
    answer_mask: np.ndarray  # bool [n], True at the answer tokens (targets)
    answer_spans: tuple[tuple[int, int], ...]  # [start, end) of each answer, increasing
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    targets: np.ndarray | None = None  # int32 [n]; None: tokens (the answer is in the input)

    def __post_init__(self):
        tokens = np.asarray(self.tokens)
        mask = np.asarray(self.answer_mask)
        if tokens.ndim != 1 or tokens.dtype != np.int32:
            raise ValueError(f"tokens: {tokens.dtype} {tokens.shape}; expected int32 [n]")
        if mask.shape != tokens.shape or mask.dtype != np.bool_:
            raise ValueError(
                f"answer_mask: {mask.dtype} {mask.shape}; expected bool {tokens.shape}"
            )
        spans = tuple((int(s), int(e)) for s, e in self.answer_spans)
        expected = np.zeros(tokens.shape, bool)
        previous_end = 1  # no answer at position 0: nothing predicts it
        for start, end in spans:
            if not previous_end <= start < end <= len(tokens):
                raise ValueError(
                    f"answer_spans={spans!r}: expected increasing, disjoint, non-empty "
                    f"[start, end) ranges inside [1, {len(tokens)}]"
                )
            expected[start:end] = True
            previous_end = end
        if not np.array_equal(mask, expected):
            raise ValueError("answer_mask: expected exactly the union of answer_spans")
        if self.targets is not None:
            targets = np.asarray(self.targets)
            if targets.shape != tokens.shape or targets.dtype != np.int32:
                raise ValueError(
                    f"targets: {targets.dtype} {targets.shape}; expected None or int32 "
                    f"{tokens.shape}"
                )
            if not np.array_equal(targets[~mask], tokens[~mask]):
                raise ValueError("targets: expected to equal tokens outside the answers")
        object.__setattr__(self, "answer_spans", spans)
        object.__setattr__(self, "metadata", dict(self.metadata))  # a dict: picklable (grain)

    def target_tokens(self) -> np.ndarray:
        """int32 [n]: the token to predict at each position (`targets`, or `tokens` if None)."""
        return self.tokens if self.targets is None else self.targets

    @property
    def answer_tokens(self) -> np.ndarray:
        """int32 [answer tokens]: the answers concatenated (`target_tokens()[answer_mask]`)."""
        return self.target_tokens()[self.answer_mask]

    @property
    def prompt_len(self) -> int:
        """Start of the first answer: for prompt + answer tasks, the prompt's length."""
        return self.answer_spans[0][0] if self.answer_spans else len(self.tokens)

    def loss_weights(self) -> np.ndarray:
        """float32 [n]: 1 at the positions whose next-token prediction is an answer token."""
        weights = np.zeros(self.tokens.shape, np.float32)
        weights[:-1] = self.answer_mask[1:]
        return weights


def prompt_and_answer(task, prompt, answer, metadata) -> TaskExample:
    """The TaskExample of `prompt` + `answer` (token arrays) with the answer marked."""
    prompt = np.asarray(prompt, np.int32)
    answer = np.asarray(answer, np.int32)
    mask = np.zeros(len(prompt) + len(answer), bool)
    mask[len(prompt) :] = True
    return TaskExample(
        task=task,
        tokens=np.concatenate([prompt, answer]),
        answer_mask=mask,
        answer_spans=((len(prompt), len(prompt) + len(answer)),),
        metadata=metadata,
    )


# ------------------------------------------------------------------ argument checks (ValueError)


def check(name, value, ok, expected):
    """ValueError "name=value: expected ..." unless `ok`."""
    if not ok:
        raise ValueError(f"{name}={value!r}: expected {expected}")


def check_int(name, value, minimum, maximum=None):
    """An integer in [minimum, maximum] (maximum None: no upper bound)."""
    ok = is_int(value) and value >= minimum and (maximum is None or value <= maximum)
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, "
    if maximum is not None:
        expected += f"{maximum}]"
    check(name, value, ok, expected)


def check_fraction(name, value):
    """A finite number in [0, 1]."""
    ok = is_real(value) and math.isfinite(value) and 0.0 <= value <= 1.0
    check(name, value, ok, "a number in [0, 1]")


def check_choice(name, value, choices: Sequence):
    check(name, value, value in choices, f"one of {tuple(choices)}")


def example_rng(seed, stream, index, *, children=1):
    """`children` independent numpy Generators for example `index` of `seed` in `stream`."""
    sequence = np.random.SeedSequence([int(seed), stream, int(index)])
    generators = [np.random.default_rng(s) for s in sequence.spawn(children)]
    return generators[0] if children == 1 else generators
