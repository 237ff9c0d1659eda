"""The data config: `default_data_config()` and `validate_data_config()`.

Fields (defaults in `default_data_config`):
  source               "stdlib": the Python standard library's own .py files;
                       "folder": the files matching `folder_glob`.
  folder_glob          glob pattern (`**` recurses) of text files, used when source == "folder".
  stdlib_include_tests include the stdlib's test folders (test/, tests/, idle_test/); off by default
                       so the corpus is library code and the same on distributions that strip them.
  join_packages        True: the files sharing a parent folder (a stdlib package's modules) are one
                       document, in path order, one newline between files; top-level files stay
                       one document each: long documents (packages of up to ~1 MB) in the stdlib.
  validation_fraction  fraction of documents (by a stable hash of the relative path: the file's, or
                       the joined folder's) held out.
  seq_len              tokens per packed row.
  batch_size           global rows per step; each of the processes gets batch_size / process_count.
  seed                 shuffle order and length-distribution crops.
  length_distribution  "as_is" | "truncated" (cap at max_doc_len) | "power_law" (crop to a length
                       drawn from p(L) ~ L^-power_law_alpha on [min_doc_len, max_doc_len]) |
                       "uniform" (power_law with alpha 0) | "mixture" (crop to a length drawn from
                       `mixture`) | "upsample" (documents whole, long ones drawn more often).
  min_doc_len, max_doc_len, power_law_alpha   parameters of the above.
  mixture              "mixture"'s components (ProLong's long/short mix): `fractions` (each in
                       [0, 1], summing to 1) and `lengths`, one (lo, hi) range per component;
                       each document draws a component, then a length uniform in its range.
  upsample_min_len, upsample_ratio   "upsample" (Fu et al. 2024, per-source length upsampling):
                       documents of >= upsample_min_len tokens are drawn upsample_ratio times as
                       often as shorter ones of the same source (first folder of the path), each
                       source keeping its share of tokens.
  document_masking     True: one segment per document in a row, positions restart per document;
                       False: one segment per row, positions 0..seq_len-1 (the no-masking baseline).
  process_sharding     "source": each process reads its own documents (doc i goes to process
                       i % count); "batch": each process builds the global stream and keeps its
                       rows of every global batch, so batches and iterator states do not depend on
                       the process count.
  read_threads         threads reading and cropping documents (grain ReadOptions.num_threads;
                       0: in the thread making batches, the fastest for the page-cached stdlib).
  prefetch_batches     batches prepared ahead in a background thread (0: none).
  task                 training on a retrieval task: `task.kind` ("none": LM text only, the
                       default), `task.fraction` (share of train rows that are task rows) and one
                       section of generator keywords per kind (`task.mqar.num_pairs`, ...); see
                       `longctx_jax.data.task_source`. Eval batches stay LM text.
"""

import ml_collections

from longctx_jax import checks
from longctx_jax.data.task_source import default_task_config, validate_task_config

SOURCES = ("stdlib", "folder")
LENGTH_DISTRIBUTIONS = ("as_is", "truncated", "power_law", "uniform", "mixture", "upsample")
PROCESS_SHARDINGS = ("source", "batch")


def default_data_config():
    """The default data config: stdlib corpus, 512-token rows, 8 rows per step, documents as-is."""
    return ml_collections.ConfigDict(
        {
            "source": "stdlib",
            "folder_glob": "",
            "stdlib_include_tests": False,
            "join_packages": False,
            "validation_fraction": 0.05,
            "seq_len": 512,
            "batch_size": 8,
            "seed": 0,
            "length_distribution": "as_is",
            "min_doc_len": 64,
            "max_doc_len": 4096,
            "power_law_alpha": 1.0,
            # ProLong's 64K recipe: 40% short documents, 60% long.
            "mixture": {"fractions": (0.4, 0.6), "lengths": ((64, 512), (2048, 65536))},
            "upsample_min_len": 4096,
            "upsample_ratio": 4.0,
            "document_masking": True,
            "process_sharding": "source",
            "read_threads": 0,
            "prefetch_batches": 2,
            "task": default_task_config(),
        }
    )


def validate_data_config(config):
    """Raises ValueError naming the field, its value and what was expected; returns the config."""
    missing = sorted(set(default_data_config()) - set(config))
    if missing:
        raise ValueError(f"data config: missing fields {missing}; start from default_data_config()")
    checks.check_choice("data", "source", config.source, SOURCES)
    if config.source == "folder" and (
        not isinstance(config.folder_glob, str) or not config.folder_glob
    ):
        checks.fail(
            "data",
            "folder_glob",
            config.folder_glob,
            'a non-empty glob pattern when source="folder"',
        )
    for name in ("stdlib_include_tests", "join_packages", "document_masking"):
        checks.check_bool("data", name, config[name])
    checks.check_real(
        "data",
        "validation_fraction",
        config.validation_fraction,
        minimum=0,
        maximum=1,
        exclusive_maximum=True,
        finite=False,
    )
    checks.check_int("data", "seq_len", config.seq_len, minimum=2)
    checks.check_int("data", "batch_size", config.batch_size, minimum=1)
    checks.check_int(
        "data", "seed", config.seed, minimum=0, below=2**32, expected="an integer in [0, 2**32)"
    )
    checks.check_choice(
        "data", "length_distribution", config.length_distribution, LENGTH_DISTRIBUTIONS
    )
    checks.check_int("data", "min_doc_len", config.min_doc_len, minimum=1)
    checks.check_int("data", "max_doc_len", config.max_doc_len, minimum=1)
    if config.max_doc_len < config.min_doc_len:
        checks.fail(
            "data", "max_doc_len", config.max_doc_len, f">= min_doc_len={config.min_doc_len}"
        )
    checks.check_real("data", "power_law_alpha", config.power_law_alpha, minimum=0)
    check_mixture(config.mixture.fractions, config.mixture.lengths)
    checks.check_int("data", "upsample_min_len", config.upsample_min_len, minimum=1)
    checks.check_real(
        "data", "upsample_ratio", config.upsample_ratio, minimum=0, exclusive_minimum=True
    )
    checks.check_choice("data", "process_sharding", config.process_sharding, PROCESS_SHARDINGS)
    checks.check_int("data", "read_threads", config.read_threads, minimum=0)
    checks.check_int("data", "prefetch_batches", config.prefetch_batches, minimum=0)
    validate_task_config(config.task, config.seq_len)
    return config


def check_mixture(fractions, lengths, section="data", prefix="mixture."):
    """Raises ValueError naming `section.{prefix}fractions` or `...lengths` unless they describe a
    mixture: fractions in [0, 1] summing to 1 (within 1e-6), one (lo, hi) range, 1 <= lo <= hi,
    per fraction. Returns (fractions, lengths) as tuples of floats and of int pairs."""
    if (
        not isinstance(fractions, tuple | list)
        or not all(checks.is_real(f) and 0.0 <= f <= 1.0 for f in fractions)
        or abs(sum(fractions) - 1.0) > 1e-6
    ):
        checks.fail(section, prefix + "fractions", fractions, "numbers in [0, 1] summing to 1")
    if (
        not isinstance(lengths, tuple | list)
        or len(lengths) != len(fractions)
        or not all(
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(checks.is_int(n) for n in pair)
            and 1 <= pair[0] <= pair[1]
            for pair in lengths
        )
    ):
        checks.fail(
            section,
            prefix + "lengths",
            lengths,
            f"{len(fractions)} (lo, hi) pairs of integers, one per fraction, 1 <= lo <= hi",
        )
    return tuple(float(f) for f in fractions), tuple((int(lo), int(hi)) for lo, hi in lengths)
