"""build_run / load_model / the checkpoint module: parameters read back exactly, newest or by
step, `init_from` really starts from another run, `keep_checkpoints`, a corrupt newest checkpoint
falls back to the previous one, and clear errors."""

import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tiny_config import tiny_config

from longctx_jax.model import DecoderLM
from longctx_jax.run import build_run, load_model
from longctx_jax.train.checkpointing import checkpoint_steps, restore_params
from longctx_jax.train.loop import train


def small_config(steps=2, keep=2):
    config = tiny_config(steps=steps)
    config.model.update(dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1))
    config.data.seq_len, config.data.batch_size = 32, 2
    config.train.update(dict(warmup_steps=1, checkpoint_every=1, keep_checkpoints=keep))
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train(small_config(), workdir)
    return workdir


def full_restore(workdir, step):
    """Everything in the checkpoint's "state" item, read by orbax itself without a target."""
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
    finally:
        manager.close()
    return restored["state"]


def leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_load_model_reads_the_saved_parameters_and_config(workdir):
    assert checkpoint_steps(workdir) == [1, 2]
    model_config, params = load_model(workdir)
    saved = full_restore(workdir, 2)
    assert set(saved) == {"step", "params", "opt_state"} and int(saved["step"]) == 2
    chex.assert_trees_all_equal(params, saved["params"])
    assert model_config.embed_dim == 32 and model_config.num_layers == 1

    _, earlier = load_model(workdir, step=1)
    chex.assert_trees_all_equal(earlier, full_restore(workdir, 1)["params"])
    assert not leaves_equal(earlier, params)

    # The loaded config and parameters drive the model: same logits as the saved parameters.
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)
    got = DecoderLM(model_config).apply({"params": params}, tokens)
    want = DecoderLM(small_config().model).apply({"params": saved["params"]}, tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_missing_or_bad_checkpoints_raise_value_error(workdir, tmp_path):
    with pytest.raises(ValueError, match="no .*config.json"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="no checkpoint directory"):
        restore_params(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        restore_params(tmp_path)
    with pytest.raises(ValueError, match=r"step=7: no such checkpoint.*\[1, 2\]"):
        load_model(workdir, step=7)
    with pytest.raises(ValueError, match="step='2': expected an integer"):
        load_model(workdir, step="2")

    broken = tmp_path / "broken"
    shutil.copytree(workdir / "checkpoints", broken / "checkpoints")
    wipe_state(broken, 2)
    with pytest.raises(ValueError, match="cannot read the parameters of checkpoint step 2"):
        restore_params(broken)


def wipe_state(workdir, step):
    for path in (workdir / "checkpoints" / str(step) / "state").iterdir():
        if path.name != "commit_success.txt":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_keep_checkpoints_keeps_the_newest(tmp_path):
    train(small_config(steps=4, keep=2), tmp_path)
    assert checkpoint_steps(tmp_path) == [3, 4]


def test_init_from_starts_from_the_other_runs_parameters(workdir, tmp_path):
    # Warm-up's first learning rate is 0, so after one step the parameters are the start's:
    # the source run's with init_from, a fresh initialisation without.
    config = small_config(steps=1)
    config.train.seed = 1
    config.train.init_from = str(workdir)
    train(config, tmp_path / "tuned")
    _, source = load_model(workdir)
    _, tuned = load_model(tmp_path / "tuned")
    chex.assert_trees_all_equal(tuned, source)

    config.train.init_from = ""
    train(config, tmp_path / "fresh")
    _, fresh = load_model(tmp_path / "fresh")
    assert not leaves_equal(fresh, source)


def test_init_from_another_shape_names_the_parameters(workdir, tmp_path):
    config = small_config(steps=1)
    config.model.mlp_dim = 96
    config.train.init_from = str(workdir)
    with pytest.raises(ValueError, match=r"does not fit .*mlp.*\(32, 128\), model \(32, 96\)"):
        train(config, tmp_path)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workdir, run)
    wipe_state(run, 2)
    config = small_config(steps=3)
    with pytest.warns(UserWarning, match="checkpoint step 2 .* cannot be read"):
        train(config, run)
    assert checkpoint_steps(run) == [2, 3]  # step 2 redone from step 1, then step 3
    assert (run / "corrupt_checkpoints" / "2").is_dir()  # moved aside, not deleted
    _, redone = load_model(run, step=2)
    _, original = load_model(workdir, step=2)
    chex.assert_trees_all_equal(redone, original)  # the same step 2 again


def test_build_run_step_donates_the_state():
    run = build_run(small_config())
    state = run.init_state()
    batch = {
        key: np.zeros((2, 32), np.float32 if key == "weights" else np.int32)
        for key in ("tokens", "targets", "weights", "segment_ids", "positions")
    }
    with run.scope():
        new_state, _ = run.step(state, run.put_batch(batch))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    assert int(new_state.step) == 1
