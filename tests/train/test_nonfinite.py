"""A non-finite loss stops the run with a message naming the step."""

import math

import pytest
from tiny_config import tiny_config

from longctx_jax.train.loop import NonFiniteLossError, train


def test_nan_learning_rate_stops_at_step_two(tmp_path):
    config = tiny_config(steps=4)
    config.train.learning_rate = math.nan  # step 1's update makes every parameter NaN
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 2"):
        train(config, tmp_path)
