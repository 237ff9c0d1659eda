"""A run as one object: `build_run(config)` and `load_model(workdir)`.

    run = build_run(config)                  # model, optimizer, mesh and rules, shardings, step
    state = run.init_state()                 # sharded TrainState, never materialised whole
    with run.scope():
        state, metrics = run.step(state, run.put_batch(batch))   # the trainer's jitted step
    model_config, params = load_model("runs/x")          # any run's (or imported model's) params

This is the only place a train step is jitted and the only way a run's parameters are read: the
trainer, `longctx eval`, `bench train` / `bench ring` and the experiments all come through here,
so a benchmark times exactly the program the trainer runs (same donation, same stage freezing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding

from longctx_jax import sharding
from longctx_jax.model import DecoderLM, validate_model_config
from longctx_jax.train import checkpointing
from longctx_jax.train.optimizer import learning_rate_schedule, make_optimizer
from longctx_jax.train.step import TrainState, num_position_buckets, train_step

BATCH_KEYS = ("tokens", "targets", "weights", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a training config builds, assembled once (see `build_run`)."""

    config: ml_collections.ConfigDict
    model: DecoderLM
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    mesh: Mesh
    rules: tuple
    state_shardings: Any
    batch_sharding: NamedSharding
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct carrying their shardings
    step: Any  # jitted (state, batch) -> (state, metrics); the state argument is donated

    def scope(self):
        """The mesh and logical-axis rules that tracing the model and the step need."""
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def init_state(self) -> TrainState:
        """A fresh TrainState (seed `train.seed`), initialised directly in its sharded layout."""
        init = lambda rng: nn.unbox(_init_fn(self.model, self.optimizer, self.config)(rng))  # noqa: E731
        with self.scope():
            return jax.jit(init, out_shardings=self.state_shardings)(
                jax.random.key(self.config.train.seed)
            )

    def put_batch(self, local_batch: dict) -> dict:
        """This process's numpy batch -> global arrays laid out by `batch_sharding`."""
        return {
            key: jax.make_array_from_process_local_data(
                self.batch_sharding, np.asarray(local_batch[key])
            )
            for key in BATCH_KEYS
        }

    def checkpoints(self, workdir):
        """The run's checkpoint manager under WORKDIR/checkpoints (`train.keep_checkpoints`)."""
        return checkpointing.make_manager(workdir, keep=self.config.train.keep_checkpoints)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract_state.params))


def _init_fn(model, optimizer, config):
    tokens = jnp.zeros((1, config.data.seq_len), jnp.int32)

    def init(rng):
        params = model.init(rng, tokens)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    return init


def build_run(config) -> Run:
    """The one Run of a training config: model, optimizer (with stage freezing), mesh, rules,
    state shardings, batch sharding and the jitted train step with the state donated."""
    config = config.copy_and_resolve_references()
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.logical_rules(config.mesh)
    model = DecoderLM(config.model)
    optimizer = make_optimizer(config.train, config.model)
    schedule = learning_rate_schedule(config.train)
    boxed = jax.eval_shape(_init_fn(model, optimizer, config), jax.random.key(0))
    state_shardings = sharding.state_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed),
        state_shardings,
    )
    batch_sharding = sharding.batch_sharding(mesh, rules)
    step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            optimizer=optimizer,
            learning_rate=schedule,
            num_buckets=num_position_buckets(config.data.seq_len),
        ),
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    return Run(
        config=config,
        model=model,
        optimizer=optimizer,
        learning_rate=schedule,
        mesh=mesh,
        rules=rules,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        abstract_state=abstract,
        step=step,
    )


def read_run_config(workdir) -> ml_collections.ConfigDict:
    """WORKDIR/config.json (written by the trainer once a run has started) as a ConfigDict, with
    fields added since it was written at their defaults (`config.with_defaults`)."""
    from longctx_jax.config import with_defaults

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ValueError(f"workdir={str(workdir)!r}: no {path} (written by `longctx train`)")
    try:
        return ml_collections.ConfigDict(with_defaults(json.loads(path.read_text())))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def load_model(workdir, step: int | None = None, *, device=None):
    """(model_config, params) of a run's checkpoint at `step` (default: the newest).

    `DecoderLM(model_config).apply({"params": params}, tokens)` gives its logits. Only the
    parameters are read (no optimizer state), onto `device` (default: the first device),
    whatever mesh the run was trained on. ValueError if there is no such checkpoint.
    """
    config = read_run_config(workdir)
    if "model" not in config:
        raise ValueError(f"{Path(workdir) / 'config.json'}: no 'model' section")
    model_config = config.model
    validate_model_config(model_config)
    target = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    params, _ = checkpointing.restore_params(workdir, step, sharding=target)
    return model_config, params
