"""The train and eval input pipelines, built from the data config.

Train (one process's view):

    MapDataset of documents (train split)          sources.document_source
      [process_sharding="source": documents process_index::process_count]
      .shuffle(seed) .repeat()                     a new order every epoch
        [length_distribution="upsample": upsampled_stream instead, long documents drawn more
         often by upsample_weights (lengths.py); each epoch's draws depend on (seed, epoch)]
      .map_with_index(LengthDistribution)          lengths.py; crops depend on (seed, stream index)
      .to_iter_dataset(ReadOptions)                read in `read_threads` threads, kept in order
      pack_documents(seq_len, document_masking)    packing.py (grain ConcatThenSplit)
      [data.task: IterDataset.mix with task rows]  task_source.py; a `task.fraction` share of rows
      .batch(rows per process, drop_remainder)
      [process_sharding="batch": the global batch, then this process's rows of it]
      [context_parallel=(n, layout): every row laid out over n devices, attention.ring]
      ThreadPrefetchIterDataset(prefetch_batches)  batches made in a background thread

`make_train_iterator` returns the grain DatasetIterator: `get_state()` (a small JSON-able dict, no
data) saved with a checkpoint and `set_state()` on a fresh iterator resume the stream exactly.

Sharding across processes (`process_sharding`):
  "source": each process reads only documents i with i % process_count == process_index, so the
      processes' documents are disjoint and together are the whole train split; each packs its
      own rows. The global batch depends on process_count, and so does each process's state.
  "batch":  every process builds the single-process global stream and keeps rows
      [process_index * b, (process_index + 1) * b) of each global batch (b = batch_size / count):
      global batches and iterator states are the same for any process count (costs count x the
      host-side reading and packing, which for byte corpora is small next to a train step).

Tasks (`data.task`, see `task_source`): with kind != "none" and fraction f > 0, rows are task
rows (one example of seq_len tokens each, loss on the answers) and LM rows interleaved by grain's
deterministic `IterDataset.mix` (a share f of task rows; its state holds both streams' positions,
so `get_state`/`set_state` resume the mixed stream exactly). f = 1: task rows only, no document is
read. Task examples are indexed like documents: process p of P makes examples p, p + P, ...
under "source"; under "batch" the global stream uses examples 0, 1, ...; kind="none" (or f = 0)
builds exactly the LM-only pipeline.

Eval (`make_eval_batches`): the validation split in path order, documents as they are (no length
distribution, no shuffle, no task rows), packed the same way, grouped into full global batches
(the last one padded with empty rows: weights 0); each process gets its rows of every batch, so
every process sees the same number of batches.
"""

import functools
from numbers import Integral

import grain
import numpy as np

from longctx_jax.attention.ring import check_layout, reorder_for_context_parallel
from longctx_jax.data.config import validate_data_config
from longctx_jax.data.lengths import (
    apply_length_distribution,
    length_distribution_from_config,
    upsample_weights,
    upsampled_stream,
)
from longctx_jax.data.packing import ROW_KEYS, pack_documents
from longctx_jax.data.sources import document_dataset, document_source
from longctx_jax.data.task_source import task_row_dataset


def _check_process(process_index, process_count, batch_size):
    if isinstance(process_count, bool) or not isinstance(process_count, Integral):
        raise ValueError(f"process_count={process_count!r}: expected a positive integer")
    if process_count < 1:
        raise ValueError(f"process_count={process_count!r}: expected a positive integer")
    if (
        isinstance(process_index, bool)
        or not isinstance(process_index, Integral)
        or not 0 <= process_index < process_count
    ):
        raise ValueError(
            f"process_index={process_index!r}: expected an integer in [0, {process_count})"
        )
    if batch_size % process_count:
        raise ValueError(
            f"data.batch_size={batch_size}: expected a multiple of process_count={process_count} "
            "(batch_size is global; each process gets batch_size / process_count rows)"
        )


def _read_options(config):
    threads = config.read_threads
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=8 * threads)


def _rows(batch, *, start, stop):
    return {key: np.ascontiguousarray(value[start:stop]) for key, value in batch.items()}


def _laid_out(batch, *, num_shards, layout):
    return {
        key: reorder_for_context_parallel(value, num_shards, layout=layout)
        for key, value in batch.items()
    }


def train_documents(config, *, process_index=0, process_count=1):
    """The endless MapDataset of this process's train documents, cropped: one shuffled pass of
    its documents per epoch, or the upsampled stream (see the module docstring)."""
    source = document_source(config, "train")
    by_source = config.process_sharding == "source"
    shard = slice(process_index, None, process_count) if by_source else slice(None)
    documents = grain.MapDataset.source(source)[shard]
    if config.length_distribution == "upsample":
        weights = upsample_weights(
            source.lengths()[shard],
            source.domains()[shard],
            min_len=config.upsample_min_len,
            ratio=config.upsample_ratio,
        )
        documents = upsampled_stream(documents, weights, config.seed)
    else:
        documents = documents.shuffle(seed=config.seed).repeat()
    return apply_length_distribution(documents, length_distribution_from_config(config))


