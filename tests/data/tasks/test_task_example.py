"""The common example form: every generator is deterministic, and its mask marks its answers."""

import pickle

import numpy as np
import pytest

from longctx_jax.data import decode
from longctx_jax.data.tasks import (
    TaskExample,
    make_mqar_example,
    make_niah_example,
    make_passkey_example,
    make_variable_tracking_example,
)

GENERATORS = {
    "mqar": lambda seed, index: make_mqar_example(seed, 128, 8, index=index),
    "niah": lambda seed, index: make_niah_example(seed, 1200, 0.4, index=index, variant="multikey"),
    "niah_stdlib": lambda seed, index: make_niah_example(
        seed, 1200, 0.4, index=index, variant="multivalue", haystack="stdlib"
    ),
    "passkey": lambda seed, index: make_passkey_example(
        seed, 400, 0.4, index=index
    ).as_task_example(),
    "variable_tracking": lambda seed, index: make_variable_tracking_example(
        seed, 800, index=index, num_chains=2
    ),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_by_seed_and_index(seed, name):
    make = GENERATORS[name]
    a, b = make(seed, 3), make(seed, 3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.answer_mask, b.answer_mask)
    assert a.answer_spans == b.answer_spans
    for other in (make(seed, 4), make(seed + 1, 3)):
        assert not np.array_equal(a.tokens, other.tokens)
    c = pickle.loads(pickle.dumps(a))  # crosses process boundaries (grain workers)
    np.testing.assert_array_equal(a.tokens, c.tokens)
    assert a.answer_spans == c.answer_spans and a.metadata.keys() == c.metadata.keys()


@pytest.mark.parametrize("name", GENERATORS)
def test_mask_marks_exactly_the_answers(seed, name):
    example = GENERATORS[name](seed, 0)
    assert isinstance(example, TaskExample) and example.task == name.removesuffix("_stdlib")
    tokens, mask = example.tokens, example.answer_mask
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_ and mask.shape == tokens.shape
    spans = np.zeros_like(mask)
    for start, end in example.answer_spans:
        spans[start:end] = True
    np.testing.assert_array_equal(mask, spans)
    assert not mask[0]
    np.testing.assert_array_equal(example.answer_tokens, example.target_tokens()[mask])
    # Position t predicts target_tokens()[t + 1]: the loss weights are the mask shifted left by one.
    weights = example.loss_weights()
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(weights) + 1, np.flatnonzero(mask))
    if name == "mqar":  # the values are labels; the input after a query is noise
        np.testing.assert_array_equal(
            example.answer_tokens, example.metadata["values"][example.metadata["queried_pairs"]]
        )
    else:  # prompt + answer: the answer is the last tokens, and decodes to the answer text
        assert example.answer_spans == ((example.prompt_len, len(tokens)),)
        assert decode(tokens[mask]) == example.metadata["answer"]
        assert not mask[: example.prompt_len].any()


def test_passkey_common_form_is_prompt_plus_answer(seed):
    passkey = make_passkey_example(seed, 500, 0.3, index=2)
    example = passkey.as_task_example()
    np.testing.assert_array_equal(example.tokens, np.concatenate([passkey.prompt, passkey.answer]))
    assert example.prompt_len == len(passkey.prompt)
    assert decode(example.answer_tokens) == passkey.passkey == example.metadata["answer"]
    assert example.metadata["needle_start"] == passkey.needle_start


def test_bad_task_examples():
    tokens = np.arange(6, dtype=np.int32)
    mask = np.array([0, 0, 0, 1, 1, 0], bool)
    TaskExample("t", tokens, mask, ((3, 5),))
    with pytest.raises(ValueError, match="answer_mask: expected exactly the union"):
        TaskExample("t", tokens, mask, ((3, 4),))
    with pytest.raises(ValueError, match="answer_spans="):
        TaskExample("t", tokens, np.eye(6, dtype=bool)[0], ((0, 1),))  # nothing predicts token 0
    with pytest.raises(ValueError, match="tokens: int64"):
        TaskExample("t", tokens.astype(np.int64), mask, ((3, 5),))
    with pytest.raises(ValueError, match="answer_mask: int"):
        TaskExample("t", tokens, mask.astype(int), ((3, 5),))
    labelled = TaskExample(
        "t", tokens, mask, ((3, 5),), targets=np.array([0, 1, 2, 9, 8, 5], np.int32)
    )
    np.testing.assert_array_equal(labelled.answer_tokens, [9, 8])
    np.testing.assert_array_equal(labelled.tokens, tokens)  # the input keeps its own tokens
    with pytest.raises(ValueError, match="targets: expected to equal tokens outside"):
        TaskExample("t", tokens, mask, ((3, 5),), targets=np.array([7, 1, 2, 9, 8, 5], np.int32))
    with pytest.raises(ValueError, match="targets: int64"):
        TaskExample("t", tokens, mask, ((3, 5),), targets=tokens.astype(np.int64))
