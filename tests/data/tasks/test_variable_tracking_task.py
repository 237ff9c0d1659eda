"""Variable tracking: following the chains in the prompt text (parsed here) gives the answer."""

import re

import numpy as np
import pytest
from tasks_testlib import LONGEST_SENTENCE, check_stdlib_haystack, noise_sentences

from longctx_jax.data import decode
from longctx_jax.data.tasks import make_variable_tracking_example

STATEMENT = re.compile(rb"VAR ([A-Z]+) = (?:([0-9]+)|VAR ([A-Z]+))\.")
QUESTION = re.compile(
    r"\nQuestion: Find all variables that are assigned the value ([0-9]+) in the text above\. "
    r"Answer: According to the chain\(s\) of variable assignment in the text above, ([0-9]+) "
    r"variables are assigned the value ([0-9]+), they are: $"
)


def solve(example):
    """(variables holding the asked value in assignment order, stated count, haystack bytes)."""
    prompt = bytes(example.tokens[: example.prompt_len].astype(np.uint8))
    question = QUESTION.search(prompt.decode("utf-8", errors="surrogateescape"))
    assert question and question.group(1) == question.group(3)
    intro = b"Memorize and track the chain(s) of variable assignment hidden in the following text."
    assert prompt.startswith(intro + b"\n\n")
    context = prompt[len(intro) + 2 : len(prompt) - len(question.group(0))]
    sep = b" " if example.metadata["haystack"] == "noise" else b"\n"
    value_of, order, haystack, cursor = {}, [], b"", 0
    for match in STATEMENT.finditer(context):
        name, literal, source = (g.decode() if g else None for g in match.groups())
        assert name not in value_of  # each variable assigned once
        value_of[name] = literal if literal else value_of[source]  # KeyError: used before set
        order.append(name)
        assert context[match.end() : match.end() + 1] == sep
        haystack += context[cursor : match.start()]
        cursor = match.end() + 1
    haystack += context[cursor:]
    holders = [name for name in order if value_of[name] == question.group(1)]
    return holders, int(question.group(2)), haystack


@pytest.mark.parametrize("haystack", ["noise", "stdlib"])
@pytest.mark.parametrize("num_chains, num_hops", [(1, 4), (3, 2), (2, 0), (4, 6)])
def test_following_the_chain_gives_the_answer(seed, haystack, num_chains, num_hops):
    for index, length in enumerate([1000, 1500, 4000]):
        example = make_variable_tracking_example(
            seed, length, index=index, num_chains=num_chains, num_hops=num_hops, haystack=haystack
        )
        holders, count, hay = solve(example)
        assert holders == example.metadata["answer"].split(" ")
        assert len(holders) == count == num_hops + 1
        assert decode(example.answer_tokens) == " ".join(holders)
        assert list(example.metadata["chains"][0]) == holders
        names = [n for chain in example.metadata["chains"] for n in chain]
        assert len(names) == len(set(names)) == num_chains * (num_hops + 1)
        assert all(len(n) == 5 and n.isupper() for n in names)
        assert len(example.tokens) <= length
        if haystack == "noise":
            noise_sentences(hay.decode())
            assert length - len(example.tokens) < LONGEST_SENTENCE
        else:
            meta = example.metadata
            next_line = check_stdlib_haystack(hay, meta["haystack_files"], meta["haystack_offset"])
            assert len(example.tokens) + next_line > length
        assert example.metadata["haystack_bytes"] == len(hay)


def test_bad_arguments():
    cases = [
        (dict(num_chains=0), r"num_chains=0: expected an integer >= 1"),
        (dict(num_hops=-1), r"num_hops=-1: expected an integer >= 0"),
        (dict(length=300), r"length=300: expected an integer >= \d+ \(intro, 1 chain\(s\) of 5"),
        (dict(length=1000.0), r"length=1000.0: expected an integer"),
        (
            dict(name_length=1, num_chains=6),
            r"name_length=1: expected enough letters for 30 distinct variable names",
        ),
        (dict(value_digits=1, num_chains=10), r"value_digits=1: expected enough digits"),
        (dict(haystack="essay"), r"haystack='essay': expected one of \('noise', 'stdlib'\)"),
        (dict(index=1.5), r"index=1.5: expected an integer >= 0"),
    ]
    for kwargs, message in cases:
        arguments = dict(length=1000) | kwargs
        with pytest.raises(ValueError, match=message):
            make_variable_tracking_example(0, arguments.pop("length"), **arguments)
