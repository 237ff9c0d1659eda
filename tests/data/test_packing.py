"""Packing against a brute-force reference on random documents, with document masking on and off."""

import json

import grain
import numpy as np
import pytest

from longctx_jax.data import ROW_KEYS, pack_documents


def random_documents(rng, seq_len, count):
    """Documents of assorted lengths: empty, 1 token, exactly seq_len, several rows long."""
    lengths = rng.choice([0, 1, 2, seq_len - 1, seq_len, seq_len + 1, 3 * seq_len + 2], count)
    lengths = np.where(rng.random(count) < 0.5, rng.integers(1, 2 * seq_len, count), lengths)
    return [rng.integers(0, 256, n).astype(np.uint8) for n in lengths]


def as_iter_dataset(documents):
    read_options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    return grain.MapDataset.source(documents).to_iter_dataset(read_options)


def pack(documents, seq_len, document_masking):
    dataset = as_iter_dataset(documents)
    return list(pack_documents(dataset, seq_len=seq_len, document_masking=document_masking))


def reference_rows(documents, seq_len, document_masking):
    """Brute force: concatenate (document, offset) pairs, cut every seq_len, label each token."""
    stream = [(d, i, int(t)) for d, doc in enumerate(documents) for i, t in enumerate(doc)]
    rows = []
    for start in range(0, len(stream), seq_len):
        cells = stream[start : start + seq_len]
        cells += [None] * (seq_len - len(cells))
        row = {
            key: np.zeros(seq_len, np.float32 if key == "weights" else np.int32) for key in ROW_KEYS
        }
        segment, piece_start = 0, 0
        for j, cell in enumerate(cells):
            if cell is None:
                continue
            if j == 0 or cells[j - 1] is None or cells[j - 1][0] != cell[0]:
                segment, piece_start = segment + 1, j
            following = cells[j + 1] if j + 1 < seq_len else None
            same_document = following is not None and following[0] == cell[0]
            row["tokens"][j] = cell[2]
            row["segment_ids"][j] = segment if document_masking else 1
            row["positions"][j] = j - piece_start if document_masking else j
            row["targets"][j] = following[2] if same_document else 0
            row["weights"][j] = 1.0 if same_document else 0.0
        rows.append(row)
    return rows


@pytest.mark.parametrize("document_masking", [True, False])
def test_packing_matches_brute_force(seed, document_masking):
    rng = np.random.default_rng(seed)
    for _ in range(4):
        seq_len = int(rng.integers(2, 40))
        documents = random_documents(rng, seq_len, int(rng.integers(1, 25)))
        if not any(len(d) for d in documents):
            documents.append(np.ones(3, np.uint8))
        rows = pack(documents, seq_len, document_masking)
        expected = reference_rows(documents, seq_len, document_masking)
        assert len(rows) == len(expected)
        for row, want in zip(rows, expected, strict=True):
            for key in ROW_KEYS:
                assert row[key].dtype == want[key].dtype and row[key].shape == (seq_len,)
                np.testing.assert_array_equal(row[key], want[key], err_msg=f"{key}, {seq_len=}")


def test_documents_survive_in_order_and_targets_stay_inside_documents(seed):
    """Properties needing no reference: tokens in order, targets are each document's next token."""
    rng = np.random.default_rng(seed)
    seq_len = 16
    documents = random_documents(rng, seq_len, 30)
    documents.append(np.ones(5, np.uint8))
    rows = pack(documents, seq_len, True)
    stacked = {key: np.stack([r[key] for r in rows]) for key in ROW_KEYS}
    real = stacked["segment_ids"] > 0
    np.testing.assert_array_equal(stacked["tokens"][real], np.concatenate(documents))
    assert np.all(stacked["tokens"][~real] == 0) and np.all(stacked["positions"][~real] == 0)
    # Padding only after the last document, in the last row.
    assert real[:-1].all() and not np.any(np.diff(real[-1].astype(int)) > 0)
    # Every weighted target is the document's own next token: rebuild (document, offset) labels.
    labels = np.concatenate([np.full(len(d), i) for i, d in enumerate(documents)])
    document_of = np.full(real.shape, -1)
    document_of[real] = labels
    flat_tokens = np.concatenate(documents)
    offset = np.zeros(real.shape, int)
    offset[real] = np.arange(len(flat_tokens))
    weighted = stacked["weights"] > 0
    np.testing.assert_array_equal(stacked["targets"][weighted], flat_tokens[offset[weighted] + 1])
    assert np.all(labels[offset[weighted] + 1] == document_of[weighted])
    assert np.all(stacked["targets"][~weighted] == 0)
    # Segment ids are 1..k in each row, one per piece; positions count up within a piece.
    for row in rows:
        ids = row["segment_ids"][row["segment_ids"] > 0]
        assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}
        starts = np.flatnonzero(np.diff(row["segment_ids"], prepend=-1) != 0)
        for a, b in zip(starts, list(starts[1:]) + [seq_len], strict=True):
            if row["segment_ids"][a]:
                np.testing.assert_array_equal(row["positions"][a:b], np.arange(b - a))


def test_without_document_masking_only_segments_and_positions_change(seed):
    rng = np.random.default_rng(seed)
    documents = random_documents(rng, 12, 20) + [np.ones(7, np.uint8)]
    masked = pack(documents, 12, True)
    unmasked = pack(documents, 12, False)
    for a, b in zip(masked, unmasked, strict=True):
        for key in ("tokens", "targets", "weights"):
            np.testing.assert_array_equal(a[key], b[key])
        real = a["segment_ids"] > 0
        np.testing.assert_array_equal(b["segment_ids"], real.astype(np.int32))
        np.testing.assert_array_equal(b["positions"], np.where(real, np.arange(12), 0))


def test_state_resumes_through_json(seed):
    """ConcatThenSplit's state after a JSON round trip (as orbax saves it) resumes exactly."""
    rng = np.random.default_rng(seed)
    documents = [rng.integers(0, 256, n).astype(np.uint8) for n in rng.integers(1, 50, 40)]
    rows = pack(documents, 8, True)
    dataset = pack_documents(as_iter_dataset(documents), seq_len=8, document_masking=True)
    for k in range(len(rows)):
        iterator = iter(dataset)
        for _ in range(k):
            next(iterator)
        fresh = iter(dataset)
        fresh.set_state(json.loads(json.dumps(iterator.get_state())))
        for want in rows[k : k + 3]:
            got = next(fresh)
            for key in ROW_KEYS:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{key} after {k} rows")


def test_bad_arguments():
    dataset = as_iter_dataset([np.ones(3, np.uint8)])
    with pytest.raises(ValueError, match="seq_len=1: expected an integer >= 2"):
        pack_documents(dataset, seq_len=1)
    with pytest.raises(ValueError, match="document_masking='yes'"):
        pack_documents(dataset, seq_len=4, document_masking="yes")
