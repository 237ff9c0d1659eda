"""`train(config, workdir)`: the training loop around the Run that `build_run` assembles.

Re-running with the same workdir resumes from the newest readable checkpoint (state and data
stream) and continues to `train.steps`. The run directory stays trustworthy:
  * one trainer per workdir (a second one is refused, the first is unharmed);
  * the config is validated, and a resume that changes the data or a parameter shape refused,
    before anything is written; config.json is written only after a successful restore;
  * every step's loss, gradient norm and updated parameters are checked on the host: a
    non-finite state stops the run and is never checkpointed;
  * metrics.jsonl and TensorBoard hold each step once, however often the run was interrupted;
  * tokens/s is measured after the device has finished the steps it counts;
  * the trained pair distances and document-piece lengths of every batch consumed are counted
    (`data.stats`), kept in the data iterator's checkpoint state (so they resume exactly),
    written to WORKDIR/data_stats.json at each checkpoint and logged as `data/*`;
  * SIGTERM / SIGINT (from process start when run by the CLI) checkpoint and stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
from tqdm import tqdm

from longctx_jax import sharding
from longctx_jax.config import validate_config
from longctx_jax.data.pipeline import make_train_iterator
from longctx_jax.data.stats import StatsIterator, TrainedDistances
from longctx_jax.eval import registry
from longctx_jax.eval.checkpoint_eval import write_eval_results
from longctx_jax.provenance import write_results
from longctx_jax.run import Run, build_run
from longctx_jax.train import checkpointing, preemption, rundir
from longctx_jax.train.metrics import MetricWriter
from longctx_jax.train.step import FIRST_BUCKET, num_position_buckets


class NonFiniteLossError(RuntimeError):
    """The loss, the gradients or the updated parameters became NaN or infinite."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint was saved. Re-running resumes."""


def train(config, workdir) -> dict:
    """Trains to `config.train.steps`; returns the last logged metrics.

    Raises `Preempted` after checkpointing if SIGTERM / SIGINT arrives, so callers (the CLI, an
    ablation runner) stop instead of carrying on.
    """
    owns_signals = not preemption.installed()
    preemption.install()
    try:
        validate_config(config)
        workdir = Path(workdir)
        if jax.process_index() != 0:
            return _train(config, workdir)
        with rundir.exclusive(workdir):
            rundir.check_resume(workdir, config)
            return _train(config, workdir)
    finally:
        if owns_signals:
            preemption.uninstall()


def _train(config, workdir: Path) -> dict:
    is_main = jax.process_index() == 0
    run = build_run(config)
    config = run.config
    shards = sharding.length_shards(run.mesh, run.rules)
    data = StatsIterator(
        make_train_iterator(
            config.data,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            context_parallel=(shards, config.mesh.context_parallel_layout) if shards > 1 else None,
        ),
        TrainedDistances(config.data.seq_len),
    )
    manager = run.checkpoints(workdir)
    try:
        state, start = checkpointing.restore_latest(manager, run.abstract_state, data)
        if state is not None:
            origin = f"resumed from step {start}"
        else:
            state = run.init_state()
            origin = "fresh start"
            if config.train.init_from:
                params, step = checkpointing.restore_params(
                    config.train.init_from, abstract_params=run.abstract_state.params
                )
                state = state.replace(params=params)
                origin = f"parameters from {config.train.init_from} step {step}"
        if is_main:
            rundir.write_config(workdir, config, start)
        _summary(run, workdir, origin, is_main)
        return _loop(run, state, start, data, manager, workdir, is_main)
    finally:
        manager.close()


def _summary(run: Run, workdir, origin: str, is_main: bool) -> None:
    if not is_main:
        return
    mesh = ", ".join(f"{k}={v}" for k, v in run.mesh.shape.items())
    print(
        f"longctx train: {workdir} | {run.num_params():,} parameters | "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es) | mesh {mesh} | {origin}",
        flush=True,
    )


