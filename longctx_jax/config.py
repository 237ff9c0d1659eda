"""The base training config: every section at its defaults (model, data, train, mesh, distributed),
and `validate_config`, which checks a whole training config in one call.

Experiment configs under configs/ start from `base_config()` and change only what they study; it
lives in the package so config files can import it wherever they are run from.
"""

import math
from collections.abc import Mapping

import ml_collections
from ml_collections import config_dict

from longctx_jax import checks
from longctx_jax.attention.ring import LAYOUTS, check_layout
from longctx_jax.data.config import default_data_config, validate_data_config
from longctx_jax.eval.registry import validate_evals
from longctx_jax.model.config import default_model_config, validate_model_config
from longctx_jax.sharding import DEFAULT_RULES, MESH_AXES, logical_rules

# Sections whose entries are free-form (validated by their own registry, not against base_config).
FREE_FORM_SECTIONS = ("evals",)


def set_model_size(model, *, layers: int, width: int, heads: int, kv_heads=None, mlp_ratio=4):
    """Sets a model config's size: `layers` blocks of `width` = heads x head_dim, `kv_heads`
    (default: heads, i.e. MHA) and an MLP of mlp_ratio x width. Returns the model config."""
    model.num_layers = layers
    model.embed_dim = width
    model.num_heads = heads
    model.num_kv_heads = heads if kv_heads is None else kv_heads
    model.head_dim = width // heads
    model.mlp_dim = mlp_ratio * width
    return model


def base_config() -> ml_collections.ConfigDict:
    """Every section of a training config at its defaults."""
    config = ml_collections.ConfigDict()
    config.model = default_model_config()
    config.data = default_data_config()

    config.train = ml_collections.ConfigDict()
    config.train.steps = 1000
    # Steps of the learning-rate schedule (None = train.steps). A run stopped early and resumed to
    # the same schedule_steps equals an uninterrupted one bitwise (MaxText's
    # learning_rate_schedule_steps).
    config.train.schedule_steps = config_dict.placeholder(int)
    config.train.seed = 0
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 100
    config.train.weight_decay = 0.1
    config.train.grad_clip = 1.0
    config.train.log_every = 1
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2
    # A workdir whose newest checkpoint's parameters start this run (fine-tuning); the optimizer
    # state and step start fresh. Ignored once this run has checkpoints of its own.
    config.train.init_from = ""

    # Evaluators (longctx_jax/eval/registry.py): config.evals.<name> = ConfigDict(kind=<registry
    # name>, every=<steps; 0 = only at the end and in `longctx eval`>, ...the evaluator's fields).
    config.evals = ml_collections.ConfigDict()

    # Devices per mesh axis; their product is the number of devices used.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.sequence = 1
    config.mesh.logical_axis_rules = DEFAULT_RULES
    # With sequence > 1, how the data pipeline lays tokens out over the sequence devices:
    # "zigzag" | "striped" (causal work balanced) | "contiguous" (see attention/ring.py).
    config.mesh.context_parallel_layout = "zigzag"

    # Multi-process runs (TPU pods, GPU clusters, or several processes on localhost).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 1
    config.distributed.process_id = 0
    return config


def with_defaults(saved: Mapping) -> dict:
    """A saved config (config.json's dict) with every field that `base_config()` has and it lacks
    filled in at its default: a run written before a field existed reads as it ran (new fields'
    defaults keep the old behaviour, e.g. data.task.kind = "none")."""
    import json

    def fill(defaults, values):
        out = dict(values)
        for key, default in defaults.items():
            if key not in out:
                out[key] = default
            elif isinstance(default, dict) and isinstance(out[key], dict):
                out[key] = fill(default, out[key])
        return out

    return fill(json.loads(base_config().to_json_best_effort()), saved)


def validate_config(config):
    """Raises one one-line ValueError naming the field, its value and what was expected, unless
    `config` is a valid training config; returns the config.

    Checks, in order: every field is one of `base_config()`'s (outside the free-form `evals`; an
    unknown one is named with the closest valid field) and none is missing; then the model, data,
    train, mesh, distributed and evals sections; then `validate_cross_section`.
    """
    check_fields(config)
    validate_model_config(config.model)
    validate_data_config(config.data)
    validate_train_config(config.train)
    validate_mesh_config(config.mesh)
    validate_distributed_config(config.distributed)
    validate_evals(config.evals, config.data)
    validate_cross_section(config)
    return config


