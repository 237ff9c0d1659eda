"""Needle in a haystack, after RULER (Hsieh et al., 2024; NVIDIA/RULER `synthetic/niah.py`).

A prompt + answer of at most `length` bytes:

    INTRO + haystack with needles inserted between its units + QUESTION | ANSWER

  * needle: "One of the special magic numbers for {key} is: {value}." (RULER's), keys
    `key_length` lowercase letters, values `value_digits`-digit numbers (no leading zero), every
    key and every value in an example distinct;
  * haystack (`haystack`): "noise", RULER's sentences "The grass is green. The sky is blue. The
    sun is yellow. Here we go. There and back again. " repeated (one unit per sentence), or
    "stdlib", consecutive lines of the Python standard library's source (one unit per line): a
    file chosen by (seed, index), from a line chosen by (seed, index), continuing into the next
    files in sorted order (a file without a final newline gets one). Whole units only, as many as
    fit: the example is `length` bytes or up to one unit shorter, never longer;
  * variants (`NIAH_VARIANTS`, RULER's niah_single / multikey / multivalue / multiquery): `num_keys`
    keys each with `num_values` needles (values); `num_queries` of the keys are asked, the other
    num_keys - num_queries keys are distractors. Counts given explicitly override the variant's;
  * depth: the *target* needle (first asked key, its first value) sits at the unit boundary
    nearest `depth` x (haystack bytes) (0: right after the intro, 1: right before the question),
    so within half a unit (one sentence / one line) of the requested depth; every other needle at
    a uniformly random boundary (RULER draws depths from a grid);
  * distractor similarity s in [0, 1]: distractor key j is asked key j % num_queries with exactly
    d(s) = 1 + round((1 - s) * (key_length - 1)) of its letters replaced by other letters: s = 1
    differs from a real key in one letter, s = 0 in every letter. Higher s never increases the
    Hamming distance (hence the edit distance, which is at most it) to the real key;
  * question (RULER's template; singular when one value is asked in all): "What are all the special
    magic numbers for k1, k2, and k3 mentioned in the provided text? The special magic numbers for
    k1, k2, and k3 mentioned in the provided text are: " (RULER ends at "are"; the ": " here fixes
    the answer's first byte);
  * answer: the asked values joined by ", " ("1234567, 7654321"): per asked key in question order,
    its values in the order they appear in the context. RULER scores any order; a fixed order is
    what teacher-forced exact match needs. The answer mask marks the whole answer.

Keys, values and the haystack file are drawn from (seed, index) alone, so examples that differ only
in length or depth share them (a controlled length x depth grid); the other needles' positions
depend on the length too. The stdlib haystack is this Python's, so it is deterministic per
installation (like `data.source = "stdlib"`).
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np

from longctx_jax.data.sources import stdlib_files
from longctx_jax.data.tasks.example import (
    TaskExample,
    check,
    check_choice,
    check_fraction,
    check_int,
    example_rng,
    is_int,
    prompt_and_answer,
)
from longctx_jax.data.tasks.passkey import FILLER_SENTENCES

NIAH_VARIANTS = {
    "single": dict(num_keys=1, num_values=1, num_queries=1),
    "multikey": dict(num_keys=4, num_values=1, num_queries=1),
    "multivalue": dict(num_keys=1, num_values=4, num_queries=1),
    "multiquery": dict(num_keys=4, num_values=1, num_queries=4),
}
HAYSTACKS = ("noise", "stdlib")
NOISE_SENTENCES = FILLER_SENTENCES  # RULER's noise haystack, one sentence per unit
NEEDLE = "One of the special magic numbers for {key} is: {value}."
INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n"
)
INTRO_SINGULAR = (
    "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n"
)
QUESTION = (
    "\nWhat are all the special magic numbers for {query} mentioned in the provided text? "
    "The special magic numbers for {query} mentioned in the provided text are: "
)
QUESTION_SINGULAR = (
    "\nWhat is the special magic number for {query} mentioned in the provided text? "
    "The special magic number for {query} mentioned in the provided text is: "
)
ANSWER_SEPARATOR = ", "
KEY_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_STREAM = 0x41A4


# --------------------------------------------------------------------------- haystacks


@functools.cache
def _stdlib_corpus():
    return stdlib_files()


def _file_lines(root, relpath):
    data = (root / relpath).read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    return re.findall(rb"[^\n]*\n", data)


def unit_separator(haystack) -> bytes:
    """What ends an inserted unit (needle, statement): b" " after noise, b"\\n" in stdlib text."""
    return b" " if haystack == "noise" else b"\n"


def haystack_units(haystack, budget, rng) -> tuple[list[bytes], dict]:
    """(units, info): as many whole haystack units as fit in `budget` bytes, in order.

    "noise": the noise sentences, cycled from the first. "stdlib": lines from a file and line
    drawn by `rng`, continuing through the next files (sorted, wrapping); info gives `files`
    (relative paths, in order) and `offset` (byte offset of the first line in the first file).
    """
    check_choice("haystack", haystack, HAYSTACKS)
    units, used = [], 0
    if haystack == "noise":
        while len(sentence := NOISE_SENTENCES[len(units) % len(NOISE_SENTENCES)]) + used <= budget:
            units.append(sentence.encode())
            used += len(sentence)
        return units, {}
    root, relpaths = _stdlib_corpus()
    if not relpaths:
        raise ValueError(f"haystack={haystack!r}: no standard-library .py files found at {root}")
    file_index = int(rng.integers(len(relpaths)))
    lines = _file_lines(root, relpaths[file_index])
    start = int(rng.integers(len(lines)))
    info = {"files": [relpaths[file_index]], "offset": sum(len(x) for x in lines[:start])}
    lines = lines[start:]
    while True:
        for line in lines:
            if used + len(line) > budget:
                return units, info
            units.append(line)
            used += len(line)
        file_index = (file_index + 1) % len(relpaths)
        info["files"].append(relpaths[file_index])
        lines = _file_lines(root, relpaths[file_index])


def nearest_boundary(units, depth) -> int:
    """k such that units[:k] holds the share of the haystack's bytes nearest `depth`."""
    boundaries = np.cumsum([0] + [len(u) for u in units])
    return int(np.argmin(np.abs(boundaries - depth * boundaries[-1])))