def make_train_dataset(config, *, process_index=0, process_count=1, context_parallel=None):
    """The grain IterDataset of this process's train batches (see the module docstring).

    `context_parallel=(num_shards, layout)` permutes every per-token array of each batch once
    (`reorder_for_context_parallel`) for a sequence sharded over num_shards devices.
    """
    validate_data_config(config)
    _check_process(process_index, process_count, config.batch_size)
    if context_parallel is not None:
        check_layout(config.seq_len, *context_parallel)
    rows_per_process = config.batch_size // process_count
    by_source = config.process_sharding == "source"
    fraction = 0.0 if config.task.kind == "none" else float(config.task.fraction)
    if fraction < 1.0:
        documents = train_documents(
            config, process_index=process_index, process_count=process_count
        )
        rows = pack_documents(
            documents.to_iter_dataset(_read_options(config)),
            seq_len=config.seq_len,
            document_masking=config.document_masking,
        )
    if fraction > 0.0:
        start, step = (process_index, process_count) if by_source else (0, 1)
        task_rows = task_row_dataset(config, start=start, step=step).to_iter_dataset(
            _read_options(config)
        )
        if fraction == 1.0:
            rows = task_rows
        else:
            rows = grain.IterDataset.mix([task_rows, rows], [fraction, 1.0 - fraction])
    if by_source:
        batches = rows.batch(rows_per_process, drop_remainder=True)
    else:
        start = process_index * rows_per_process
        batches = rows.batch(config.batch_size, drop_remainder=True).map(
            functools.partial(_rows, start=start, stop=start + rows_per_process)
        )
    if context_parallel is not None:
        num_shards, layout = context_parallel
        batches = batches.map(functools.partial(_laid_out, num_shards=num_shards, layout=layout))
    if config.prefetch_batches:
        batches = grain.experimental.ThreadPrefetchIterDataset(
            batches, prefetch_buffer_size=config.prefetch_batches
        )
    return batches


def make_train_iterator(config, *, process_index=0, process_count=1, context_parallel=None):
    """This process's endless iterator of train batches: dicts of [batch_size / process_count,
    seq_len] numpy arrays `tokens`, `targets`, `segment_ids`, `positions` (int32) and `weights`
    (float32), laid out for `context_parallel=(num_shards, layout)` if given. Save `get_state()`
    with a checkpoint; `set_state(state)` on a fresh iterator resumes.
    """
    return iter(
        make_train_dataset(
            config,
            process_index=process_index,
            process_count=process_count,
            context_parallel=context_parallel,
        )
    )


def _empty_rows(num_rows, seq_len):
    return {
        key: np.zeros((num_rows, seq_len), np.float32 if key == "weights" else np.int32)
        for key in ROW_KEYS
    }


def make_eval_batches(
    config,
    seq_len=None,
    *,
    batch_size=None,
    num_batches=None,
    document_masking=None,
    process_index=0,
    process_count=1,
):
    """The validation split as a list of this process's eval batches (deterministic, no shuffle).

    `seq_len`, `batch_size` (global) and `document_masking` default to the config's; `num_batches`
    caps the number of batches (default: the whole split). Every batch is full size; rows past
    the end of the split are empty (segment_ids 0, weights 0).
    """
    validate_data_config(config)
    seq_len = config.seq_len if seq_len is None else seq_len
    batch_size = config.batch_size if batch_size is None else batch_size
    masking = config.document_masking if document_masking is None else document_masking
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, Integral) or num_batches < 1
    ):
        raise ValueError(f"num_batches={num_batches!r}: expected a positive integer or None")
    _check_process(process_index, process_count, batch_size)
    documents = document_dataset(config, "validation").to_iter_dataset(_read_options(config))
    rows = iter(pack_documents(documents, seq_len=seq_len, document_masking=masking))
    max_rows = None if num_batches is None else num_batches * batch_size
    collected = []
    for row in rows:
        collected.append(row)
        if max_rows is not None and len(collected) == max_rows:
            break
    rows_per_process = batch_size // process_count
    start = process_index * rows_per_process
    batches = []
    for first in range(0, len(collected), batch_size):
        chunk = collected[first : first + batch_size]
        batch = _empty_rows(batch_size, seq_len)
        for key in ROW_KEYS:
            batch[key][: len(chunk)] = np.stack([row[key] for row in chunk])
        batches.append(_rows(batch, start=start, stop=start + rows_per_process))
    return batches
