"""`train(config, workdir)`: the training loop around the pure, sharded train step.

State is built the sharded way (eval_shape -> logical partition specs -> jit(init) with
out_shardings), never materialised whole on one device. Re-running with the same workdir resumes
from the newest checkpoint (state and data stream) and continues to `train.steps`. SIGTERM saves a
checkpoint and returns normally. A non-finite loss stops the run naming the step.
"""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from tqdm import tqdm

from longctx_jax import sharding
from longctx_jax.data.pipeline import make_train_iterator
from longctx_jax.model import DecoderLM
from longctx_jax.train import checkpointing
from longctx_jax.train.metrics import MetricWriter
from longctx_jax.train.optimizer import make_optimizer
from longctx_jax.train.step import FIRST_BUCKET, TrainState, num_position_buckets, train_step

BATCH_KEYS = ("tokens", "targets", "weights", "segment_ids", "positions")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM arrived; a checkpoint was saved. Re-running with the same workdir resumes."""


class _Preempted:
    """Remembers a SIGTERM so the loop can checkpoint at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def init_state(config, model, optimizer, mesh, rules):
    """(sharded TrainState, its shardings), initialised directly in its sharded layout."""
    seq_len = config.data.seq_len
    tokens = jnp.zeros((1, seq_len), jnp.int32)

    def init(rng):
        params = model.init(rng, tokens)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    rng = jax.random.key(config.train.seed)
    abstract = jax.eval_shape(init, rng)
    shardings = sharding.state_shardings(abstract, mesh, rules)
    unboxed_init = lambda rng: nn.unbox(init(rng))  # noqa: E731
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(unboxed_init, out_shardings=shardings)(rng)
    return state, shardings


def make_global_batch(local_batch, batch_sharding):
    """Per-process numpy batch -> global jax arrays laid out by `batch_sharding`."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch[key]))
        for key in BATCH_KEYS
    }


def train(config, workdir) -> dict:
    """Trains to `config.train.steps`; returns the last logged metrics.

    Raises `Preempted` after checkpointing if SIGTERM arrives, so callers (the CLI, an ablation
    runner) stop instead of carrying on.
    """
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config.mesh)
    model = DecoderLM(config.model)
    optimizer = make_optimizer(config.train, config.model)
    shards = sharding.length_shards(mesh, rules)
    data = make_train_iterator(
        config.data,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        context_parallel=(shards, config.mesh.context_parallel_layout) if shards > 1 else None,
    )
    state, state_shardings = init_state(config, model, optimizer, mesh, rules)

    manager = checkpointing.make_manager(workdir, keep=config.train.keep_checkpoints)
    abstract = checkpointing.abstract_with_shardings(jax.eval_shape(lambda: state), state_shardings)
    restored, start = checkpointing.restore_latest(manager, abstract, data)
    if restored is not None:
        state = restored
    elif config.train.init_from:
        params = checkpointing.restore_params_from(config.train.init_from, abstract)
        state = state.replace(params=params)

    batch_sharding = sharding.batch_sharding(mesh, rules)
    num_buckets = num_position_buckets(config.data.seq_len)
    step_fn = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, num_buckets=num_buckets),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )

    writer = MetricWriter(workdir, enabled=is_main)
    preempted = _Preempted()
    last = {}
    steps = int(config.train.steps)
    log_every = int(config.train.log_every)
    progress = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not is_main)
    buckets = bucket_edges(num_buckets)
    tick, logged, done = time.perf_counter(), start, start
    pending = None  # (step, metrics) dispatched but not yet fetched

    def flush():
        """Fetches and logs the pending step's metrics (waits for that step to finish)."""
        nonlocal pending, tick, logged, last
        if pending is None:
            return
        step_done, metrics = pending
        pending = None
        tokens = (step_done - logged) * config.data.batch_size * config.data.seq_len
        tokens_per_second = tokens / (time.perf_counter() - tick)
        last = _log(writer, step_done, jax.device_get(metrics), tokens_per_second, buckets)
        tick, logged = time.perf_counter(), step_done
        progress.set_postfix(loss=f"{last['loss']:.4f}")

    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            for step in range(start, steps):
                batch = make_global_batch(next(data), batch_sharding)
                state, metrics = step_fn(state, batch)  # dispatch step t ...
                flush()  # ... then fetch step t - 1's metrics while step t runs
                done = step + 1
                if done % log_every == 0 or done == steps:
                    pending = (done, metrics)
                progress.update(1)
                if (
                    done % config.train.checkpoint_every == 0
                    or done == steps
                    or preempted.requested
                ):
                    flush()  # never checkpoint a state whose loss was not checked
                    checkpointing.save(manager, done, state, data)
                if preempted.requested:
                    break
            flush()
    finally:
        preempted.restore()
        progress.close()
        writer.close()
        manager.close()
    if preempted.requested:
        raise Preempted(f"SIGTERM: checkpoint saved at step {done} in {workdir}")
    return last


def bucket_edges(num_buckets: int) -> list[str]:
    """Names of the loss-by-position buckets: "0-64", "64-128", ..."""
    names = [f"0-{FIRST_BUCKET}"]
    for i in range(1, num_buckets):
        names.append(f"{FIRST_BUCKET * 2 ** (i - 1)}-{FIRST_BUCKET * 2**i}")
    return names


def _log(writer, step, metrics, tokens_per_second, bucket_names) -> dict:
    """Checks the loss is finite and writes one record; returns it."""
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss} at step {step}; stopping the run")
    scalars = {
        "loss": loss,
        "grad_norm": float(metrics["grad_norm"]),
        "tokens_per_second": tokens_per_second,
    }
    if "indexer_loss" in metrics:
        scalars["indexer_loss"] = float(metrics["indexer_loss"])
    for name, total, count in zip(
        bucket_names, metrics["bucket_sum"], metrics["bucket_count"], strict=True
    ):
        if count > 0:
            scalars[f"loss_by_position/{name}"] = float(total / count)
    writer.write(step, scalars)
    return scalars