def validate_train_config(train) -> None:
    """The `train` section (see base_config)."""
    checks.check_int("train", "steps", train.steps, minimum=1)
    if train.schedule_steps is not None:
        checks.check_int(
            "train",
            "schedule_steps",
            train.schedule_steps,
            minimum=max(train.steps, 1),
            expected=f"None (= train.steps) or an integer >= train.steps={train.steps}",
        )
    checks.check_int("train", "seed", train.seed, minimum=0, below=2**32)
    checks.check_real(
        "train", "learning_rate", train.learning_rate, minimum=0, exclusive_minimum=True
    )
    checks.check_int("train", "warmup_steps", train.warmup_steps, minimum=0)
    checks.check_real("train", "weight_decay", train.weight_decay, minimum=0)
    checks.check_real("train", "grad_clip", train.grad_clip, minimum=0, exclusive_minimum=True)
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        checks.check_int("train", name, train[name], minimum=1)
    checks.check_str(
        "train",
        "init_from",
        train.init_from,
        "a string: a run directory, '@<variant>' in an ablation, or '' (fresh initialisation)",
    )


def validate_mesh_config(mesh) -> None:
    """The `mesh` section: positive device counts, the layout, and the logical axis rules."""
    for axis in MESH_AXES:
        checks.check_positive_int("mesh", axis, mesh[axis])
    checks.check_choice("mesh", "context_parallel_layout", mesh.context_parallel_layout, LAYOUTS)
    rules = mesh.logical_axis_rules
    pairs = isinstance(rules, tuple | list) and all(
        isinstance(rule, tuple | list) and len(rule) == 2 and isinstance(rule[0], str)
        for rule in rules
    )
    if not pairs:
        checks.fail(
            "mesh",
            "logical_axis_rules",
            rules,
            "a tuple of (logical axis, mesh axis | tuple of mesh axes | None) pairs",
        )
    logical_rules(mesh)  # ValueError naming a rule whose mesh axis does not exist


def validate_distributed_config(distributed) -> None:
    """The `distributed` section (multi-process runs)."""
    checks.check_bool("distributed", "enabled", distributed.enabled)
    checks.check_str(
        "distributed",
        "coordinator_address",
        distributed.coordinator_address,
        "a string 'host:port' ('' = detected on TPU pods and SLURM)",
    )
    count = checks.check_positive_int("distributed", "num_processes", distributed.num_processes)
    checks.check_int(
        "distributed",
        "process_id",
        distributed.process_id,
        minimum=0,
        below=count,
        expected=f"an integer in [0, distributed.num_processes={count})",
    )


def validate_cross_section(config) -> None:
    """Checks of combinations that span sections (each section is already valid on its own).

    The hook for every rule of the form "field A of one section does not work with field B of
    another": add it here, with a message naming both fields and their values.
    """
    mesh, data = config.mesh, config.data
    batch_devices, batch_axes = _devices_for(mesh, "batch")
    if data.batch_size % batch_devices:
        checks.fail(
            "data",
            "batch_size",
            data.batch_size,
            f"a multiple of {batch_devices}, the devices the batch is split over ({batch_axes})",
        )
    length_devices, length_axes = _devices_for(mesh, "length")
    if length_devices > 1:
        try:
            check_layout(data.seq_len, length_devices, mesh.context_parallel_layout)
        except ValueError as error:
            raise ValueError(
                f"data.seq_len={data.seq_len!r}: expected a length that "
                f"mesh.context_parallel_layout={mesh.context_parallel_layout!r} can split over "
                f"the {length_devices} devices of the sequence ({length_axes}): {error}"
            ) from None
    if length_devices > 1 and config.model.attention.kind == "linear":
        checks.fail(
            "model",
            "attention.kind",
            "linear",
            f"a softmax kind ('dense' or 'sparse_topk') with the sequence split over "
            f"{length_devices} devices ({length_axes}): the linear mixer has no context "
            "parallelism (or use mesh.sequence=1)",
        )
    sparse = config.model.attention.sparse
    permuted = length_devices > 1 and mesh.context_parallel_layout != "contiguous"
    if (
        permuted
        and config.model.attention.kind == "sparse_topk"
        and sparse.stage == "sparse"
        and (sparse.granularity == "block" or sparse.selector == "indexer")
    ):
        # Blocks are cut, and top-k ties among equal (ReLU-zero) index scores broken, in array
        # order, which a permuted layout changes: the model would differ from one device's.
        checks.fail(
            "mesh",
            "context_parallel_layout",
            mesh.context_parallel_layout,
            f"'contiguous' for a sparse_topk model in its sparse stage (granularity="
            f"{sparse.granularity!r}, selector={sparse.selector!r}) over the {length_devices} "
            f"sequence devices ({length_axes}): its block and top-k choices follow array order, "
            "which this layout permutes",
        )


