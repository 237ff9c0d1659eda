"""Orbax checkpoints of the train state together with the data iterator's position.

A checkpoint holds `state` (params, optimizer state, step; restored directly into its sharded
layout) and `data` (the grain iterator state of this process), so a resumed run sees exactly
the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used, with what to do about it."""


def make_manager(workdir, *, keep: int) -> ocp.CheckpointManager:
    directory = Path(workdir).absolute() / "checkpoints"
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
        force=True,
    )
    manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """(state, step) from the newest checkpoint, or (None, 0) if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings; the data iterator is
    restored in place. A checkpoint that exists but cannot be read raises CheckpointError.
    """
    step = manager.latest_step()
    if step is None:
        return None, 0
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
    except Exception as error:  # orbax raises many types; say which checkpoint and why
        raise CheckpointError(
            f"cannot restore checkpoint step {step} from {manager.directory}: "
            f"{type(error).__name__}: {error}. Delete that step's folder to resume from an "
            "earlier one, or use a fresh --workdir."
        ) from error
    return restored["state"], step


def restore_params_from(workdir, abstract_state):
    """Parameters of the newest checkpoint under another run's workdir (e.g. to fine-tune).

    `abstract_state` is this run's abstract state: the other run must have the same parameter
    and optimizer-state structure (same model and optimizer; other settings may differ).
    """
    manager = make_manager(workdir, keep=1)
    step = manager.latest_step()
    if step is None:
        raise CheckpointError(f"train.init_from={str(workdir)!r} has no checkpoint to start from")
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
    except Exception as error:
        raise CheckpointError(
            f"cannot load parameters from {manager.directory} step {step}: "
            f"{type(error).__name__}: {error}"
        ) from error
    finally:
        manager.close()
    return restored["state"].params


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings
    )
