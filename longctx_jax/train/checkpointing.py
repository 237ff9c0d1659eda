"""The one checkpoint module: orbax checkpoints of the train state with the data iterator.

A checkpoint WORKDIR/checkpoints/<step>/ holds `state` (TrainState: step, params, opt_state;
restored directly into its sharded layout) and `data` (this process's grain iterator state), so
a resumed run sees exactly the batches the uninterrupted run would have seen.

    manager = make_manager(workdir, keep=2)
    save(manager, step, state, data_iterator)
    state, step = restore_latest(manager, abstract_state, data_iterator)  # falls back past a
                                                                          # corrupt newest one
    params, step = restore_params(workdir, step=None, sharding=...)       # parameters only

`restore_params` is an orbax partial restore (the optimizer state is never read): `load_model`,
`train.init_from` and evaluation all read parameters through it.
"""

from __future__ import annotations

import shutil
import warnings
from numbers import Integral
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used, with what to do about it."""


def checkpoint_dir(workdir) -> Path:
    return Path(workdir).absolute() / "checkpoints"


def make_manager(workdir, *, keep: int, create: bool = True) -> ocp.CheckpointManager:
    directory = checkpoint_dir(workdir)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory")
    if not create and not directory.is_dir():
        raise ValueError(
            f"workdir={str(workdir)!r}: no checkpoint directory {directory} (train first, or "
            "point at the run's --workdir)"
        )
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_names=("state", "data"),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
        },
    )


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        ),
        force=True,
    )
    manager.wait_until_finished()


def checkpoint_steps(workdir) -> list[int]:
    """The steps with a finished checkpoint under WORKDIR/checkpoints, ascending."""
    manager = make_manager(workdir, keep=1, create=False)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def _restore_args(abstract):
    return ocp.checkpoint_utils.construct_restore_args(abstract)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iterator):
    """(state, step) from the newest readable checkpoint, or (None, 0) if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings; the data iterator is
    restored in place. A checkpoint that cannot be read is moved aside to
    WORKDIR/corrupt_checkpoints/<step> (nothing is deleted) with a warning, and the previous one
    is tried; if none can be read, CheckpointError.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract_state, restore_args=_restore_args(abstract_state)
                    ),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )
        except Exception as error:  # orbax raises many types; say which checkpoint and why
            errors.append(f"step {step}: {type(error).__name__}: {_first_line(error)}")
            aside = _move_aside(manager, step)
            warnings.warn(
                f"checkpoint step {step} in {manager.directory} cannot be read "
                f"({type(error).__name__}: {_first_line(error)}); moved it to {aside} and "
                "falling back to the previous checkpoint",
                stacklevel=2,
            )
            continue
        return restored["state"], step
    if errors:
        raise CheckpointError(
            f"no checkpoint in {manager.directory} can be read ({'; '.join(errors)}); they were "
            "moved to corrupt_checkpoints/. Use a fresh --workdir or restore them by hand."
        )
    return None, 0


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else ""


def _move_aside(manager, step) -> Path:
    """Moves checkpoint `step` out of the manager's directory; the manager forgets it."""
    source = Path(manager.directory) / str(step)
    target = Path(manager.directory).parent / "corrupt_checkpoints" / str(step)
    if jax.process_index() == 0 and source.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(source), str(target))
    manager.reload()
    return target


def restore_params(workdir, step: int | None = None, *, sharding=None, abstract_params=None):
    """(params, step): the parameters of checkpoint `step` (default: the newest) of a run.

    An orbax partial restore: the optimizer state is neither read nor needed. Leaves land on
    `abstract_params`' shardings when given (a pytree of jax.ShapeDtypeStruct: shapes and
    dtypes must match, e.g. `train.init_from`), else on `sharding` (default: the first device)
    as saved. ValueError if there is no checkpoint, the step is not saved, or it cannot be read.
    """
    if step is not None and (isinstance(step, bool) or not isinstance(step, Integral)):
        raise ValueError(f"step={step!r}: expected an integer or None (newest)")
    manager = make_manager(workdir, keep=1, create=False)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise ValueError(f"workdir={str(workdir)!r}: {manager.directory} holds no checkpoint")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(
                f"step={step!r}: no such checkpoint in {manager.directory}; saved: {steps}"
            )
        try:
            metadata = manager.item_metadata(step)["state"]
            saved = getattr(metadata, "tree", metadata)["params"]
            if abstract_params is None:
                target = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
                abstract_params = jax.tree.map(
                    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target), saved
                )
            else:
                _check_same_params(saved, abstract_params, manager.directory, step)
            abstract = {"params": abstract_params}
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract, restore_args=_restore_args(abstract), partial_restore=True
                    )
                ),
            )
        except ValueError:
            raise
        except Exception as error:  # orbax raises many types: say which checkpoint and why
            raise ValueError(
                f"cannot read the parameters of checkpoint step {step} in {manager.directory}: "
                f"{type(error).__name__}: {_first_line(error)}"
            ) from error
    finally:
        manager.close()
    return restored["state"]["params"], int(step)


def _check_same_params(saved, abstract, directory, step) -> None:
    """ValueError naming the parameters whose shapes differ between a checkpoint and a model."""
    flat_saved = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(saved)}
    flat_new = {
        jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(abstract)
    }
    problems = [f"{k} missing in the checkpoint" for k in flat_new if k not in flat_saved]
    problems += [f"{k} not in this model" for k in flat_saved if k not in flat_new]
    problems += [
        f"{k}: checkpoint {tuple(flat_saved[k].shape)}, model {tuple(m.shape)}"
        for k, m in flat_new.items()
        if k in flat_saved and tuple(flat_saved[k].shape) != tuple(m.shape)
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" * (len(problems) > 4))
        raise ValueError(
            f"checkpoint step {step} in {directory} does not fit this model's parameters: {shown}"
        )
