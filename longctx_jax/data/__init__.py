"""Data: byte corpora on grain, length distributions, packing, and retrieval tasks (`tasks`).

    config = default_data_config()          # a ConfigDict; validate_data_config(config)
    it = make_train_iterator(config)        # grain DatasetIterator of batches; get_state/set_state
    batch = next(it)                        # tokens, targets, weights, segment_ids, positions
    evals = make_eval_batches(config)       # the validation split, deterministic
    example = make_passkey_example(seed=0, length=1024, depth=0.5)
    example = make_niah_example(0, 1024, 0.5)   # also MQAR, variable tracking: a TaskExample
    config.task.kind, config.task.fraction = "mqar", 0.5   # train rows: half MQAR (task_source)

Batches are dicts of [batch, seq_len] numpy arrays (int32; weights float32), described in
`packing`. Tokens are bytes (`VOCAB_SIZE` = 256).
"""

from longctx_jax.data.config import (
    LENGTH_DISTRIBUTIONS,
    PROCESS_SHARDINGS,
    SOURCES,
    default_data_config,
    validate_data_config,
)
from longctx_jax.data.lengths import (
    LengthDistribution,
    sample_power_law_length,
    upsample_weights,
    upsampled_stream,
)
from longctx_jax.data.packing import ROW_KEYS, finalize_row, pack_documents
from longctx_jax.data.pipeline import (
    make_eval_batches,
    make_train_dataset,
    make_train_iterator,
    train_documents,
)
from longctx_jax.data.sources import (
    ByteFileSource,
    JoinedFileSource,
    document_dataset,
    document_source,
    folder_files,
    split_files,
    stdlib_files,
)
from longctx_jax.data.task_source import (
    TASK_KINDS,
    default_task_config,
    make_task_example,
    task_row,
    task_row_dataset,
    train_task_seed,
    validate_task_config,
)
from longctx_jax.data.tasks import (
    PasskeyExample,
    TaskExample,
    make_mqar_example,
    make_niah_example,
    make_passkey_example,
    make_variable_tracking_example,
    passkey_dataset,
    score,
)
from longctx_jax.data.vocab import VOCAB_SIZE, decode, encode

__all__ = [
    "LENGTH_DISTRIBUTIONS",
    "PROCESS_SHARDINGS",
    "ROW_KEYS",
    "SOURCES",
    "TASK_KINDS",
    "VOCAB_SIZE",
    "ByteFileSource",
    "JoinedFileSource",
    "LengthDistribution",
    "PasskeyExample",
    "TaskExample",
    "decode",
    "default_data_config",
    "default_task_config",
    "document_dataset",
    "document_source",
    "encode",
    "finalize_row",
    "folder_files",
    "make_eval_batches",
    "make_mqar_example",
    "make_niah_example",
    "make_passkey_example",
    "make_task_example",
    "make_train_dataset",
    "make_train_iterator",
    "make_variable_tracking_example",
    "pack_documents",
    "passkey_dataset",
    "sample_power_law_length",
    "score",
    "split_files",
    "stdlib_files",
    "task_row",
    "task_row_dataset",
    "train_documents",
    "train_task_seed",
    "upsample_weights",
    "upsampled_stream",
    "validate_data_config",
    "validate_task_config",
]
