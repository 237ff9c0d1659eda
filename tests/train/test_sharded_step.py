"""One train step gives the same loss and parameters on 1 device and on 8-device meshes."""

import jax
import numpy as np
import pytest
from tiny_config import checkpointed_params, tiny_config

from longctx_jax.train.loop import train


def run(workdir, **mesh):
    config = tiny_config(steps=2, **mesh)
    # sharding, not the attention implementation, is under test (blockwise attention on a mesh:
    # test_context_parallel_step.py); reference attention is the quickest to compile
    config.model.attention.impl = "reference"
    last = train(config, workdir)
    return last["loss"], checkpointed_params(workdir, 2)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    """(loss, parameters) of the same two steps on one device, shared by the mesh cases."""
    return run(tmp_path_factory.mktemp("single"))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [dict(data=2, fsdp=4), dict(data=4, tensor=2)])
def test_sharded_matches_single_device(tmp_path, single_device, mesh):
    assert jax.device_count() == 8
    loss_1, params_1 = single_device
    loss_n, params_n = run(tmp_path / "mesh", **mesh)
    np.testing.assert_allclose(loss_n, loss_1, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), params_n, params_1
    )


def test_indivisible_mesh_is_a_clear_error(tmp_path):
    """4 tensor-parallel devices cannot split 2 kv heads: ValueError naming the parameter."""
    with pytest.raises(ValueError, match=r"key.*sharded over mesh axes \('tensor',\)"):
        train(tiny_config(steps=1, data=2, tensor=4), tmp_path)
