"""Passkey retrieval accuracy by prompt length and needle depth, scored in one forward pass.

    result = passkey_accuracy(config.model, params, lengths=[256, 512, 1024],
                              depths=[0.0, 0.5, 1.0], num_examples=20, seed=0)
    result["accuracy"]     # [len(lengths)][len(depths)], exact-match accuracy of greedy decoding

Each cell is the exact-match accuracy over `num_examples` prompts of `make_passkey_example(seed,
length, depth, index=i, digits=digits)`: the model greedily decodes exactly len(answer) tokens
after the prompt and scores 1 iff they are the answer's digits (with exactly `digits` decoded
tokens, `longctx_jax.data.tasks.passkey.score` accepts a prediction iff it equals the answer).

One teacher-forced pass decides greedy exact match. Feed prompt + answer[:-1] once and let
g_i = argmax of the logits at the position that predicts answer[i] (prompt_len - 1 + i). Claim:
greedy decoding yields the answer iff g_i == answer[i] for every i.
  * Greedy decoding's step i input is prompt + (its own first i tokens). If those equal
    answer[:i], that input is exactly the teacher-forced prefix, and a causal model's logits at
    a position depend only on the tokens up to it, so its step-i token is g_i.
  * (=>) If greedy yields the answer, then by induction every step's prefix is answer[:i], so
    g_i = (greedy token i) = answer[i] for all i.
  * (<=) If g_i == answer[i] for all i, by induction on i greedy's prefix is answer[:i] and its
    token i is g_i = answer[i].
At the first i where g_i != answer[i], greedy has already failed; later teacher-forced positions
do not matter. So exact match costs one forward pass instead of len(answer). Caveats, both about
what "the same logits" means: the one pass is padded on the right to length + digits - 1 tokens
(padding comes after every scored position, so causality hides it), which is exact except for
RoPE kinds whose frequencies depend on the pass length (`dynamic`, `longrope`; there the one pass
uses T = length + digits - 1, a fixed context length per prompt length); and floating-point
results of different pass lengths can differ in the last bits, which only matters at exact ties.

`teacher_forced_digit_accuracy` (also returned) is the fraction of answer positions where g_i is
right: a partial-credit signal for small models (it is not a greedy-decoding metric).
Examples of one prompt length (all depths) are batched together in passes of fixed shape
[batch_size, length + digits - 1], so there is one compile per length. The scoring itself is the
generic one of every retrieval task (`longctx_jax.eval.task_eval.score_task_examples` on
`PasskeyExample.as_task_example()`); passkey prompts use indices 0..num_examples - 1 of `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from tqdm import tqdm

from longctx_jax.data.tasks.passkey import make_passkey_example
from longctx_jax.eval.perplexity import LogitsFn, model_logits_fn
from longctx_jax.eval.task_eval import (
    forced_argmax,
    greedy_predictions_fn,
    score_task_examples,
)

__all__ = ["greedy_predictions_fn", "passkey_accuracy", "teacher_forced_predictions"]


def teacher_forced_predictions(predict, params, prompts, answers, *, pad_len=None) -> np.ndarray:
    """g [n, d]: the argmax token at each answer position, from one pass per batch.

    `predict` is a `greedy_predictions_fn`; prompts: n int arrays (any lengths); answers: n int
    arrays of one length d. Row r feeds prompts[r] + answers[r][:-1], right-padded with zeros to
    `pad_len` (default: the longest), in one batch of n rows. See the module docstring: greedy
    decoding of d tokens after prompts[r] gives answers[r] iff g[r] == answers[r].
    """
    answers = [np.asarray(a, np.int32) for a in answers]
    d = len(answers[0])
    if d < 1 or any(len(a) != d for a in answers):
        raise ValueError(f"answers: lengths {[len(a) for a in answers]}; expected one length >= 1")
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts: {len(prompts)} given for {len(answers)} answers")
    rows = [
        np.concatenate([np.asarray(p, np.int32), a[:-1]])
        for p, a in zip(prompts, answers, strict=True)
    ]
    longest = max(len(r) for r in rows)
    pad_len = longest if pad_len is None else pad_len
    if pad_len < longest:
        raise ValueError(f"pad_len={pad_len}: expected >= the longest prompt + answer - 1")
    argmax_BT = forced_argmax(predict, params, rows, pad_len)
    return np.stack(
        [argmax_BT[i, len(p) - 1 : len(p) - 1 + d] for i, p in enumerate(prompts)]
    ).astype(np.int32)


def passkey_accuracy(
    model_config,
    params,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    num_examples: int,
    seed: int = 0,
    digits: int = 5,
    batch_size: int = 8,
    logits_fn: LogitsFn | None = None,
    progress: bool = True,
) -> dict:
    """Exact-match accuracy of greedy passkey decoding for each (length, depth).

    Args:
      model_config: the `model` config (e.g. from `with_eval_rope`); unused if `logits_fn` given.
      params: the model parameters.
      lengths: prompt lengths in bytes (`make_passkey_example`: each prompt is at most `length`).
      depths: needle depths in [0, 1].
      num_examples: prompts per (length, depth), indices 0..num_examples - 1.
      seed: passkey seed (the same arguments always give the same prompts).
      digits: passkey digits.
      batch_size: prompts per forward pass (the last pass of a length is padded with dummy rows).
      logits_fn: LogitsFn to evaluate instead of `DecoderLM(model_config)` (must be traceable).
      progress: show a tqdm bar.

    Returns a JSON-able dict: lengths, depths, num_examples, digits, seed, accuracy
    [len(lengths)][len(depths)] (fraction of exact matches) and teacher_forced_digit_accuracy
    (same shape; fraction of answer digits whose teacher-forced argmax is right).
    """
    lengths, depths = list(lengths), list(depths)
    if not lengths or any(
        isinstance(n, bool) or not isinstance(n, Integral) or n < 1 for n in lengths
    ):
        raise ValueError(f"lengths={lengths!r}: expected a non-empty list of positive integers")
    if not depths or any(
        isinstance(x, bool) or not isinstance(x, Real) or not 0 <= x <= 1 for x in depths
    ):
        raise ValueError(f"depths={depths!r}: expected a non-empty list of numbers in [0, 1]")
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")

    predict = greedy_predictions_fn(
        model_logits_fn(model_config) if logits_fn is None else logits_fn
    )
    exact = np.zeros((len(lengths), len(depths)), np.int64)
    digit_hits = np.zeros((len(lengths), len(depths)), np.int64)
    per_length = len(depths) * num_examples
    total = len(lengths) * math.ceil(per_length / batch_size)
    bar = tqdm(total=total, desc="passkey", unit="batch", disable=not progress)
    try:
        for li, length in enumerate(lengths):
            cells = [(di, i) for di in range(len(depths)) for i in range(num_examples)]
            examples = [
                make_passkey_example(seed, length, depths[di], index=i, digits=digits)
                for di, i in cells
            ]
            scores = score_task_examples(
                predict,
                params,
                [e.as_task_example() for e in examples],
                pad_len=length + digits - 1,
                batch_size=batch_size,
                on_batch=lambda: bar.update(1),
            )
            for (di, _), score in zip(cells, scores, strict=True):
                exact[li, di] += score.exact
                digit_hits[li, di] += score.token_hits
    finally:
        bar.close()
    return {
        "lengths": lengths,
        "depths": [float(x) for x in depths],
        "num_examples": num_examples,
        "digits": digits,
        "seed": seed,
        "accuracy": (exact / num_examples).tolist(),
        "teacher_forced_digit_accuracy": (digit_hits / (num_examples * digits)).tolist(),
    }
