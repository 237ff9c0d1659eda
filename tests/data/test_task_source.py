"""Training on tasks (`data.task`): task rows, mixing with LM rows, resume, sharding, validation."""

import json
import re

import numpy as np
import pytest

from longctx_jax.attention.ring import reorder_for_context_parallel
from longctx_jax.config import base_config, validate_config
from longctx_jax.data import (
    ROW_KEYS,
    decode,
    default_data_config,
    make_eval_batches,
    make_mqar_example,
    make_train_iterator,
    validate_data_config,
)
from longctx_jax.data import pipeline as pipeline_module
from longctx_jax.data.task_source import (
    make_task_example,
    task_row,
    task_spec,
    train_task_seed,
)


def task_config(kind="mqar", fraction=1.0, *, seed=0, seq_len=64, batch_size=4, **data):
    config = default_data_config()
    config.seq_len, config.batch_size, config.seed = seq_len, batch_size, seed
    config.task.kind, config.task.fraction = kind, fraction
    for key, value in data.items():
        config[key] = value
    return config


def take(iterator, n):
    batches = [next(iterator) for _ in range(n)]
    iterator.close()
    return batches


def rows_of(batches):
    return [{k: b[k][i] for k in ROW_KEYS} for b in batches for i in range(len(b["tokens"]))]


def assert_same_batches(got, want, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys() == set(ROW_KEYS)
        for key in ROW_KEYS:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: batch {i}, {key}")


def expected_row(config, index):
    """Task row `index`, built here from the example (not with task_row)."""
    example = make_task_example(task_spec(config.task, config.seq_len), config.seed, index)
    n, seq_len = len(example.tokens), config.seq_len
    pad = seq_len - n
    answer_next = np.append(example.answer_mask[1:], False)  # position t predicts tokens[t + 1]
    return example, {
        "tokens": np.pad(example.tokens, (0, pad)),
        "targets": np.pad(np.append(example.target_tokens()[1:], 0), (0, pad)),
        "weights": np.pad(answer_next.astype(np.float32), (0, pad)),
        "segment_ids": np.pad(np.ones(n, np.int32), (0, pad)),
        "positions": np.pad(np.arange(n, dtype=np.int32), (0, pad)),
    }


def test_mqar_rows_follow_the_contract_and_supervise_the_values(seed):
    config = task_config(seed=seed, prefetch_batches=0)
    batches = take(make_train_iterator(config), 3)
    for batch in batches:
        for key in ROW_KEYS:
            assert batch[key].shape == (4, 64)
            assert batch[key].dtype == (np.float32 if key == "weights" else np.int32)
    for index, row in enumerate(rows_of(batches)):
        example, want = expected_row(config, index)
        for key in ROW_KEYS:
            np.testing.assert_array_equal(row[key], want[key], err_msg=f"row {index}, {key}")
        np.testing.assert_array_equal(row["weights"], example.loss_weights())
        # Independently of the generator: each of the P weighted positions (one query per pair)
        # holds a key and its target is the value that followed that key in the P pairs.
        weighted = np.flatnonzero(row["weights"])
        num_pairs = len(weighted)
        assert num_pairs == example.metadata["num_pairs"] and weighted.min() >= 2 * num_pairs
        pairs = row["tokens"][: 2 * num_pairs]
        pairs = dict(zip(pairs[0::2].tolist(), pairs[1::2].tolist(), strict=True))
        assert len(pairs) == num_pairs
        for t in weighted:
            key = int(row["tokens"][t])
            assert row["targets"][t] == pairs[key]


def test_passkey_rows_are_padded_and_weight_only_the_digits(seed):
    config = task_config("passkey", seed=seed, seq_len=256, prefetch_batches=0)
    config.task.passkey.depths = (0.0, 1.0)
    for index, row in enumerate(rows_of(take(make_train_iterator(config), 2))):
        _, want = expected_row(config, index)
        for key in ROW_KEYS:
            np.testing.assert_array_equal(row[key], want[key], err_msg=f"row {index}, {key}")
        n = int(row["segment_ids"].sum())
        assert np.all(row["segment_ids"][:n] == 1) and not row["segment_ids"][n:].any()
        assert not row["tokens"][n:].any() and not row["weights"][n:].any()
        text = decode(row["tokens"][:n])
        key = re.search(r"The pass key is (\d+)\. Remember it", text).group(1)
        assert text.endswith("The pass key is " + key)
        assert decode(row["targets"][row["weights"] > 0]) == key


@pytest.mark.parametrize("fraction", [0.25, 0.3])
def test_task_share_of_rows_is_the_fraction(fraction):
    # grain mixes by integer proportions (the smaller scaled to 100, the larger truncated), so the
    # task share is within 100 / (100 + 100)**2 = 0.0025 of `fraction`, and interleaving adds at
    # most one row of rounding: |count - N * fraction| <= 1 + 0.0025 * N.
    config = task_config(fraction=fraction, batch_size=8, prefetch_batches=0)
    rows = rows_of(take(make_train_iterator(config), 50))
    next_index = 0
    for row in rows:
        _, want = expected_row(config, next_index)
        if all(np.array_equal(row[k], want[k]) for k in ROW_KEYS):
            next_index += 1
        else:  # an LM row: the packed stream has no padding and ordinary text weights
            assert row["segment_ids"].min() > 0 and row["weights"].sum() > 32
    n = len(rows)
    assert abs(next_index - n * fraction) <= 1 + 0.0025 * n, (next_index, n)


@pytest.mark.parametrize(
    "sharding, process", [("source", (0, 1)), ("source", (1, 2)), ("batch", (1, 2))]
)
def test_mixed_stream_is_deterministic_and_resumes_through_json(seed, sharding, process):
    config = task_config(fraction=0.4, seed=seed, process_sharding=sharding)
    index, count = process

    def iterator():
        return make_train_iterator(config, process_index=index, process_count=count)

    first = take(iterator(), 7)
    assert_same_batches(take(iterator(), 7), first, "two iterators")
    it = iterator()
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    resumed = iterator()
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), first[3:], f"resumed ({sharding}, {process})")


