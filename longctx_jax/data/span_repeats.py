"""Repeated random spans inside training documents: recall pairs whose distances follow the
document lengths (`data.span_repeats`).

A language model learns to copy from the repetition in its text, but a small model trained for
minutes does not learn it from real text (induction emerges later). This transform plants the
signal at a known rate: in a document of n tokens it overwrites `round(rate * n / 1000)` pairs
of places (the fraction rounded at random) with the same `span_len` random lowercase letters,
the two places drawn uniformly among non-overlapping positions. The document keeps its length,
so the length distribution is unchanged, and the distance between the copies of a pair is that
of two random places in one document: long documents carry long recall pairs, short ones none.
The ordinary next-token loss on the second copy is the recall supervision; the span-recall
evaluator (`eval/evaluators/span_recall.py`) probes it on held-out text by distance.

Draws depend only on (seed, index), like the length distribution's crops.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

_STREAM = 0x5EED5
_LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)


@dataclasses.dataclass(frozen=True)
class SpanRepeats(grain.transforms.MapWithIndex):
    """Plants repeated spans in document `index` (a 1-D token array); see the module docstring."""

    rate: float = 0.0  # pairs per 1000 tokens
    span_len: int = 12
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.rate < float("inf"):
            raise ValueError(f"rate={self.rate!r}: expected a finite number >= 0")
        if self.span_len < 2:
            raise ValueError(f"span_len={self.span_len!r}: expected an integer >= 2")

    def map_with_index(self, index, element):
        n, span = len(element), self.span_len
        slots = n // span  # non-overlapping places: slot i covers [i * span, (i + 1) * span)
        if slots < 2 or self.rate == 0.0:
            return element
        rng = np.random.default_rng([self.seed, _STREAM, index])
        expected = self.rate * n / 1000.0
        pairs = min(int(expected) + int(rng.random() < expected % 1.0), slots // 2)
        if pairs == 0:
            return element
        out = np.array(element, copy=True)
        offset = int(rng.integers(0, n - slots * span + 1))  # places need not align to 0
        chosen = offset + span * rng.choice(slots, size=2 * pairs, replace=False)
        for first, second in chosen.reshape(pairs, 2):
            letters = rng.choice(_LETTERS, span)
            out[first : first + span] = letters
            out[second : second + span] = letters
        return out


def span_repeats_from_config(config) -> SpanRepeats:
    return SpanRepeats(
        rate=float(config.span_repeats.rate),
        span_len=int(config.span_repeats.span_len),
        seed=config.seed,
    )


def apply_span_repeats(documents, repeats: SpanRepeats):
    """grain MapDataset of documents -> the same documents with repeated spans planted."""
    return documents if repeats.rate == 0.0 else documents.map_with_index(repeats)
