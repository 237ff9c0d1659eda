"""NIAH: RULER's needles and question, parsed back from the prompt text by this test."""

import re

import numpy as np
import pytest
from tasks_testlib import LONGEST_SENTENCE, check_stdlib_haystack, levenshtein, noise_sentences

from longctx_jax.data import decode
from longctx_jax.data.tasks import NIAH_VARIANTS, make_niah_example

NEEDLE = re.compile(rb"One of the special magic numbers for ([a-z]+) is: ([0-9]+)\.")
QUESTION = re.compile(
    r"\nWhat (?:is the special magic number|are all the special magic numbers) for (.+) "
    r"mentioned in the provided text\? The special magic numbers? for (.+) mentioned in the "
    r"provided text (?:is|are): $"
)


def parse(example):
    """(intro, needles [(start, end, key, value)] in context order, haystack bytes, asked keys),
    read from the prompt's tokens alone (start/end: token offsets of the needle sentence)."""
    prompt = bytes(example.tokens[: example.prompt_len].astype(np.uint8))
    text = prompt.decode("utf-8", errors="surrogateescape")
    question = QUESTION.search(text)
    assert question and question.group(1) == question.group(2)
    asked = re.split(r", and |, ", question.group(1))
    intro_end = prompt.index(b"\n") + 1
    context = prompt[intro_end : len(prompt) - len(question.group(0).encode())]
    sep = b" " if example.metadata["haystack"] == "noise" else b"\n"
    needles, haystack, cursor = [], b"", 0
    for match in NEEDLE.finditer(context):  # bytes: offsets are byte offsets
        start, end = match.span()
        assert context[end : end + 1] == sep
        haystack += context[cursor:start]
        key, value = match.group(1).decode(), match.group(2).decode()
        needles.append((intro_end + start, intro_end + end, key, value))
        cursor = end + 1
    haystack += context[cursor:]
    return text[:intro_end], needles, haystack, asked


def haystack_before(needles, index, intro_len):
    """Haystack bytes before needle `index` (the needles before it and their separators removed)."""
    start = needles[index][0]
    return start - intro_len - sum(end + 1 - s for s, end, _, _ in needles[:index])


@pytest.mark.parametrize("variant", list(NIAH_VARIANTS))
@pytest.mark.parametrize("haystack", ["noise", "stdlib"])
def test_needles_question_and_answer(seed, variant, haystack):
    counts = NIAH_VARIANTS[variant]
    for index, length in enumerate([900, 2000, 5000]):
        example = make_niah_example(
            seed, length, 0.5, index=index, variant=variant, haystack=haystack
        )
        meta = example.metadata
        intro, needles, hay, asked = parse(example)
        singular = counts["num_queries"] * counts["num_values"] == 1
        assert intro.startswith("A special magic number is" if singular else "Some special magic")
        assert len(needles) == counts["num_keys"] * counts["num_values"]
        keys = {key for _, _, key, _ in needles}
        assert len(keys) == counts["num_keys"] and len(asked) == counts["num_queries"]
        assert set(asked) <= keys  # distractors: the other num_keys - num_queries keys
        values = [value for _, _, _, value in needles]
        assert len(set(values)) == len(values) and all(len(v) == 7 for v in values)
        expected = ", ".join(value for key in asked for _, _, k, value in needles if k == key)
        assert decode(example.answer_tokens) == expected == meta["answer"]
        assert [(n["start"], n["end"], n["key"], n["value"]) for n in meta["needles"]] == needles
        # Length: at most `length`, short of it by less than the unit that did not fit.
        assert len(example.tokens) <= length
        if haystack == "noise":
            noise_sentences(hay.decode())
            assert length - len(example.tokens) < LONGEST_SENTENCE
        else:
            next_line = check_stdlib_haystack(hay, meta["haystack_files"], meta["haystack_offset"])
            assert len(example.tokens) + next_line > length
        assert meta["haystack_bytes"] == len(hay)


