"""Variable tracking, after RULER (NVIDIA/RULER `synthetic/variable_tracking.py`).

A prompt + answer of at most `length` bytes:

    INTRO + haystack with the chains' statements inserted + QUESTION | ANSWER

  * `num_chains` chains of `num_hops` + 1 variables (names of `name_length` uppercase letters, all
    distinct): "VAR QWERT = 12345." then "VAR ASDFG = VAR QWERT.", "VAR ZXCVB = VAR ASDFG.", ...
    (`num_hops` copies), each chain with its own `value_digits`-digit value (all distinct);
  * each statement at a uniformly random boundary between haystack units, a chain's statements in
    chain order (sorted boundaries; at one boundary, by hop), so every variable is assigned before
    it is used; the haystack is `niah`'s ("noise" sentences or "stdlib" lines, whole units, as many
    as fit; statements end in " " after noise, on their own line in stdlib text);
  * question (RULER's template) about chain 0's value: "Question: Find all variables that are
    assigned the value 12345 in the text above. Answer: According to the chain(s) of variable
    assignment in the text above, 5 variables are assigned the value 12345, they are: ";
  * answer: chain 0's variables in chain order (the order they are assigned), joined by single
    spaces: "QWERT ASDFG ZXCVB ...". RULER scores any order; teacher-forced exact match needs one.
    The answer mask marks the whole answer.
"""

from __future__ import annotations

import numpy as np

from longctx_jax.data.tasks.example import (
    TaskExample,
    check,
    check_choice,
    check_int,
    example_rng,
    is_int,
    prompt_and_answer,
)
from longctx_jax.data.tasks.niah import HAYSTACKS, haystack_units, insert_units, unit_separator

INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
QUESTION = (
    "\nQuestion: Find all variables that are assigned the value {value} in the text above. "
    "Answer: According to the chain(s) of variable assignment in the text above, {count} "
    "variables are assigned the value {value}, they are: "
)
FIRST_STATEMENT = "VAR {name} = {value}."
HOP_STATEMENT = "VAR {name} = VAR {previous}."
NAME_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_STREAM = 0x7A4B


def make_variable_tracking_example(
    seed,
    length,
    *,
    index=0,
    num_chains=1,
    num_hops=4,
    haystack="noise",
    name_length=5,
    value_digits=5,
) -> TaskExample:
    """The variable-tracking example for (seed, index); see the module docstring.

    Args:
      seed, index: names, values and the haystack's file are a function of these alone.
      length: the most bytes of prompt + answer (whole haystack units, so up to one unit fewer).
      num_chains: chains (chain 0 is asked, the others are distractors); num_hops: assignments
        "VAR Y = VAR X" per chain (a chain has num_hops + 1 variables).
      haystack: "noise" or "stdlib".
      name_length: letters per variable name; value_digits: digits of each chain's value.

    Returns a TaskExample (task "variable_tracking"): tokens = prompt + answer, the answer marked.
    metadata: answer (text), value (chain 0's value), chains (names per chain, chain order), values
    (per chain), statements (one dict per statement in context order: chain, hop, text, start
    token offset), haystack, haystack_files and haystack_offset (stdlib), haystack_bytes, length.
    """
    check_int("seed", seed, 0)
    check_int("index", index, 0)
    check_int("num_chains", num_chains, 1)
    check_int("num_hops", num_hops, 0)
    check_choice("haystack", haystack, HAYSTACKS)
    check_int("name_length", name_length, 1)
    check_int("value_digits", value_digits, 1, 18)
    num_names = num_chains * (num_hops + 1)
    check(
        "name_length",
        name_length,
        len(NAME_LETTERS) ** name_length >= num_names,
        f"enough letters for {num_names} distinct variable names (26**name_length >= {num_names})",
    )
    check(
        "value_digits",
        value_digits,
        9 * 10 ** (value_digits - 1) >= num_chains,
        f"enough digits for num_chains={num_chains} distinct values",
    )

    sep = unit_separator(haystack)
    name, digits = "N" * name_length, "0" * value_digits
    first_bytes = len(FIRST_STATEMENT.format(name=name, value=digits)) + len(sep)
    hop_bytes = len(HOP_STATEMENT.format(name=name, previous=name)) + len(sep)
    question_bytes = len(QUESTION.format(value=digits, count=num_hops + 1))
    answer_bytes = (num_hops + 1) * (name_length + 1) - 1
    fixed = (
        len(INTRO)
        + num_chains * (first_bytes + num_hops * hop_bytes)
        + question_bytes
        + answer_bytes
    )
    check(
        "length",
        length,
        is_int(length) and length >= fixed,
        f"an integer >= {fixed} (intro, {num_chains} chain(s) of {num_hops + 1} statements, "
        "question and answer)",
    )

    name_rng, haystack_rng, position_rng = example_rng(seed, _STREAM, index, children=3)
    names = []
    while len(names) < num_names:
        candidate = "".join(NAME_LETTERS[i] for i in name_rng.integers(26, size=name_length))
        if candidate not in names:
            names.append(candidate)
    chains = [names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)] for c in range(num_chains)]
    values = []
    while len(values) < num_chains:
        value = str(int(name_rng.integers(10 ** (value_digits - 1), 10**value_digits)))
        if value not in values:
            values.append(value)

    units, info = haystack_units(haystack, length - fixed, haystack_rng)
    slots = len(units) + 1
    placed = []  # (boundary, hop, chain, text)
    for c, chain in enumerate(chains):
        boundaries = np.sort(
            position_rng.choice(slots, size=num_hops + 1, replace=slots <= num_hops)
        )
        for hop, boundary in enumerate(boundaries):
            if hop == 0:
                text = FIRST_STATEMENT.format(name=chain[0], value=values[c])
            else:
                text = HOP_STATEMENT.format(name=chain[hop], previous=chain[hop - 1])
            placed.append((int(boundary), hop, c, text))
    placed.sort()
    context, starts, _ = insert_units(units, [(b, text.encode() + sep) for b, _, _, text in placed])
    prompt = (
        INTRO.encode() + context + QUESTION.format(value=values[0], count=num_hops + 1).encode()
    )
    answer = " ".join(chains[0])
    statements = tuple(
        dict(chain=c, hop=hop, text=text, start=len(INTRO) + start)
        for (_, hop, c, text), start in zip(placed, starts, strict=True)
    )
    return prompt_and_answer(
        "variable_tracking",
        np.frombuffer(prompt, np.uint8).astype(np.int32),
        np.frombuffer(answer.encode(), np.uint8).astype(np.int32),
        dict(
            answer=answer,
            value=values[0],
            chains=tuple(tuple(chain) for chain in chains),
            values=tuple(values),
            statements=statements,
            haystack=haystack,
            haystack_files=tuple(info.get("files", ())),
            haystack_offset=info.get("offset", 0),
            haystack_bytes=sum(len(u) for u in units),
            num_chains=num_chains,
            num_hops=num_hops,
            length=length,
        ),
    )
