"""Helpers shared by the eval tests: a tiny model config and a small folder corpus."""

from __future__ import annotations

import numpy as np
from seeding import seed_for
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
    """The seed of a module-scoped fixture: fixed by default, like conftest's `seed` (same
    LONGCTX_TEST_SEED=random / =<int> options; see tests/seeding.py)."""
    return seed_for(f"module_seed:{name}")
