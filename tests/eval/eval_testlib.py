"""Helpers shared by the eval tests: a tiny model config and a small folder corpus."""

from __future__ import annotations

import os

import numpy as np
from tiny_models import tiny_model_config  # noqa: F401  (re-exported for the eval tests)

from longctx_jax.data import default_data_config, document_source


def folder_corpus(tmp_path, rng: np.random.Generator, lengths):
    """A data config over files of random bytes with the given lengths (nearly all validation).

    Returns (data_config, validation documents as int arrays, in the order the source lists them).
    """
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, n in enumerate(lengths):
        (folder / f"doc{i:03d}.txt").write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    config = default_data_config()
    config.source = "folder"
    config.folder_glob = str(folder / "*.txt")
    config.validation_fraction = 0.999
    source = document_source(config, "validation")
    return config, [np.asarray(source[i], np.int64) for i in range(len(source))]


def module_seed(name: str) -> int:
    """A fresh seed for a module-scoped fixture, printed like conftest's `seed` (same replay)."""
    fixed = os.environ.get("LONGCTX_TEST_SEED")
    value = int(fixed) if fixed else int(np.random.default_rng().integers(2**32))
    print(f"{name} seed={value} (replay: LONGCTX_TEST_SEED={value})")
    return value
