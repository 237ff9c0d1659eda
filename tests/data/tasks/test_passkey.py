"""Passkey retrieval: the key sits at the requested depth, the prompt has the requested length."""

import numpy as np
import pytest

from longctx_jax.data import decode, encode, make_passkey_example, passkey_dataset, score
from longctx_jax.data.tasks.passkey import FILLER_SENTENCES, INTRO, QUESTION

LONGEST_SENTENCE = max(len(s) for s in FILLER_SENTENCES)


def whole_sentences(text):
    """`text` parsed as whole filler sentences (fails on anything else)."""
    sentences = []
    while text:
        sentence = next(s for s in FILLER_SENTENCES if text.startswith(s))
        sentences.append(sentence)
        text = text[len(sentence) :]
    return sentences


@pytest.mark.parametrize("length", [300, 1000, 4096, 16384])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_key_at_depth_and_prompt_length(seed, length, depth):
    example = make_passkey_example(seed, length, depth)
    text = decode(example.prompt)
    key = example.passkey
    assert example.prompt.dtype == np.int32 and len(text) == len(example.prompt)
    assert length - LONGEST_SENTENCE < len(example.prompt) <= length
    assert len(key) == 5 and key.isdigit() and key[0] != "0"
    np.testing.assert_array_equal(example.answer, encode(key))
    assert text.startswith(INTRO) and text.endswith(QUESTION)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    assert text.count(key) == 2 and text.count(needle) == 1
    start = text.index(needle)
    assert start == example.needle_start
    # Everything else is whole filler sentences; the needle's depth is its share of the filler.
    before = text[len(INTRO) : start]
    after = text[start + len(needle) : len(text) - len(QUESTION)]
    for filler in (before, after):
        assert "".join(whole_sentences(filler)) == filler
    filler_bytes = len(before) + len(after)
    assert abs(len(before) - depth * filler_bytes) <= LONGEST_SENTENCE


def test_deterministic_and_seed_dependent(seed):
    a = make_passkey_example(seed, 2000, 0.3, index=4)
    b = make_passkey_example(seed, 2000, 0.3, index=4)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    assert a.passkey == b.passkey and a.needle_start == b.needle_start
    keys = {make_passkey_example(seed + i, 2000, 0.3).passkey for i in range(10)}
    keys |= {make_passkey_example(seed, 2000, 0.3, index=i).passkey for i in range(10)}
    assert len(keys) > 10
    dataset = passkey_dataset(seed=seed, length=2000, depth=0.3, num_examples=6)
    assert len(dataset) == 6 and dataset[4].passkey == a.passkey


def test_score_is_exact_match_of_leading_digits():
    assert score(encode("12345"), "12345")
    assert score(encode(" 12345. Remember"), encode("12345"))
    assert score(encode("12345 is the pass key"), "12345")
    for wrong in ("1234", "123456", "12346", "x12345", "", ". 12345"):
        assert not score(encode(wrong), "12345"), wrong
    assert not score(np.array([0xFF, 0xFE]), "12345")  # invalid UTF-8 is no crash, no match


def test_bad_arguments():
    with pytest.raises(ValueError, match="length=50: expected an integer >= "):
        make_passkey_example(0, 50, 0.5)
    with pytest.raises(ValueError, match=r"depth=1.5: expected a number in \[0, 1\]"):
        make_passkey_example(0, 1000, 1.5)
    with pytest.raises(ValueError, match="digits=0"):
        make_passkey_example(0, 1000, 0.5, digits=0)