@pytest.mark.parametrize("haystack", ["noise", "stdlib"])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_target_needle_at_depth(seed, haystack, depth):
    for variant in ("single", "multikey"):
        for length in (700, 3000):
            example = make_niah_example(seed, length, depth, variant=variant, haystack=haystack)
            intro, needles, hay, asked = parse(example)
            target = example.metadata["target_needle"]
            assert needles[target][2] == asked[0]
            before = haystack_before(needles, target, len(intro))
            if haystack == "noise":
                unit = LONGEST_SENTENCE
            else:
                unit = max(len(line) for line in hay.splitlines(keepends=True))
            assert abs(before - depth * len(hay)) <= unit  # within one sentence / line
            if depth in (0.0, 1.0):
                assert before == depth * len(hay)
            assert example.metadata["needles"][target]["depth"] == pytest.approx(before / len(hay))


def test_distractor_similarity_is_monotone(seed):
    """Higher similarity: distractor keys closer to the real key (Hamming and edit distance)."""
    key_length = 8
    mean_edit = []
    for similarity in (0.0, 0.25, 0.5, 0.75, 1.0):
        hamming, edit = [], []
        for index in range(6):
            example = make_niah_example(
                seed,
                2000,
                0.5,
                index=index,
                variant="multikey",
                num_keys=9,
                distractor_similarity=similarity,
                key_length=key_length,
            )
            _, needles, _, (real,) = parse(example)
            distractors = [key for _, _, key, _ in needles if key != real]
            assert len(distractors) == 8 == len(set(distractors))
            hamming += [sum(a != b for a, b in zip(key, real, strict=True)) for key in distractors]
            edit += [levenshtein(key, real) for key in distractors]
        assert len(set(hamming)) == 1  # one distance per similarity
        if similarity == 1.0:
            assert hamming[0] == 1
        if similarity == 0.0:
            assert hamming[0] == key_length
        mean_edit.append((hamming[0], np.mean(edit)))
    distances = [h for h, _ in mean_edit]
    assert distances == sorted(distances, reverse=True) and distances[0] > distances[-1]
    edits = [e for _, e in mean_edit]
    assert edits == sorted(edits, reverse=True) and edits[0] > edits[2] > edits[-1] == 1


def test_multiquery_distractors_and_shared_draws(seed):
    example = make_niah_example(seed, 3000, 0.3, variant="multiquery", num_keys=6)
    _, needles, _, asked = parse(example)
    assert len(asked) == 4 and len({k for _, _, k, _ in needles}) == 6
    # Keys and values depend on (seed, index) only: a depth/length grid shares them.
    other = make_niah_example(seed, 4000, 0.9, variant="multiquery", num_keys=6)
    assert other.metadata["answer"] == example.metadata["answer"]
    assert other.metadata["queries"] == example.metadata["queries"]


def test_bad_arguments():
    cases = [
        (dict(depth=-0.1), r"depth=-0.1: expected a number in \[0, 1\]"),
        (dict(depth=1.5), r"depth=1.5: expected a number in \[0, 1\]"),
        (dict(depth=float("nan")), r"depth=nan"),
        (dict(length=200), r"length=200: expected an integer >= \d+ \(intro, 1 needle"),
        (
            dict(length=400, variant="multikey"),
            r"length=400: expected an integer >= \d+ \(intro, 4 n",
        ),
        (dict(distractor_similarity=1.2), r"distractor_similarity=1.2: expected a number in"),
        (dict(distractor_similarity=-0.5), r"distractor_similarity=-0.5"),
        (dict(variant="multi"), r"variant='multi': expected one of \('single', 'multikey'"),
        (dict(haystack="essay"), r"haystack='essay': expected one of \('noise', 'stdlib'\)"),
        (dict(num_keys=30, key_length=1), r"key_length=1: expected enough letters for num_keys=30"),
        (dict(num_queries=2), r"num_queries=2: expected an integer in \[1, 1\]"),
        (dict(num_values=0), r"num_values=0: expected an integer >= 1"),
        (
            dict(variant="multikey", num_keys=26, key_length=1, distractor_similarity=1.0),
            r"distractor_similarity=1.0: expected a value leaving enough keys 1 letter\(s\) away",
        ),
        (dict(value_digits=1, num_keys=10), r"value_digits=1: expected enough digits for 10"),
        (dict(seed=-1), r"seed=-1: expected an integer >= 0"),
    ]
    for kwargs, message in cases:
        arguments = dict(seed=0, length=2000, depth=0.5) | kwargs
        seed, length, depth = (arguments.pop(k) for k in ("seed", "length", "depth"))
        with pytest.raises(ValueError, match=message):
            make_niah_example(seed, length, depth, **arguments)
