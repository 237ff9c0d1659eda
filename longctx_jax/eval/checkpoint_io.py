"""Reading a trainer's outputs for evaluation: parameters only, and the model config.

    params, step = load_params("runs/x")          # newest checkpoint; load_params(dir, step=200)
    model_config = load_model_config("runs/x")    # the `model` section of runs/x/config.json

The trainer (`longctx_jax.train.loop`) writes orbax checkpoints under WORKDIR/checkpoints/<step>/
with an item "state" = {"step", "params", "opt_state"} (and "data", the iterator state).
`load_params` restores only "params" (an orbax partial restore: the optimizer state is neither
read nor needed) onto one device, whatever mesh the run was trained on.
"""

from __future__ import annotations

import json
from numbers import Integral
from pathlib import Path

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


def _manager(workdir) -> ocp.CheckpointManager:
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        raise ValueError(
            f"workdir={str(workdir)!r}: no checkpoint directory {directory} (train first, or "
            "point at the run's --workdir)"
        )
    return ocp.CheckpointManager(
        directory,
        item_names=("state", "data"),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
        options=ocp.CheckpointManagerOptions(create=False),
    )


def checkpoint_steps(workdir) -> list[int]:
    """The steps with a finished checkpoint under workdir/checkpoints, ascending."""
    manager = _manager(workdir)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def load_params(workdir, step: int | None = None, *, device=None):
    """(params, step): the model parameters saved at `step` (default: the newest checkpoint).

    Arrays are restored onto `device` (default: the first device), as saved (float32 unless the
    run used another param_dtype). Raises ValueError if there is no checkpoint, the step is not
    one of the saved steps, or the checkpoint cannot be read.
    """
    if step is not None and (isinstance(step, bool) or not isinstance(step, Integral)):
        raise ValueError(f"step={step!r}: expected an integer or None (newest)")
    manager = _manager(workdir)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise ValueError(f"workdir={str(workdir)!r}: {manager.directory} holds no checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(
                f"step={step!r}: no such checkpoint in {manager.directory}; saved: {steps}"
            )
        sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
        try:
            metadata = manager.item_metadata(step)["state"]
            tree = getattr(metadata, "tree", metadata)
            abstract = {
                "params": jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                    tree["params"],
                )
            }
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                        partial_restore=True,
                    )
                ),
            )
        except Exception as error:  # orbax raises many types: say which checkpoint and why
            raise ValueError(
                f"cannot read the parameters of checkpoint step {step} in {manager.directory}: "
                f"{type(error).__name__}: {error}"
            ) from error
    finally:
        manager.close()
    return restored["state"]["params"], int(step)


def load_model_config(workdir) -> ml_collections.ConfigDict:
    """The `model` section of workdir/config.json (written by the trainer) as a ConfigDict."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ValueError(f"workdir={str(workdir)!r}: no {path} (written by `longctx train`)")
    config = json.loads(path.read_text())
    if "model" not in config:
        raise ValueError(f"{path}: no 'model' section")
    return ml_collections.ConfigDict(config["model"])
