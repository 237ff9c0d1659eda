"""Passkey retrieval (Mohtashami & Jaggi, 2023): find a number hidden at a chosen depth in filler.

A prompt of about `length` bytes (byte tokens, see `vocab`):

    INTRO + filler sentences + NEEDLE(key) + filler sentences + QUESTION

where the filler is the sentences "The grass is green. The sky is blue. ..." repeated (whole
sentences only, so the prompt is `length` bytes or up to one sentence shorter: never longer), the
needle "The pass key is 12345. Remember it. 12345 is the pass key. " sits at the sentence boundary
nearest `depth` x (filler bytes) into the filler (depth 0: right after the intro, 1: right before
the question), and the question ends "The pass key is ", so the answer is the key's digits. The key
is drawn from (seed, length, depth, index): the same arguments always give the same example.
A model is scored by exact match of the digits it greedily decodes (`score`).
`PasskeyExample.as_task_example()` gives the common form of every retrieval task (`TaskExample`:
tokens = prompt + answer, the answer's digits marked).
"""

import dataclasses
import re
from numbers import Integral, Real

import grain
import numpy as np

from longctx_jax.data.tasks.example import TaskExample, prompt_and_answer
from longctx_jax.data.vocab import decode, encode

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
FILLER_SENTENCES = (
    "The grass is green. ",
    "The sky is blue. ",
    "The sun is yellow. ",
    "Here we go. ",
    "There and back again. ",
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is "
_STREAM = 0x9A55


@dataclasses.dataclass(frozen=True)
class PasskeyExample:
    """One passkey prompt: feed `prompt`, greedily decode len(answer) tokens, `score` them."""

    prompt: np.ndarray  # int32 [prompt_len], prompt_len in (length - longest sentence, length]
    answer: np.ndarray  # int32 [digits], the key's ASCII digits
    passkey: str
    needle_start: int  # byte offset of the needle sentence in the prompt
    length: int
    depth: float

    def as_task_example(self) -> TaskExample:
        """tokens = prompt + answer with the answer's digits marked; metadata: the fields here."""
        return prompt_and_answer(
            "passkey",
            self.prompt,
            self.answer,
            dict(
                answer=self.passkey,
                passkey=self.passkey,
                needle_start=self.needle_start,
                length=self.length,
                depth=self.depth,
            ),
        )


def _check(name, value, ok, expected):
    if not ok:
        raise ValueError(f"{name}={value!r}: expected {expected}")


def make_passkey_example(seed, length, depth, *, index=0, digits=5):
    """The passkey example for (seed, length, depth, index); see the module docstring."""
    _check("seed", seed, isinstance(seed, Integral) and seed >= 0, "an integer >= 0")
    _check("index", index, isinstance(index, Integral) and index >= 0, "an integer >= 0")
    _check("digits", digits, isinstance(digits, Integral) and 1 <= digits <= 18, "1..18")
    _check("depth", depth, isinstance(depth, Real) and 0.0 <= depth <= 1.0, "a number in [0, 1]")
    fixed = len(INTRO) + len(NEEDLE.format(key="0" * digits)) + len(QUESTION)
    _check(
        "length",
        length,
        isinstance(length, Integral) and not isinstance(length, bool) and length >= fixed,
        f"an integer >= {fixed} (intro, needle and question)",
    )
    rng = np.random.default_rng([seed, _STREAM, length, round(float(depth) * 1e6), index])
    passkey = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
    needle = NEEDLE.format(key=passkey)
    budget = int(length) - fixed
    sentences = []
    used = 0
    while True:
        sentence = FILLER_SENTENCES[len(sentences) % len(FILLER_SENTENCES)]
        if used + len(sentence) > budget:
            break
        sentences.append(sentence)
        used += len(sentence)
    boundaries = np.cumsum([0] + [len(s) for s in sentences])  # bytes before sentence k
    k = int(np.argmin(np.abs(boundaries - depth * used)))
    before, after = "".join(sentences[:k]), "".join(sentences[k:])
    prompt = INTRO + before + needle + after + QUESTION
    return PasskeyExample(
        prompt=encode(prompt),
        answer=encode(passkey),
        passkey=passkey,
        needle_start=len(INTRO) + len(before),
        length=length,
        depth=float(depth),
    )


def passkey_dataset(*, seed, length, depth, num_examples, digits=5):
    """grain.MapDataset of `num_examples` PasskeyExamples (index 0..num_examples-1)."""
    return grain.MapDataset.range(num_examples).map(
        lambda i: make_passkey_example(seed, length, depth, index=i, digits=digits)
    )


def score(predicted_tokens, answer):
    """Exact match: the leading digits of the prediction (after whitespace) equal the answer's.

    `answer` is the key (str) or its tokens. "12345", " 12345." and "12345 is" match "12345";
    "1234", "123456" and "x12345" do not.
    """
    expected = answer if isinstance(answer, str) else decode(answer)
    predicted = decode(predicted_tokens).lstrip()
    match = re.match(r"[0-9]+", predicted)
    return match is not None and match.group(0) == expected