def test_source_sharding_gives_each_process_its_own_examples():
    config = task_config(batch_size=4, prefetch_batches=0)
    single = rows_of(take(make_train_iterator(config), 4))
    for p in range(2):
        mine = rows_of(take(make_train_iterator(config, process_index=p, process_count=2), 4))
        assert_same_batches(mine, single[p::2], f"process {p} of 2")


def test_batch_sharding_rows_concatenate_to_the_single_process_batch():
    config = task_config(fraction=0.5, batch_size=4, process_sharding="batch")
    single = take(make_train_iterator(config), 4)
    halves = [
        take(make_train_iterator(config, process_index=p, process_count=2), 4) for p in (0, 1)
    ]
    joined = [
        {k: np.concatenate([a[k], b[k]]) for k in ROW_KEYS} for a, b in zip(*halves, strict=True)
    ]
    assert_same_batches(joined, single, "process_sharding='batch'")


def test_context_parallel_lays_out_task_rows():
    config = task_config(prefetch_batches=0)
    plain = take(make_train_iterator(config), 2)
    laid_out = take(make_train_iterator(config, context_parallel=(4, "zigzag")), 2)
    want = [
        {k: reorder_for_context_parallel(v, 4, layout="zigzag") for k, v in b.items()}
        for b in plain
    ]
    assert_same_batches(laid_out, want, "context_parallel")


def test_task_only_reads_no_document(monkeypatch):
    def no_documents(*args, **kwargs):
        raise AssertionError("fraction=1.0 read the LM corpus")

    monkeypatch.setattr(pipeline_module, "document_source", no_documents)
    take(make_train_iterator(task_config()), 2)
    with pytest.raises(AssertionError, match="read the LM corpus"):
        make_train_iterator(task_config(fraction=0.5))


def test_kind_none_and_fraction_zero_are_the_lm_pipeline():
    lm = default_data_config()
    lm.seq_len, lm.batch_size = 64, 4
    want = take(make_train_iterator(lm), 3)
    ignored = task_config("none", 0.7)
    ignored.task.mqar.num_pairs = (2,)
    assert_same_batches(take(make_train_iterator(ignored), 3), want, "kind='none'")
    assert_same_batches(take(make_train_iterator(task_config(fraction=0.0)), 3), want, "f=0")
    its = [make_train_iterator(ignored), make_train_iterator(lm)]
    assert its[0].get_state() == its[1].get_state()  # the same state structure
    for it in its:
        it.close()
    assert_same_batches(
        make_eval_batches(task_config(), num_batches=1),
        make_eval_batches(lm, num_batches=1),
        "eval",
    )


