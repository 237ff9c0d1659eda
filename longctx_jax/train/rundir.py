"""The run directory's integrity: one writer at a time, a config that always loads the run's
checkpoints, and resumes that cannot silently change what is being trained.

    with exclusive(workdir):                 # a second trainer on WORKDIR is refused
        check_resume(workdir, config)        # before anything is written: refuses a resume that
        ...                                  # changes the data or a parameter shape
        write_config(workdir, config, step)  # after validation and a successful restore
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from longctx_jax.ablation import changed_fields
from longctx_jax.model import DecoderLM
from longctx_jax.train.optimizer import schedule_steps

# data fields that change how the data is read, not what it is.
DATA_FIELDS_FREE = ("prefetch_batches", "read_threads")


class RunLockedError(RuntimeError):
    """Another process is training in this workdir."""


@contextlib.contextmanager
def exclusive(workdir):
    """Holds WORKDIR/.lock (an flock, released by the OS even after kill -9) for the block."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / ".lock"
    handle = open(path, "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunLockedError(
            f"workdir={str(workdir)!r} is in use by a running trainer ({holder}); wait for it "
            "to finish or stop it, or use another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def as_json(config) -> dict:
    """The config as the JSON config.json holds (tuples become lists, placeholders None)."""
    return json.loads(config.to_json_best_effort())


def saved_config(workdir) -> dict | None:
    """config.json as a dict (fields added since it was written at their defaults), or None."""
    from longctx_jax.config import with_defaults

    path = Path(workdir) / "config.json"
    return with_defaults(json.loads(path.read_text())) if path.is_file() else None


def check_resume(workdir, config) -> None:
    """ValueError if WORKDIR already holds a run whose data or parameter shapes `config` changes
    (naming the fields); a warning if the learning-rate schedule changes."""
    old = saved_config(workdir)
    if old is None:
        return
    changes = changed_fields(old, as_json(config))
    data = [
        k for k in changes if k.startswith("data.") and k.split(".", 1)[1] not in DATA_FIELDS_FREE
    ]
    model = [k for k in changes if k.startswith("model.")]
    if model and _param_shapes(old["model"]) != _param_shapes(as_json(config)["model"]):
        shape_fields = model
    else:
        shape_fields = []
    refused = data + shape_fields
    if refused:
        detail = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ValueError(
            f"workdir={str(workdir)!r} holds a run this config cannot resume: it changes "
            f"{'the data' if data else ''}{' and ' if data and shape_fields else ''}"
            f"{'parameter shapes' if shape_fields else ''} ({detail}). Use a fresh --workdir, or "
            "train.init_from to start a new run from this one's parameters"
        )
    old_train = ml_collections.ConfigDict(old.get("train", {}))
    before = _schedule(old_train)
    after = _schedule(config.train)
    if before is not None and before != after:
        warnings.warn(
            f"resuming with another learning-rate schedule: (learning_rate, warmup_steps, "
            f"schedule_steps) was {before}, is now {after}; set train.schedule_steps to keep "
            "the run's schedule",
            stacklevel=2,
        )


def _schedule(train) -> tuple | None:
    try:
        return (float(train.learning_rate), int(train.warmup_steps), schedule_steps(train))
    except (AttributeError, KeyError, TypeError):
        return None


def _param_shapes(model_json: dict):
    model = DecoderLM(ml_collections.ConfigDict(model_json))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
    return jax.tree.map(lambda x: (x.shape, str(x.dtype)), shapes)


def write_config(workdir, config, start_step: int) -> None:
    """WORKDIR/config.json (the run's current config) and a copy per segment of the run,
    WORKDIR/configs/from_step_<start_step>.json."""
    text = config.to_json_best_effort(indent=2)
    workdir = Path(workdir)
    (workdir / "configs").mkdir(parents=True, exist_ok=True)
    (workdir / "configs" / f"from_step_{start_step}.json").write_text(text)
    tmp = workdir / "config.json.tmp"
    tmp.write_text(text)
    tmp.replace(workdir / "config.json")
