"""Span recall in real text: can the model copy a random span it saw `distance` bytes back?

    example = make_span_recall_example(seed=0, length=256, distance=128, index=3)

`length` bytes of haystack text (stdlib source lines by default) hold a span of `span_len`
random lowercase letters twice: the first copy starts `distance` bytes before the second, and
the second ends the sequence. The answer is the second copy without its first byte (the cue):
given that cue, only a model that attends back `distance` tokens can continue the span, since
random letters cannot be predicted from local context. Exact match of the answer is greedy
copying of span_len - 1 bytes (`longctx_jax.eval.task_eval`).

No training task asks for this: a language model learns copying (induction heads) from the
repetition in its text, and only at the distances its training pairs covered, which is what the
training-length distribution ablation measures. `control=True` replaces the first copy by other
random letters, so the answer cannot be recalled: its accuracy is what guessing scores.
"""

from __future__ import annotations

import numpy as np

from longctx_jax.data.tasks.example import TaskExample, check_choice, check_int, example_rng
from longctx_jax.data.tasks.niah import HAYSTACKS, haystack_units

_STREAM = 0x5BA1
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)


def make_span_recall_example(
    seed, length, distance, *, index=0, span_len=12, haystack="stdlib", control=False
) -> TaskExample:
    """The example `index` of `seed` (module docstring); deterministic in its arguments.

    Needs span_len >= 2 and span_len <= distance <= length - span_len. metadata: distance,
    first and second (the copies' starts), span (the letters), control.
    """
    check_int("span_len", span_len, 2)
    check_int("length", length, 2 * span_len)
    check_int("distance", distance, span_len, length - span_len)
    check_choice("haystack", haystack, HAYSTACKS)
    rng = example_rng(seed, _STREAM, index)
    span, other = rng.choice(_LETTERS, span_len), rng.choice(_LETTERS, span_len)
    first_copy = other if control else span  # the same haystack either way
    budget = length - 2 * span_len
    units, _ = haystack_units(haystack, budget + 4096, rng)  # slack: whole lines
    text = np.frombuffer(b"".join(units), np.uint8)[:budget]
    if len(text) < budget:
        raise ValueError(f"haystack={haystack!r}: could not fill {budget} bytes")
    first, second = length - span_len - distance, length - span_len
    tokens = np.concatenate(
        [text[:first], first_copy, text[first : first + distance - span_len], span]
    ).astype(np.int32)
    mask = np.zeros(length, bool)
    mask[second + 1 :] = True
    return TaskExample(
        task="span_recall",
        tokens=tokens,
        answer_mask=mask,
        answer_spans=((second + 1, length),),
        metadata=dict(
            distance=int(distance),
            first=int(first),
            second=int(second),
            span=bytes(span).decode(),
            control=bool(control),
        ),
    )
