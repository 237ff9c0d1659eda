"""Resuming from a checkpoint reproduces the uninterrupted run exactly (state and data stream)."""

import json
import warnings

import jax
import numpy as np
import pytest
from tiny_config import checkpointed_params, tiny_config

from longctx_jax.train.loop import train


def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def scheduled(steps, schedule_steps):
    config = tiny_config(steps=steps)
    config.train.warmup_steps = 1  # so the cosine decay, not the warm-up, covers the resume
    config.train.schedule_steps = schedule_steps
    return config


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-step run (schedule_steps 6, i.e. train.steps)."""
    workdir = tmp_path_factory.mktemp("straight")
    train(scheduled(6, 6), workdir)
    return workdir


@pytest.mark.slow
def test_resume_is_bitwise_identical(straight, tmp_path):
    split = tmp_path / "split"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same schedule: no warning
        train(scheduled(3, 6), split)  # stops at 3 (checkpointed); a new run resumes to 6
        train(scheduled(6, 6), split)

    assert losses(straight) == losses(split)
    assert sorted(losses(split)) == [1, 2, 3, 4, 5, 6]
    # the trained-distance counts resume with the data stream
    a, b = (json.loads((d / "data_stats.json").read_text()) for d in (straight, split))
    assert a["batches"] == b["batches"] == 6
    assert (a["pairs"], a["piece_lengths"]) == (b["pairs"], b["piece_lengths"])
    a, b = checkpointed_params(straight, 6), checkpointed_params(split, 6)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_resume_with_another_schedule_warns_and_differs(straight, tmp_path):
    split = tmp_path / "split"
    train(scheduled(3, None), split)  # schedule of 3 steps; resuming to 6 stretches it
    with pytest.warns(
        UserWarning, match=r"schedule_steps\) was \(0.003, 1, 3\), is now \(0.003, 1, 6\)"
    ):
        train(scheduled(6, None), split)
    assert losses(straight)[5] != losses(split)[5]


def test_metrics_jsonl_contract(tmp_path):
    train(tiny_config(steps=3), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert isinstance(r["loss"], float) and np.isfinite(r["loss"])
        assert r["grad_norm"] > 0 and r["tokens_per_second"] > 0 and r["learning_rate"] >= 0
    assert (tmp_path / "config.json").exists()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