def _devices_for(mesh, logical: str) -> tuple[int, str]:
    """How many devices the logical axis is split over under the mesh's rules, and the mesh
    sizes that make that number ("mesh.data=2 x mesh.fsdp=4")."""
    for name, physical in logical_rules(mesh):
        if name == logical:
            axes = [a for a in (physical if isinstance(physical, tuple) else (physical,)) if a]
            sizes = " x ".join(f"mesh.{axis}={mesh[axis]}" for axis in axes)
            return math.prod(mesh[axis] for axis in axes), sizes or "no mesh axis"
    return 1, "no mesh axis"


def check_fields(config, reference=None) -> None:
    """ValueError naming the first field that `base_config()` does not have (with the closest
    valid field), or the first one it has that `config` lacks. `evals` entries are free-form."""
    reference = base_config() if reference is None else reference
    _check_fields(config, reference, "", field_names(reference))


def _is_section(value) -> bool:
    return isinstance(value, Mapping | ml_collections.ConfigDict)


def field_names(section, prefix: str = "", *, free_form: bool = False) -> list[str]:
    """Every dotted name in a (nested) config, sections and fields ("train", "train.steps"); the
    fields inside free-form sections (`evals`) too if `free_form`."""
    names = []
    for key, value in section.items():
        names.append(prefix + key)
        if _is_section(value) and (free_form or prefix + key not in FREE_FORM_SECTIONS):
            names += field_names(value, f"{prefix}{key}.", free_form=free_form)
    return names


def _check_fields(config, reference, prefix: str, all_names: list[str]) -> None:
    if not _is_section(config):
        raise ValueError(
            f"{prefix.rstrip('.') or 'config'}={config!r}: expected a config section "
            f"(ConfigDict) with fields {sorted(reference.keys())}"
        )
    for key in config.keys():
        name = prefix + key
        if key not in reference:
            raise checks.unknown_field(name, suggest_field(name, all_names))
        if name in FREE_FORM_SECTIONS:
            continue
        if _is_section(reference[key]):
            _check_fields(config[key], reference[key], name + ".", all_names)
    missing = [key for key in reference.keys() if key not in config]
    if missing:
        raise ValueError(
            f"{prefix}{missing[0]}: missing config field; expected every field of "
            "base_config() (start the config from longctx_jax.config.base_config())"
        )


def suggest_field(name: str, valid_names) -> str | None:
    """The valid dotted field name closest to `name`: a field of the same name in another
    section, else a sibling with a close name, else the closest dotted name anywhere."""
    valid_names = list(valid_names)
    parent, _, leaf = name.rpartition(".")
    same_leaf = [n for n in valid_names if n.rpartition(".")[2] == leaf]
    if same_leaf:
        return checks.closest(name, same_leaf) or same_leaf[0]
    siblings = {n.rpartition(".")[2]: n for n in valid_names if n.rpartition(".")[0] == parent}
    close = checks.closest(leaf, siblings)
    if close is not None:
        return siblings[close]
    return checks.closest(name, valid_names) if parent not in valid_names else None
