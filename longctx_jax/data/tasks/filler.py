"""MQAR with irrelevant filler, placed the ways long-context retrieval training is bootstrapped.

    example = make_filler_example(seed, 64, "start", index=3)
    example = make_filler_example(seed, 64, "depth", depth=0.0, index=3)   # pairs at the start

An MQAR example A of `example_len` tokens (`make_mqar_example`: P key-value pairs, then the
query region) is laid out in `length` tokens with F = length - example_len filler tokens, drawn
uniformly from `filler_range` (a range disjoint from the keys and values: irrelevant, not
padding; inside MQAR's query region the non-query slots are token 0, `noise="pad"`):

  absent       A alone (example_len tokens; the row is padded after it).
  start        F filler, then A: the bootstrap recipe of padding a short task with noise first,
               so everything early in the context is noise.
  interleaved  each pair followed by ~F / P filler, then the query region.
  depth        round(depth x F) filler, the pairs, the rest of the filler, the query region: the
               pairs at a chosen depth (depth 0: the very start of the context).
  stacked      A's pairs, two whole MQAR examples B and C of (length - example_len) / 2 tokens
               each, then A's query region: task A interrupted by B and C, then back to A. Keys
               may repeat across A, B and C; A's queries are answered by A's values, so a model
               that takes the most recent binding of a key fails them.

Every query's value is a label (MQAR's `targets`); all queries (of A, B and C) are answer spans.
metadata: layout, depth, pairs_start (where A's first key sits), a_queries (indices of A's
answer spans), num_pairs.
"""

from __future__ import annotations

import numpy as np

from longctx_jax.data.tasks.example import TaskExample, check, check_choice, example_rng
from longctx_jax.data.tasks.mqar import make_mqar_example

LAYOUTS = ("absent", "start", "interleaved", "depth", "stacked")
_STREAM = 0xF111


def _piece(tokens, targets=None, mask=None):
    tokens = np.asarray(tokens, np.int32)
    return (
        tokens,
        tokens if targets is None else np.asarray(targets, np.int32),
        np.zeros(len(tokens), bool) if mask is None else np.asarray(mask, bool),
    )


def _split(example: TaskExample, num_pairs: int):
    """(pairs piece, query-region piece) of an MQAR example."""
    cut = 2 * num_pairs
    targets, mask = example.target_tokens(), example.answer_mask
    return (
        _piece(example.tokens[:cut], targets[:cut], mask[:cut]),
        _piece(example.tokens[cut:], targets[cut:], mask[cut:]),
    )


def _spans(mask) -> tuple[tuple[int, int], ...]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return tuple((int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True))


def make_filler_example(
    seed,
    length,
    layout,
    *,
    index=0,
    depth=0.0,
    num_pairs=4,
    example_len=32,
    key_range=(1, 17),
    value_range=(128, 144),
    filler_range=(17, 128),
) -> TaskExample:
    """The example `index` of `seed` in `layout` (module docstring); deterministic."""
    check_choice("layout", layout, LAYOUTS)
    check("depth", depth, 0.0 <= depth <= 1.0, "a number in [0, 1]")
    check("length", length, length >= example_len, f">= example_len={example_len}")
    lo, hi = filler_range
    overlaps = any(a < hi and lo < b for a, b in (key_range, value_range))
    check("filler_range", filler_range, 0 <= lo < hi and not overlaps, "disjoint from keys/values")
    mqar = dict(key_range=key_range, value_range=value_range, noise="pad")
    a = make_mqar_example(seed, example_len, num_pairs, index=3 * index, **mqar)
    pairs, queries = _split(a, num_pairs)
    filler_len = length - example_len
    filler = example_rng(seed, _STREAM, index).integers(lo, hi, filler_len)
    if layout == "absent":
        pieces, before = [pairs, queries], 0
    elif layout == "start":
        pieces, before = [_piece(filler), pairs, queries], filler_len
    elif layout == "depth":
        before = round(depth * filler_len)
        pieces = [_piece(filler[:before]), pairs, _piece(filler[before:]), queries]
    elif layout == "interleaved":
        chunks = np.array_split(filler, num_pairs)
        pieces, before = [], 0
        for i, chunk in enumerate(chunks):
            pair = tuple(part[2 * i : 2 * i + 2] for part in pairs)
            pieces += [pair, _piece(chunk)]
        pieces.append(queries)
    else:  # stacked
        check("length", length, filler_len % 2 == 0, "example_len + an even number")
        inner = filler_len // 2
        b, c = (
            make_mqar_example(seed, inner, num_pairs, index=3 * index + j, **mqar) for j in (1, 2)
        )
        pieces = [pairs, _piece(b.tokens, b.target_tokens(), b.answer_mask)]
        pieces += [_piece(c.tokens, c.target_tokens(), c.answer_mask), queries]
        before = 0
    tokens, targets, mask = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
    spans = _spans(mask)
    num_a = int(a.answer_mask.sum())  # MQAR answers are one token each
    a_queries = list(range(len(spans) - num_a, len(spans)))
    return TaskExample(
        task="filler",
        tokens=tokens,
        answer_mask=mask,
        answer_spans=spans,
        targets=targets,
        metadata=dict(
            layout=layout,
            depth=float(depth),
            pairs_start=before,
            a_queries=a_queries,
            num_pairs=num_pairs,
        ),
    )
