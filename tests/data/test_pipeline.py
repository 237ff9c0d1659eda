"""Train and eval pipelines: batch contract, exact resume, process sharding, eval determinism."""

import json

import grain
import numpy as np
import pytest
from etils import epath

from longctx_jax.attention.ring import reorder_for_context_parallel
from longctx_jax.data import (
    ROW_KEYS,
    decode,
    default_data_config,
    document_source,
    make_eval_batches,
    make_train_iterator,
)


def small_config(**overrides):
    config = default_data_config()
    config.seq_len, config.batch_size = 128, 4
    for key, value in overrides.items():
        config[key] = value
    return config


def take(iterator, n):
    batches = [next(iterator) for _ in range(n)]
    iterator.close()
    return batches


def assert_same_batches(got, want, what):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.keys() == b.keys() == set(ROW_KEYS)
        for key in ROW_KEYS:
            assert a[key].dtype == b[key].dtype
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{what}: batch {i}, {key}")


def test_train_batches_follow_the_contract():
    config = small_config(prefetch_batches=0)
    for batch in take(make_train_iterator(config), 5):
        for key in ROW_KEYS:
            assert batch[key].shape == (4, 128)
            assert batch[key].dtype == (np.float32 if key == "weights" else np.int32)
        # An endless stream never pads; targets are the next token wherever weighted.
        assert np.all(batch["segment_ids"] > 0) and batch["tokens"].max() < 256
        weighted = batch["weights"][:, :-1] > 0
        np.testing.assert_array_equal(
            batch["targets"][:, :-1][weighted], batch["tokens"][:, 1:][weighted]
        )
        assert set(np.unique(batch["weights"])) <= {0.0, 1.0}


@pytest.mark.parametrize("layout", ["zigzag", "striped"])
def test_context_parallel_lays_out_every_key(layout):
    config = small_config(prefetch_batches=0)
    plain = take(make_train_iterator(config), 2)
    laid_out = take(make_train_iterator(config, context_parallel=(4, layout)), 2)
    want = [
        {k: reorder_for_context_parallel(v, 4, layout=layout) for k, v in b.items()} for b in plain
    ]
    assert_same_batches(laid_out, want, f"context_parallel=(4, {layout!r})")
    assert not np.array_equal(laid_out[0]["positions"], plain[0]["positions"])


@pytest.mark.parametrize(
    "overrides, process",
    [
        ({}, (0, 1)),
        ({"length_distribution": "power_law", "min_doc_len": 16, "max_doc_len": 600}, (0, 1)),
        ({"document_masking": False, "prefetch_batches": 0, "read_threads": 0}, (0, 1)),
        ({"seq_len": 1024, "length_distribution": "truncated", "max_doc_len": 300}, (0, 1)),
        ({"length_distribution": "power_law"}, (1, 2)),
        ({"process_sharding": "batch"}, (1, 2)),
        ({"length_distribution": "uniform", "min_doc_len": 16, "max_doc_len": 600}, (0, 1)),
        ({"length_distribution": "mixture"}, (1, 2)),
        ({"length_distribution": "upsample", "join_packages": True}, (0, 1)),
        ({"length_distribution": "upsample", "upsample_min_len": 20_000}, (1, 2)),
        ({"length_distribution": "upsample", "process_sharding": "batch"}, (1, 2)),
    ],
)
def test_resume_is_bitwise(seed, overrides, process):
    """N batches in one go == k batches, state through JSON, a fresh iterator, N - k more."""
    config = small_config(seed=seed % 2**32, **overrides)
    index, count = process
    n = 12
    expected = take(make_train_iterator(config, process_index=index, process_count=count), n)
    for k in (0, int(np.random.default_rng(seed).integers(1, n))):
        first = make_train_iterator(config, process_index=index, process_count=count)
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.get_state()))
        first.close()
        resumed = make_train_iterator(config, process_index=index, process_count=count)
        resumed.set_state(state)
        assert_same_batches(take(resumed, n - k), expected[k:], f"resumed after {k}")


def test_same_seed_same_stream_other_seed_other_stream(seed):
    config = small_config(seed=seed % 2**32)
    a, b = take(make_train_iterator(config), 3), take(make_train_iterator(config), 3)
    assert_same_batches(a, b, "same seed")
    config.seed = (seed + 1) % 2**32
    c = take(make_train_iterator(config), 3)
    assert not np.array_equal(a[0]["tokens"], c[0]["tokens"])


