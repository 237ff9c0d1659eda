"""Multi-query associative recall (MQAR; Arora, Eyuboglu et al., "Zoology", 2023).

Zoology's `multiquery_ar` layout, one example of exactly `length` tokens:

    k_0 v_0 k_1 v_1 ... k_{P-1} v_{P-1} | query region: slots of two tokens (q, x)
                                          where a slot holds a query, q is a key from the pairs
                                          and x noise; the value of q is the *label* at x's
                                          position; all other tokens are noise

  * keys are `num_pairs` distinct tokens from `key_range`, values `num_pairs` distinct tokens from
    the disjoint `value_range` (zoology: keys [1, vocab/2), values [vocab/2, vocab); byte level,
    vocab 256: keys are bytes 1..127 and values bytes 128..255);
  * `num_queries` distinct keys (default: all of them, as zoology) are queried, each once, in slots
    g = 0 .. (length - 2P) // 2 - 1 of the query region, drawn without replacement with zoology's
    power law p(g) ∝ (g + 1)^(power_a - 1) (power_a = 0.01: gaps near the pairs are likely; 1:
    uniform), so queries come in random order;
  * noise (`noise="random"`, zoology's random_non_queries) is uniform over [0, vocab_size), or
    token 0 (`"pad"`); an odd length leaves one more noise token at the end.

The answer mask marks the position after each query, whose *target* (`TaskExample.targets`) is
the value: the model predicts it at the query's position, in this repo's next-token convention,
while the input there stays noise. The value is never shown after a query, as in zoology: if it
were, the later queries of an example could be answered by elimination (a value not yet shown),
a shortcut fixed-state models can use as well as attention (probes trained on a layout that
showed the values sat on it: ~0.63 per-query accuracy with 2 pairs, ~0.5 with 4).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from longctx_jax.data.tasks.example import (
    TaskExample,
    check,
    check_choice,
    check_int,
    example_rng,
    is_int,
)
from longctx_jax.data.vocab import VOCAB_SIZE

NOISE_KINDS = ("random", "pad")
PAD_TOKEN = 0
_STREAM = 0x3A9A


def _check_range(name, value, vocab_size):
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and 0 <= value[0] < value[1] <= vocab_size
    )
    check(name, value, ok, f"(lo, hi) with 0 <= lo < hi <= vocab_size={vocab_size}")
    return int(value[0]), int(value[1])


def make_mqar_example(
    seed,
    length,
    num_pairs,
    *,
    index=0,
    num_queries=None,
    vocab_size=VOCAB_SIZE,
    key_range=None,
    value_range=None,
    power_a=0.01,
    noise="random",
) -> TaskExample:
    """The MQAR example for (seed, index); see the module docstring.

    Args:
      seed, index: the example is a function of these (and the other arguments) only.
      length: tokens in the example (exactly); needs 2 * num_pairs + 2 * num_queries.
      num_pairs: key-value pairs P at the start.
      num_queries: keys queried (distinct, drawn from the P keys); default P.
      vocab_size: tokens are in [0, vocab_size) (256: bytes).
      key_range, value_range: [lo, hi) token ranges of keys and values, disjoint; default
        [1, vocab_size // 2) and [vocab_size // 2, vocab_size) as zoology.
      power_a: zoology's power-law exponent for the query slots (> 0; 1 is uniform).
      noise: "random" (uniform tokens, zoology) or "pad" (token 0) between the queries.

    Returns a TaskExample (task "mqar") with metadata: keys, values (int32 [P], pair order),
    query_positions (int32 [Q], increasing: where each query key sits), queried_pairs (int32 [Q]:
    the pair each query asks, in position order), query_slots, num_pairs, num_queries.
    """
    check_int("seed", seed, 0)
    check_int("index", index, 0)
    check_int("num_pairs", num_pairs, 1)
    num_queries = num_pairs if num_queries is None else num_queries
    check_int("num_queries", num_queries, 1, num_pairs)
    check_int("vocab_size", vocab_size, 2)
    check_choice("noise", noise, NOISE_KINDS)
    ok = isinstance(power_a, Real) and not isinstance(power_a, bool) and math.isfinite(power_a)
    check("power_a", power_a, ok and power_a > 0, "a finite number > 0")
    minimum = 2 * num_pairs + 2 * num_queries
    check(
        "length",
        length,
        is_int(length) and length >= minimum,
        f"an integer >= {minimum} (num_pairs={num_pairs} key-value pairs, then "
        f"num_queries={num_queries} queries and their values)",
    )
    half = vocab_size // 2
    ranges = {}
    for name, given, default in (
        ("key_range", key_range, (1, half)),
        ("value_range", value_range, (half, vocab_size)),
    ):
        lo, hi = default if given is None else _check_range(name, given, vocab_size)
        culprit = f"vocab_size={vocab_size} (so {name}=[{lo}, {hi}))" if given is None else None
        if hi - lo < num_pairs:
            what = culprit or f"{name}={given!r}"
            raise ValueError(
                f"{what}: expected at least num_pairs={num_pairs} distinct tokens, got {hi - lo}"
            )
        if noise == "pad" and lo <= PAD_TOKEN < hi:
            raise ValueError(
                f"{name}={(lo, hi)!r}: contains the pad token {PAD_TOKEN}; expected a range "
                "without it (or noise='random')"
            )
        ranges[name] = (lo, hi)
    (k_lo, k_hi), (v_lo, v_hi) = ranges["key_range"], ranges["value_range"]
    if k_lo < v_hi and v_lo < k_hi:
        raise ValueError(
            f"key_range={(k_lo, k_hi)!r}, value_range={(v_lo, v_hi)!r}: expected disjoint ranges"
        )

    rng = example_rng(seed, _STREAM, index)
    keys = rng.choice(np.arange(k_lo, k_hi), size=num_pairs, replace=False).astype(np.int32)
    values = rng.choice(np.arange(v_lo, v_hi), size=num_pairs, replace=False).astype(np.int32)
    context = 2 * num_pairs
    num_slots = (length - context) // 2
    p = np.arange(1, num_slots + 1, dtype=np.float64) ** (power_a - 1.0)
    slots = rng.choice(num_slots, size=num_queries, replace=False, p=p / p.sum())
    asked = rng.choice(num_pairs, size=num_queries, replace=False)  # a sample of the keys

    if noise == "random":
        tokens = rng.integers(0, vocab_size, size=length).astype(np.int32)
    else:
        tokens = np.full(length, PAD_TOKEN, np.int32)
    tokens[0:context:2] = keys
    tokens[1:context:2] = values
    order = np.argsort(slots)
    query_positions = (context + 2 * slots[order]).astype(np.int32)
    queried_pairs = asked[order].astype(np.int32)
    tokens[query_positions] = keys[queried_pairs]
    targets = tokens.copy()
    targets[query_positions + 1] = values[queried_pairs]  # labels: the input there stays noise
    mask = np.zeros(length, bool)
    mask[query_positions + 1] = True
    return TaskExample(
        task="mqar",
        tokens=tokens,
        answer_mask=mask,
        targets=targets,
        answer_spans=tuple((int(q) + 1, int(q) + 2) for q in query_positions),
        metadata=dict(
            keys=keys,
            values=values,
            query_positions=query_positions,
            queried_pairs=queried_pairs,
            query_slots=slots[order].astype(np.int32),
            num_pairs=num_pairs,
            num_queries=num_queries,
            length=length,
        ),
    )