def insert_units(units, inserts) -> tuple[bytes, list[int], list[int]]:
    """(context, starts, before): `inserts` [(boundary k, bytes)] placed before units[k].

    Inserts at one boundary keep their order in the list. starts: byte offset of each insert in
    the context; before: haystack bytes (inserts not counted) before each insert.
    """
    order = sorted(range(len(inserts)), key=lambda i: inserts[i][0])
    pieces, starts, before = [], [0] * len(inserts), [0] * len(inserts)
    offset = haystack = next_unit = 0
    for i in order:
        boundary, text = inserts[i]
        for unit in units[next_unit:boundary]:
            pieces.append(unit)
            offset += len(unit)
            haystack += len(unit)
        next_unit = max(next_unit, boundary)
        starts[i], before[i] = offset, haystack
        pieces.append(text)
        offset += len(text)
    pieces.extend(units[next_unit:])
    return b"".join(pieces), starts, before


# --------------------------------------------------------------------------- keys and values


def distractor_distance(similarity, key_length) -> int:
    """Letters in which a distractor key differs from its real key: 1 + round((1 - s) (K - 1))."""
    return 1 + round((1.0 - similarity) * (key_length - 1))


def _random_key(rng, key_length):
    return "".join(KEY_LETTERS[i] for i in rng.integers(len(KEY_LETTERS), size=key_length))


def _mutate(key, distance, rng):
    letters = list(key)
    for position in rng.choice(len(key), size=distance, replace=False):
        others = [c for c in KEY_LETTERS if c != letters[position]]
        letters[position] = others[int(rng.integers(len(others)))]
    return "".join(letters)


def _join_queries(queries):
    """RULER's: "a", "a, and b", "a, b, and c"."""
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


