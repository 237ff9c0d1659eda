"""load_params: the trainer's parameters without its optimizer, newest or by step; clear errors."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from eval_testlib import folder_corpus
from flax import linen as nn

from longctx_jax.config import base_config
from longctx_jax.eval.checkpoint_io import checkpoint_steps, load_model_config, load_params
from longctx_jax.eval.perplexity import perplexity_by_position
from longctx_jax.model import DecoderLM
from longctx_jax.train.loop import train


def tiny_train_config():
    config = base_config()
    config.model.update_from_flattened_dict(
        {"num_layers": 1, "embed_dim": 32, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}
    )
    config.model.mlp_dim = 64
    config.data.seq_len = 32
    config.data.batch_size = 2
    config.data.prefetch_batches = 0
    config.train.steps = 2
    config.train.warmup_steps = 1
    config.train.checkpoint_every = 1
    config.train.keep_checkpoints = 2
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train(tiny_train_config(), workdir)
    return workdir


def full_restore(workdir, step):
    """Everything in the checkpoint's "state" item, read back by orbax without a target."""
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    return restored["state"]


def test_load_params_matches_the_saved_state(workdir):
    assert checkpoint_steps(workdir) == [1, 2]
    params, step = load_params(workdir)
    assert step == 2
    saved = full_restore(workdir, 2)
    assert set(saved) == {"step", "params", "opt_state"}
    jax.tree.map(np.testing.assert_array_equal, params, saved["params"])
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(params))

    earlier, step = load_params(workdir, step=1)
    assert step == 1
    jax.tree.map(np.testing.assert_array_equal, earlier, full_restore(workdir, 1)["params"])
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(earlier), jax.tree.leaves(params), strict=True)
    )

    # The parameters and the saved model config drive the model and an evaluation.
    model_config = load_model_config(workdir)
    assert model_config.embed_dim == 32 and model_config.num_layers == 1
    model = DecoderLM(tiny_train_config().model)
    tokens = jnp.zeros((1, 4), jnp.int32)
    reference = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), tokens))["params"])
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    assert shapes(params) == shapes(reference)
    data_config, _ = folder_corpus(workdir, np.random.default_rng(0), [200])
    result = perplexity_by_position(
        model_config, params, data_config, eval_len=64, num_windows=2, progress=False
    )
    assert np.isfinite(result["nll"]) and result["tokens"] == 64 + 32


def test_missing_or_bad_checkpoints_raise_value_error(workdir, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint directory"):
        load_params(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        load_params(tmp_path)
    with pytest.raises(ValueError, match=r"step=7: no such checkpoint.*\[1, 2\]"):
        load_params(workdir, step=7)
    with pytest.raises(ValueError, match="step"):
        load_params(workdir, step="2")

    broken = tmp_path / "broken"
    shutil.copytree(workdir / "checkpoints", broken / "checkpoints")
    for path in (broken / "checkpoints" / "2" / "state").iterdir():
        if path.name != "commit_success.txt":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ValueError, match="cannot read the parameters of checkpoint step 2"):
        load_params(broken)
