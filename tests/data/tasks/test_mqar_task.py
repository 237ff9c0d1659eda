"""MQAR: zoology's layout, every query answered by the value that followed its key, a label
only: no value is shown after a query."""

import numpy as np
import pytest

from longctx_jax.data.tasks import make_mqar_example


def check_example(example, length, num_pairs, num_queries, key_range, value_range, noise):
    tokens, mask = example.tokens, example.answer_mask
    assert tokens.dtype == np.int32 and len(tokens) == length == len(mask)
    context = 2 * num_pairs
    keys, values = tokens[0:context:2], tokens[1:context:2]
    assert len(set(keys.tolist())) == num_pairs and len(set(values.tolist())) == num_pairs
    assert ((keys >= key_range[0]) & (keys < key_range[1])).all()
    assert ((values >= value_range[0]) & (values < value_range[1])).all()
    assert 0 <= tokens.min() and tokens.max() < 256
    answers = np.flatnonzero(mask)
    assert len(answers) == num_queries and (answers > context).all()
    asked = tokens[answers - 1]
    assert len(set(asked.tolist())) == num_queries  # each key asked at most once
    for position in answers:
        query = position - 1
        assert (query - context) % 2 == 0  # queries sit at the start of a two-token slot
        (pair,) = np.flatnonzero(keys == tokens[query])  # the key appeared exactly once, earlier
        assert 2 * pair < query and example.targets[position] == values[pair]
    np.testing.assert_array_equal(example.answer_tokens, example.targets[answers])
    unlabelled = np.ones(length, bool)
    unlabelled[answers] = False
    np.testing.assert_array_equal(example.targets[unlabelled], tokens[unlabelled])
    # no value appears in the query region except as noise (with pad noise: never)
    if noise == "pad":
        rest = np.ones(length, bool)
        rest[:context] = False
        rest[answers - 1] = False
        assert (tokens[rest] == 0).all()


@pytest.mark.parametrize(
    "length, num_pairs, num_queries",
    [(64, 4, None), (128, 8, None), (256, 16, None), (65, 4, 2), (40, 10, 10), (300, 30, 7)],
)
@pytest.mark.parametrize("noise", ["random", "pad"])
def test_layout_and_answers(seed, length, num_pairs, num_queries, noise):
    for index in range(5):
        example = make_mqar_example(
            seed, length, num_pairs, index=index, num_queries=num_queries, noise=noise
        )
        queries = num_pairs if num_queries is None else num_queries
        check_example(example, length, num_pairs, queries, (1, 128), (128, 256), noise)


def test_custom_ranges_and_vocab(seed):
    example = make_mqar_example(seed, 64, 6, key_range=(10, 16), value_range=(100, 110))
    check_example(example, 64, 6, 6, (10, 16), (100, 110), "random")
    assert set(example.tokens[:12:2].tolist()) == set(range(10, 16))  # all 6 keys used
    example = make_mqar_example(seed, 64, 4, vocab_size=16, noise="pad")
    check_example(example, 64, 4, 4, (1, 8), (8, 16), "pad")


def test_power_law_puts_queries_near_the_pairs(seed):
    """zoology: p(slot g) ∝ (g + 1)^(a - 1); a = 1 is uniform over the slots."""

    def mean_slot(power_a):
        slots = []
        for index in range(150):
            example = make_mqar_example(seed, 256, 4, index=index, power_a=power_a)
            slots += ((example.metadata["query_positions"] - 8) // 2).tolist()
        return np.mean(slots)

    uniform = mean_slot(1.0)
    assert abs(uniform - (124 - 1) / 2) < 6  # 124 slots; sd of the mean over 600 draws ~ 1.5
    assert mean_slot(0.01) < 0.6 * uniform


def test_bad_arguments():
    cases = [
        (dict(length=15, num_pairs=4), r"length=15: expected an integer >= 16"),
        (dict(length=64, num_pairs=0), r"num_pairs=0: expected an integer >= 1"),
        (dict(length=64, num_pairs=4, num_queries=5), r"num_queries=5: expected an integer in"),
        (dict(length=64, num_pairs=4, vocab_size=6), r"vocab_size=6 \(so key_range=\[1, 3\)\)"),
        (dict(length=64, num_pairs=4, key_range=(1, 3)), r"key_range=\(1, 3\): expected at least"),
        (
            dict(length=64, num_pairs=4, key_range=(1, 150)),
            r"key_range=\(1, 150\), value_range=\(128, 256\): expected disjoint",
        ),
        (dict(length=64, num_pairs=4, value_range=(200, 300)), r"value_range=\(200, 300\)"),
        (dict(length=64, num_pairs=4, power_a=0.0), r"power_a=0.0: expected a finite number > 0"),
        (dict(length=64, num_pairs=4, noise="zeros"), r"noise='zeros': expected one of"),
        (
            dict(length=64, num_pairs=4, noise="pad", key_range=(0, 10)),
            r"key_range=\(0, 10\): contains the pad token 0",
        ),
        (dict(length=64, num_pairs=4, index=-1), r"index=-1: expected an integer >= 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            make_mqar_example(0, **kwargs)
