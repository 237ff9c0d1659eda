"""A non-finite learning rate is refused up front; a diverging run stops naming the step, and
its last checkpoint is finite (a non-finite state is never saved)."""

import math

import jax
import numpy as np
import pytest
from tiny_config import checkpointed_params, tiny_config

from longctx_jax.train.checkpointing import checkpoint_steps
from longctx_jax.train.loop import NonFiniteLossError, train


def test_nan_learning_rate_is_refused_before_anything_is_written(tmp_path):
    config = tiny_config(steps=4)
    config.train.learning_rate = math.nan
    with pytest.raises(ValueError, match=r"train.learning_rate=nan: expected a finite number > 0"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_diverging_run_stops_and_never_checkpoints_a_non_finite_state(tmp_path):
    config = tiny_config(steps=8)
    config.train.learning_rate = 1e30
    config.train.checkpoint_every = 1
    with pytest.raises(NonFiniteLossError, match=r"step (\d+): .* is not finite; stopping"):
        train(config, tmp_path)
    steps = checkpoint_steps(tmp_path)
    assert steps and steps[-1] < 8
    for step in steps:
        params = checkpointed_params(tmp_path, step)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params)), step
