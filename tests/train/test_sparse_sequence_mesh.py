"""A `sparse_topk` model trained with the sequence axis over 4 devices (mesh.sequence = 4, 8
simulated CPU devices) against the same run on one device (mesh.sequence = 1).

Context parallelism reorders each row's tokens (`mesh.context_parallel_layout`: zigzag by default)
before sharding them; positions and segment ids travel with the tokens, so a model whose output
depends only on them gives the one-device losses: the dense warm-up stage, the sparse stage with
the oracle selector, and the sparse stage on the contiguous layout. A sparse-stage model that
cuts blocks (granularity="block") or breaks top-k ties among equal index scores (the indexer's
ReLU makes about half of them exactly 0) in array order would differ under a permuted layout, so
validation refuses that combination, naming the layout.
"""

import json

import numpy as np
import pytest
from tiny_config import tiny_config

from longctx_jax.train.loop import train

STEPS = 2


def sparse_config(stage: str, sparse: dict, **mesh):
    config = tiny_config(STEPS, **mesh)
    config.model.num_layers = 1
    config.model.init_std = 0.3
    config.model.attention.kind = "sparse_topk"
    defaults = dict(top_k=8, index_heads=2, index_head_dim=16, index_rope_dim=8)
    config.model.attention.sparse.update({**defaults, "stage": stage, **sparse})
    config.train.learning_rate = 1e-2
    return config


def losses(config, workdir):
    """(loss, indexer_loss) of every step, from the run's metrics.jsonl."""
    train(config, workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([(r["loss"], r["indexer_loss"]) for r in records])


MODELS = {
    "warmup": ("dense_warmup", {}),
    "oracle": ("sparse", dict(selector="oracle")),
    "indexer": ("sparse", {}),
    "block": ("sparse", dict(granularity="block", block_size=16, top_k=32)),
}


CASES = [
    pytest.param("warmup", "zigzag", id="warmup-zigzag"),
    pytest.param("oracle", "zigzag", id="oracle-zigzag"),
    pytest.param("indexer", "contiguous", id="indexer-contiguous"),
    pytest.param("block", "contiguous", id="block-contiguous"),
]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The mesh.sequence = 1 losses of each model, computed once."""
    cache = {}

    def get(model):
        if model not in cache:
            stage, sparse = MODELS[model]
            workdir = tmp_path_factory.mktemp(f"one-{model}")
            cache[model] = losses(sparse_config(stage, sparse), workdir)
        return cache[model]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("model,layout", CASES)
def test_sparse_sequence_parallel_matches_one_device(tmp_path, one_device, model, layout):
    stage, sparse = MODELS[model]
    config = sparse_config(stage, sparse, sequence=4)
    config.mesh.context_parallel_layout = layout
    got, want = losses(config, tmp_path), one_device(model)
    assert got.shape == want.shape == (STEPS, 2)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(
        got, want, rtol=1e-5, err_msg=f"{model} {layout}: (loss, indexer_loss) per step"
    )


@pytest.mark.parametrize("model", ["indexer", "block"])
@pytest.mark.parametrize("layout", ["zigzag", "striped"])
def test_array_order_sparse_models_on_a_permuted_layout_are_refused(tmp_path, model, layout):
    stage, sparse = MODELS[model]
    config = sparse_config(stage, sparse, sequence=4)
    config.mesh.context_parallel_layout = layout
    with pytest.raises(ValueError, match=f"mesh.context_parallel_layout='{layout}': expected "):
        train(config, tmp_path)
    assert not (tmp_path / "config.json").exists()