def _loop(run: Run, state, start: int, data, manager, workdir: Path, is_main: bool) -> dict:
    config = run.config
    steps, log_every = int(config.train.steps), int(config.train.log_every)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    buckets = bucket_edges(num_position_buckets(config.data.seq_len))
    writer = MetricWriter(workdir, start_step=start, enabled=is_main)
    progress = tqdm(total=steps, initial=start, desc="train", unit="step", disable=not is_main)
    last: dict = {}
    clock = dict(time=time.perf_counter(), step=start)
    pending = None  # (step, metrics, data scalars) dispatched but not yet fetched

    def logged(step):
        """Whether `step` gets a record: every log_every steps, the last, and after evaluations."""
        evaluated = registry.due(config.evals, step, final=step == steps)
        return step % log_every == 0 or step == steps or bool(evaluated)

    def fetch(extra=None, now=None):
        """Waits for the pending step, checks it is finite, and logs it if due (with `extra`:
        the step's evaluations; `now`: when the step had finished, if evaluations followed)."""
        nonlocal pending, last
        if pending is None:
            return
        step, metrics, data_scalars = pending
        pending = None
        metrics = jax.device_get(metrics)  # synchronises: the clock is read after this
        if not bool(metrics["finite"]):
            raise NonFiniteLossError(
                f"step {step}: loss {float(metrics['loss'])}, grad_norm "
                f"{float(metrics['grad_norm'])}, or an updated parameter is not finite; stopping "
                f"(the last checkpoint, step {manager.latest_step()}, is finite)"
            )
        if logged(step):
            now = time.perf_counter() if now is None else now
            rate = (step - clock["step"]) * tokens_per_step / (now - clock["time"])
            clock.update(time=now, step=step)
            last = _scalars(metrics, rate, buckets)
            writer.write(step, last | data_scalars | (extra or {}))
            progress.set_postfix(loss=f"{last['loss']:.4f}")

    def evaluate(step):
        """Runs the evaluators due after `step`; their scalars join the step's record."""
        names = registry.due(config.evals, step, final=step == steps)
        if not names:
            return
        jax.block_until_ready(state)
        ready = time.perf_counter()  # evaluation time is not training time
        results = registry.run_evals(
            config.evals, names, config.model, _gathered(state.params), config.data, progress=False
        )
        if is_main:
            write_eval_results(workdir, step, results)
        fetch(extra=registry.flat_scalars(results), now=ready)
        clock.update(time=time.perf_counter(), step=step)

    stopped = None
    try:
        for step in range(start, steps):
            stopped = preemption.requested()
            if stopped:
                break
            batch = run.put_batch(next(data))
            with run.scope():
                state, metrics = run.step(state, batch)  # dispatch step t ...
            fetch()  # ... then check and log step t - 1 while step t runs
            done = step + 1
            # the counts as of this step's batch, computed only for a step that is logged
            pending = (done, metrics, data.stats.scalars() if logged(done) else {})
            progress.update(1)
            evaluate(done)  # outside the mesh scope: evaluators run on the params' own devices
            if done % config.train.checkpoint_every == 0 or done == steps:
                fetch()  # never checkpoint a state that was not checked
                checkpointing.save(manager, done, state, data)
                _write_data_stats(workdir, done, data.stats, writer, is_main)
        fetch()
        if stopped:
            done = int(jax.device_get(state.step))
            if done not in manager.all_steps() and done > start:
                checkpointing.save(manager, done, state, data)
                _write_data_stats(workdir, done, data.stats, writer, is_main)
            saved = manager.latest_step()
            where = f"checkpoint step {saved}" if saved is not None else "no checkpoint yet"
            raise Preempted(f"{stopped} after step {done}: {where} in {workdir}")
    finally:
        progress.close()
        writer.close()
    return last


def _write_data_stats(workdir: Path, step: int, stats: TrainedDistances, writer, is_main) -> None:
    """WORKDIR/data_stats.json and a TensorBoard histogram of trained pair distances at `step`,
    summed over processes (each counted its own rows)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        total = TrainedDistances(stats.seq_len)
        gathered = multihost_utils.process_allgather(
            dict(pairs=stats.pairs, pieces=stats.piece_lengths, batches=stats.batches)
        )
        total.pairs, total.piece_lengths = gathered["pairs"].sum(0), gathered["pieces"].sum(0)
        total.batches = int(gathered["batches"].max())  # one batch per step in each process
        stats = total
    if is_main:
        write_results(workdir / "data_stats.json", dict(step=step) | stats.summary())
        writer.histogram("data/pair_distance", stats.pairs, step)


def _gathered(params):
    """Parameters the evaluators can use: as they are in one process; in a multi-process run,
    whole on this process's first device (each process evaluates on its own; process 0 writes)."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    whole = multihost_utils.process_allgather(params, tiled=True)
    return jax.device_put(whole, jax.local_devices()[0])


def bucket_edges(num_buckets: int) -> list[str]:
    """Names of the loss-by-position buckets: "0-64", "64-128", ..."""
    names = [f"0-{FIRST_BUCKET}"]
    for i in range(1, num_buckets):
        names.append(f"{FIRST_BUCKET * 2 ** (i - 1)}-{FIRST_BUCKET * 2**i}")
    return names


def _scalars(metrics, tokens_per_second, bucket_names) -> dict:
    scalars = {
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
        "learning_rate": float(metrics["learning_rate"]),
        "tokens_per_second": tokens_per_second,
    }
    if "indexer_loss" in metrics:
        scalars["indexer_loss"] = float(metrics["indexer_loss"])
    for name, total, count in zip(
        bucket_names, metrics["bucket_sum"], metrics["bucket_count"], strict=True
    ):
        if count > 0:
            scalars[f"loss_by_position/{name}"] = float(total / count)
    return scalars