def numbered_corpus(tmp_path, count, seq_len):
    """`count` files of exactly seq_len bytes, each starting with its own number."""
    for i in range(count):
        (tmp_path / f"{i:03d}.txt").write_bytes(f"{i:03d}".encode().ljust(seq_len, b"."))
    config = small_config(source="folder", folder_glob=str(tmp_path / "*.txt"))
    config.seq_len, config.validation_fraction = seq_len, 0.2
    return config


def row_ids(batches):
    return [decode(row[:3]) for batch in batches for row in batch["tokens"]]


def test_epochs_reshuffle_and_cover_the_train_split(tmp_path):
    config = numbered_corpus(tmp_path, 40, 16)  # one document per row, exactly
    train = sorted(p[:3] for p in document_source(config, "train").relpaths)
    n_batches = 2 * len(train) // config.batch_size + 1
    ids = row_ids(take(make_train_iterator(config), n_batches))
    first, second = ids[: len(train)], ids[len(train) : 2 * len(train)]
    assert sorted(first) == train and sorted(second) == train and first != second


def test_source_sharding_splits_documents_disjointly(tmp_path):
    config = numbered_corpus(tmp_path, 41, 16)
    train = sorted(p[:3] for p in document_source(config, "train").relpaths)
    seen = []
    for index in range(2):
        iterator = make_train_iterator(config, process_index=index, process_count=2)
        shard = train[index::2]
        ids = row_ids(take(iterator, len(shard) // 2 + 1))[: len(shard)]
        assert sorted(ids) == shard  # one epoch of this process == its shard, each once
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(train)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batch_sharding_rows_concatenate_to_the_single_process_batch(prefetch):
    config = small_config(process_sharding="batch", prefetch_batches=prefetch)
    single = take(make_train_iterator(config), 4)
    halves = [
        take(make_train_iterator(config, process_index=i, process_count=2), 4) for i in (0, 1)
    ]
    for step in range(4):
        for key in ROW_KEYS:
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][key], halves[1][step][key]]), single[step][key]
            )


def test_eval_batches_cover_the_validation_split_deterministically():
    config = small_config()
    batches = make_eval_batches(config, 512, batch_size=8)
    again = make_eval_batches(config, 512, batch_size=8)
    assert_same_batches(batches, again, "eval twice")
    for batch in batches:
        assert all(batch[key].shape == (8, 512) for key in ROW_KEYS)
    tokens = np.concatenate([b["tokens"][b["segment_ids"] > 0] for b in batches])
    source = document_source(config, "validation")
    np.testing.assert_array_equal(tokens, np.concatenate(list(source)))
    last = batches[-1]
    assert last["weights"].sum() < last["weights"].size  # padded tail carries no loss
    assert np.all(last["weights"][last["segment_ids"] == 0] == 0)
    halves = [
        make_eval_batches(config, 512, batch_size=8, process_index=i, process_count=2)
        for i in (0, 1)
    ]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    for a, b, whole in zip(halves[0], halves[1], batches, strict=True):
        np.testing.assert_array_equal(np.concatenate([a["tokens"], b["tokens"]]), whole["tokens"])
    capped = make_eval_batches(config, 256, num_batches=3, document_masking=False)
    assert len(capped) == 3 and capped[0]["tokens"].shape == (4, 256)
    assert np.all(capped[0]["segment_ids"] == 1)


def test_state_is_the_same_whatever_the_threads_and_prefetch():
    """A checkpoint taken with one threading set-up resumes under another."""
    states = []
    for threads, prefetch in ((0, 0), (2, 0), (2, 3)):
        config = small_config(read_threads=threads, prefetch_batches=prefetch)
        iterator = make_train_iterator(config)
        for _ in range(7):
            next(iterator)
        states.append(iterator.get_state())
        iterator.close()
    assert states[0] == states[1] == states[2]


def test_resume_through_grains_orbax_checkpoint_handler(tmp_path):
    """The path a trainer takes: grain.checkpoint.CheckpointHandler (orbax) save, then restore."""
    config = small_config()
    expected = take(make_train_iterator(config), 9)
    iterator = make_train_iterator(config)
    for _ in range(4):
        next(iterator)
    grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=iterator)
    iterator.close()
    restored = grain.checkpoint.CheckpointHandler().restore(
        epath.Path(tmp_path), item=make_train_iterator(config)
    )
    assert_same_batches(take(restored, 5), expected[4:], "restored by CheckpointHandler")
