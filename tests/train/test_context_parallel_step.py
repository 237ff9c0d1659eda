"""Sequence-parallel training (attention.ring) gives the losses and parameters of one device."""

import json

import jax
import numpy as np
import pytest
from tiny_config import checkpointed_params, tiny_config

from longctx_jax.train.loop import train


def run(tmp_path, name, strategy="ring", layout="zigzag", **mesh):
    config = tiny_config(steps=2, **mesh)
    config.model.attention.context_parallel = strategy
    config.mesh.context_parallel_layout = layout
    workdir = tmp_path / name
    train(config, workdir)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines]
    return losses, checkpointed_params(workdir, 2)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """(losses, parameters) of the same two steps on one device, shared by the mesh cases."""
    return run(tmp_path_factory.mktemp("single"), "single")


@pytest.mark.slow
@pytest.mark.parametrize(
    "mesh,strategy,layout",
    [(dict(sequence=4), "ring", "zigzag"), (dict(data=2, sequence=4), "all_gather", "striped")],
)
def test_sequence_parallel_matches_single_device(tmp_path, single_device, mesh, strategy, layout):
    assert jax.device_count() == 8
    losses_1, params_1 = single_device
    losses_n, params_n = run(tmp_path, "mesh", strategy, layout, **mesh)
    assert len(losses_n) == len(losses_1) == 2
    np.testing.assert_allclose(losses_n, losses_1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params_n, params_1
    )


def test_bad_layout_is_a_clear_error(tmp_path):
    config = tiny_config(steps=1, sequence=8)
    config.data.seq_len = 72  # not a multiple of 2 * 8
    with pytest.raises(ValueError, match=r"layout='zigzag' over 8 shards needs a multiple of 16"):
        train(config, tmp_path)
    config.mesh.context_parallel_layout = "spiral"
    with pytest.raises(ValueError, match=r"layout='spiral'"):
        train(config, tmp_path)


def test_attention_goes_through_the_ring(tmp_path):
    """With sequence > 1 every layer calls context_parallel_attention: the ring refuses 'xla'."""
    config = tiny_config(steps=1, sequence=4)
    config.model.attention.impl = "xla"
    with pytest.raises(ValueError, match=r"impl='xla': strategy='ring' needs"):
        train(config, tmp_path)