def make_niah_example(
    seed,
    length,
    depth,
    *,
    index=0,
    variant="single",
    haystack="noise",
    num_keys=None,
    num_values=None,
    num_queries=None,
    distractor_similarity=0.0,
    key_length=6,
    value_digits=7,
) -> TaskExample:
    """The NIAH example for (seed, index); see the module docstring.

    Args:
      seed, index: keys, values and the haystack's file are a function of these alone.
      length: the most bytes of prompt + answer (whole haystack units, so up to one unit fewer).
      depth: in [0, 1], where the target needle sits in the haystack.
      variant: a name in NIAH_VARIANTS, giving the defaults of num_keys, num_values, num_queries.
      haystack: "noise" or "stdlib".
      num_keys: keys with needles (asked + distractors); num_values: needles (values) per key;
      num_queries: keys asked (<= num_keys).
      distractor_similarity: s in [0, 1], see the module docstring.
      key_length: letters per key; value_digits: digits per value.

    Returns a TaskExample (task "niah"): tokens = prompt + answer, the answer marked. metadata:
    answer (text), queries (asked keys, question order), needles (one dict per needle in context
    order: key, value, queried, start/end token offsets, depth = haystack bytes before it / all),
    target_needle (its index in needles), depth (requested), variant, haystack, haystack_files and
    haystack_offset (stdlib), haystack_bytes, num_keys, num_values, num_queries,
    distractor_distance (letters a distractor differs in from its asked key; None without
    distractors), length.
    """
    check_int("seed", seed, 0)
    check_int("index", index, 0)
    check_fraction("depth", depth)
    check_choice("variant", variant, tuple(NIAH_VARIANTS))
    check_choice("haystack", haystack, HAYSTACKS)
    counts = dict(NIAH_VARIANTS[variant])
    for name, value in (("num_keys", num_keys), ("num_values", num_values)):
        if value is not None:
            check_int(name, value, 1)
            counts[name] = value
    if num_queries is not None:
        counts["num_queries"] = num_queries
    num_keys, num_values = counts["num_keys"], counts["num_values"]
    num_queries = min(counts["num_queries"], num_keys) if num_queries is None else num_queries
    check_int("num_queries", num_queries, 1, num_keys)
    check_fraction("distractor_similarity", distractor_similarity)
    check_int("key_length", key_length, 1)
    check_int("value_digits", value_digits, 1, 18)
    check(
        "key_length",
        key_length,
        len(KEY_LETTERS) ** key_length >= num_keys,
        f"enough letters for num_keys={num_keys} distinct keys (26**key_length >= num_keys)",
    )
    num_distractors = num_keys - num_queries
    distance = distractor_distance(distractor_similarity, key_length)
    if num_distractors:
        per_key = math.ceil(num_distractors / num_queries)
        capacity = math.comb(key_length, distance) * (len(KEY_LETTERS) - 1) ** distance
        check(
            "distractor_similarity",
            distractor_similarity,
            capacity >= per_key + num_queries,
            f"a value leaving enough keys {distance} letter(s) away from each asked key for "
            f"{per_key} distractor(s) each (key_length={key_length} allows {capacity})",
        )
    num_needles = num_keys * num_values
    check(
        "value_digits",
        value_digits,
        9 * 10 ** (value_digits - 1) >= num_needles,
        f"enough digits for {num_needles} distinct values",
    )

    # Fixed parts first: their size does not depend on the draws.
    singular = num_queries * num_values == 1
    intro = INTRO_SINGULAR if singular else INTRO
    question = QUESTION_SINGULAR if singular else QUESTION
    sep = unit_separator(haystack)
    needle_bytes = len(NEEDLE.format(key="k" * key_length, value="0" * value_digits)) + len(sep)
    queries_bytes = len(_join_queries(["k" * key_length] * num_queries))
    answers = num_queries * num_values
    answer_bytes = answers * value_digits + len(ANSWER_SEPARATOR) * (answers - 1)
    fixed = (
        len(intro)
        + num_needles * needle_bytes
        + len(question.format(query=""))
        + 2 * queries_bytes
        + answer_bytes
    )
    check(
        "length",
        length,
        is_int(length) and length >= fixed,
        f"an integer >= {fixed} (intro, {num_needles} needle(s), question and answer)",
    )

    key_rng, haystack_rng, position_rng = example_rng(seed, _STREAM, index, children=3)
    keys = []
    while len(keys) < num_queries:
        key = _random_key(key_rng, key_length)
        if key not in keys:
            keys.append(key)
    while len(keys) < num_keys:
        key = _mutate(keys[(len(keys) - num_queries) % num_queries], distance, key_rng)
        if key not in keys:
            keys.append(key)
    values = []
    while len(values) < num_needles:
        value = str(int(key_rng.integers(10 ** (value_digits - 1), 10**value_digits)))
        if value not in values:
            values.append(value)
    needles = [  # (key index, value), key-major; needle 0 is the target
        (k, values[k * num_values + v]) for k in range(num_keys) for v in range(num_values)
    ]

    units, info = haystack_units(haystack, length - fixed, haystack_rng)
    boundaries = [nearest_boundary(units, depth)]
    boundaries += [int(b) for b in position_rng.integers(len(units) + 1, size=num_needles - 1)]
    tie_order = position_rng.permutation(num_needles)  # order of needles at one boundary
    order = sorted(range(num_needles), key=lambda i: (boundaries[i], tie_order[i]))
    inserts = [
        (boundaries[i], NEEDLE.format(key=keys[needles[i][0]], value=needles[i][1]).encode() + sep)
        for i in order
    ]
    context, starts, before = insert_units(units, inserts)
    query = _join_queries(keys[:num_queries])
    prompt = intro.encode() + context + question.format(query=query).encode()
    asked = [  # per asked key (question order), its values in context order
        needles[i][1] for k in range(num_queries) for i in order if needles[i][0] == k
    ]
    answer = ANSWER_SEPARATOR.join(asked)
    haystack_bytes = sum(len(u) for u in units)
    needle_info = []
    for slot, i in enumerate(order):
        start = len(intro) + starts[slot]
        key_index, value = needles[i]
        needle_info.append(
            dict(
                key=keys[key_index],
                value=value,
                queried=key_index < num_queries,
                start=start,
                end=start + len(inserts[slot][1]) - len(sep),
                depth=before[slot] / haystack_bytes if haystack_bytes else 0.0,
            )
        )
    prompt_tokens = np.frombuffer(prompt, np.uint8).astype(np.int32)
    answer_tokens = np.frombuffer(answer.encode(), np.uint8).astype(np.int32)
    return prompt_and_answer(
        "niah",
        prompt_tokens,
        answer_tokens,
        dict(
            answer=answer,
            queries=tuple(keys[:num_queries]),
            needles=tuple(needle_info),
            target_needle=order.index(0),
            depth=float(depth),
            variant=variant,
            haystack=haystack,
            haystack_files=tuple(info.get("files", ())),
            haystack_offset=info.get("offset", 0),
            haystack_bytes=haystack_bytes,
            num_keys=num_keys,
            num_values=num_values,
            num_queries=num_queries,
            distractor_distance=distance if num_distractors else None,
            length=length,
        ),
    )