def test_mqar_num_pairs_and_niah_depth_vary_per_example(seed):
    config = task_config(seed=seed)
    config.task.mqar.num_pairs = (2, 4, 8)
    spec = task_spec(config.task, 64)
    counts = [make_task_example(spec, seed, i).metadata["num_pairs"] for i in range(40)]
    assert set(counts) == {2, 4, 8}
    config = task_config("niah", seed=seed, seq_len=512)
    spec = task_spec(config.task, 512)
    depths = [make_task_example(spec, seed, i).metadata["depth"] for i in range(8)]
    assert len(set(depths)) == 8 and all(0.0 <= d <= 1.0 for d in depths)


def test_train_examples_use_a_seed_no_evaluator_uses(seed):
    train_seed = train_task_seed(seed)
    assert 2**62 <= train_seed < 2**63 and train_task_seed(seed + 1) != train_seed
    config = task_config(seed=seed)
    config.task.mqar.num_pairs = (4,)
    example = make_task_example(task_spec(config.task, 64), seed, 0)
    evaluation = make_mqar_example(seed, 64, 4, index=0)
    assert not np.array_equal(example.tokens, evaluation.tokens)


def test_task_row_rejects_a_long_example():
    with pytest.raises(ValueError, match="at most seq_len=32"):
        task_row(make_mqar_example(0, 64, 4), 32)


@pytest.mark.parametrize(
    "kind, field, value, message",
    [
        ("mqar", "kind", "mqr", r"data\.task\.kind='mqr': expected one of"),
        ("mqar", "fraction", 1.5, r"data\.task\.fraction=1\.5: expected"),
        ("mqar", "mqar.num_pairs", (), r"data\.task\.mqar\.num_pairs=\(\): expected a non-empty"),
        ("mqar", "mqar.num_pairs", (4, 0), r"data\.task\.mqar\.num_pairs=\(4, 0\): expected"),
        ("mqar", "mqar.num_pairs", (4, 17), r"data\.seq_len=64: .*num_pairs=17.*length=64"),
        ("mqar", "mqar.num_queries", 5, r"data\.task\.mqar\.num_queries=5: .*num_pairs=4"),
        ("mqar", "mqar.noise", "loud", r"data\.task\.mqar\.noise='loud': expected one of"),
        ("mqar", "mqar.key_range", (0, 300), r"data\.task\.mqar\.key_range=\(0, 300\): expected"),
        ("mqar", "mqar.power_a", 0.0, r"data\.task\.mqar\.power_a=0\.0: expected"),
        ("niah", "niah.depths", (0.5, 2.0), r"data\.task\.niah\.depths=\(0\.5, 2\.0\): expected"),
        ("niah", "niah.variant", "many", r"data\.task\.niah\.variant='many': expected one of"),
        ("niah", "niah.value_digits", 0, r"data\.task\.niah\.value_digits=0: expected"),
        ("passkey", "passkey.digits", 0, r"data\.task\.passkey\.digits=0: expected"),
        ("passkey", "passkey.depths", (-0.1,), r"task\.passkey\.depths=\(-0\.1,\): expected a t"),
        ("passkey", "kind", "passkey", r"data\.seq_len=64: expected a length that fits"),
        ("variable_tracking", "variable_tracking.num_hops", -1, r"task\.variable_tracking\.num_h"),
    ],
)
def test_bad_task_fields_raise_naming_the_field(kind, field, value, message):
    config = task_config(kind, seq_len=512 if field != "kind" or kind == "mqar" else 64)
    if field.startswith("mqar."):
        config.task.mqar.num_pairs = (4,)
        config.seq_len = 64
    section, _, name = field.rpartition(".")
    (config.task[section] if section else config.task)[name] = value
    with pytest.raises(ValueError, match=message):
        validate_data_config(config)


def test_whole_config_checks_task_fields_by_name():
    config = base_config()
    config.data.task.kind = "mqar"
    config.data.seq_len = 64
    validate_config(config)
    config.data.task.mqar.num_pair = 8
    with pytest.raises(ValueError, match=r"data\.task\.mqar\.num_pair: unknown .*num_pairs"):
        validate_config(config)
