"""Ablations: a baseline config and variants that each change only the fields they declare.

An ablation config (configs/ablations/*.py) has `name`, `runner` (the file under experiments/
that trains, evaluates and plots; a path relative to the ablation config file, e.g.
"../../experiments/position_extrapolation.py"), `baseline` (a full training config) and
`variants`, each `ConfigDict(config=<full training config>, changes=(<dotted field names>,))`.
`check_variant` diffs every variant against the baseline and refuses one that changes a field it
did not declare, so an ablation changes one knob at a time by construction, not by convention.

Overrides (`longctx ablate --override=train.steps=5`) shrink a whole ablation for a smoke run:
`apply_overrides` sets the same value in the baseline and in every variant *before* the variants
are checked, so the undeclared-change check is as strict as without them. Overriding a field that
a variant declares would erase the difference that variant studies, so it is refused (naming the
variants) unless `override_declared=True`, which sets it in those variants too.

A variant whose `train.init_from` is "@name" starts from variant `name`'s final checkpoint;
`start_order` sorts the variants so that every one trains after the one it starts from.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

import ml_collections


def new_ablation(name: str, size: str, sizes: dict, runner: str):
    """(the ablation ConfigDict with name "<name>_<size>" and `runner` set, sizes[size]);
    ValueError naming the sizes there are. `runner` is relative to the ablation config file."""
    if size not in sizes:
        raise ValueError(f"size={size!r}: expected one of {tuple(sizes)}")
    ablation = ml_collections.ConfigDict()
    ablation.name = f"{name}_{size}"
    ablation.runner = runner
    return ablation, sizes[size]


def variant(config, *changes):
    """An ablation variant: a full training config and the dotted fields it changes."""
    return ml_collections.ConfigDict(dict(config=config, changes=tuple(changes)))


def flatten(config, prefix: str = "") -> dict:
    """{"model.position.kind": "rope", ...} for every leaf field of a (nested) ConfigDict."""
    items = config.items() if hasattr(config, "items") else ()
    flat = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def changed_fields(baseline, variant) -> dict:
    """{field: (baseline value, variant value)} for fields that differ or exist on one side only."""
    a, b = flatten(baseline), flatten(variant)
    missing = object()
    return {
        key: (a.get(key, missing), b.get(key, missing))
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    }


def check_variant(name: str, baseline, variant, declared) -> dict:
    """Returns the variant's changes; ValueError if it changes an undeclared field or declares a
    field that does not exist."""
    changes = changed_fields(baseline, variant)
    known = set(flatten(baseline)) | set(flatten(variant))
    unknown = [field for field in declared if field not in known]
    if unknown:
        raise ValueError(f"variant {name!r} declares fields that do not exist: {unknown}")
    undeclared = {k: v for k, v in changes.items() if k not in declared}
    if undeclared:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in undeclared.items())
        raise ValueError(
            f"variant {name!r} changes fields it does not declare ({detail}); declare them in "
            "its `changes` or make the variant differ from the baseline only where it says"
        )
    return changes


def checked_variants(ablation) -> dict:
    """{name: (config, changes)} for every variant, each checked against the baseline."""
    out = {}
    for name, variant in ablation.variants.items():
        declared = tuple(variant.changes)
        out[name] = (
            variant.config,
            check_variant(name, ablation.baseline, variant.config, declared),
        )
    return out


def validate_ablation(ablation) -> dict:
    """`checked_variants`, after every training config (the baseline and each variant's) passed
    `validate_config`; errors name the variant. Returns {name: (config, changes)}."""
    from longctx_jax.config import validate_config

    configs = {"baseline": ablation.baseline}
    configs.update({f"variant {name!r}": v.config for name, v in ablation.variants.items()})
    for where, config in configs.items():
        try:
            validate_config(config)
        except ValueError as error:
            raise ValueError(f"ablation {where}: {error}") from None
    variants = checked_variants(ablation)
    start_order(variants)
    return variants


# --- Overrides --------------------------------------------------------------------------------


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """["train.steps=5", ...] -> {"train.steps": "5", ...} (later items win)."""
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"--override={item!r}: expected FIELD=VALUE, e.g. train.steps=5")
        out[field.strip()] = value
    return out


def apply_overrides(ablation, overrides: Mapping[str, str], *, override_declared: bool = False):
    """A copy of `ablation` with each overridden field (a dotted name of the training config,
    value as text) set in the baseline and every variant; see the module docstring.

    ValueError (one line) for an unknown field (with the closest valid one), a section instead
    of a field, a value that does not parse as the field's type, or a field that variants declare
    (unless override_declared).
    """
    from longctx_jax.checks import unknown_field
    from longctx_jax.config import field_names, suggest_field

    ablation = copy.deepcopy(ablation)
    baseline = ablation.baseline
    for field, text in overrides.items():
        parent, leaf = _parent(baseline, field)
        if parent is None or leaf not in parent:
            raise unknown_field(f"--override={field}", suggest_field(field, field_names(baseline)))
        if hasattr(parent[leaf], "items"):
            raise ValueError(
                f"--override={field}={text}: {field} is a config section; expected a field "
                f"(one of {sorted(f'{field}.{k}' for k in parent[leaf])})"
            )
        value = _parse_value(field, text, parent.get_type(leaf))
        declaring = [
            name
            for name, variant in ablation.variants.items()
            if any(d == field or d.startswith(field + ".") for d in variant.changes)
        ]
        if declaring and not override_declared:
            raise ValueError(
                f"--override={field}={text}: variants {declaring} declare {field} in their "
                "`changes` (the difference they study); overriding it would erase that; pass "
                "--override_declared to set it in those variants too (smoke runs only)"
            )
        for config in [baseline] + [v.config for v in ablation.variants.values()]:
            target, _ = _parent(config, field)
            target[leaf] = value
    return ablation


def _parent(config, field: str):
    """(the section holding `field`, its last name part), or (None, last part) if a section on
    the way is missing."""
    *path, leaf = field.split(".")
    node = config
    for part in path:
        if not hasattr(node, "items") or part not in node:
            return None, leaf
        node = node[part]
    return (node if hasattr(node, "items") else None), leaf


_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    tuple: "a tuple such as (1, 2)",
    list: "a list such as [1, 2]",
}


def _parse_value(field: str, text: str, kind: type):
    """The text of an override as the field's type (int, float, bool, str, tuple; "None" for an
    optional number)."""
    if text == "None" and kind in (int, float):
        return None
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        value = ast.literal_eval(text)
        if kind in (tuple, list) and not isinstance(value, tuple | list):
            value = (value,)
        return kind(value) if kind in (tuple, list) else value
    except (ValueError, SyntaxError):
        raise ValueError(
            f"--override={field}={text}: expected {_TYPE_NAMES.get(kind, kind.__name__)} "
            f"(the type of {field})"
        ) from None


# --- Runners ----------------------------------------------------------------------------------


def runner_path(ablation, config_file: str | Path | None = None) -> Path:
    """The ablation's runner file: `ablation.runner`, relative to the directory of the ablation
    config file (or absolute)."""
    runner = ablation.get("runner", None)
    if not isinstance(runner, str) or not runner:
        raise ValueError(
            f"ablation.runner={runner!r}: expected the path of the runner file, relative to the "
            "ablation config (e.g. '../../experiments/position_extrapolation.py')"
        )
    path = Path(runner)
    if not path.is_absolute() and config_file is not None:
        path = Path(config_file).parent / path
    return path


def load_runner(path: str | Path) -> ModuleType:
    """Imports the runner file (experiments/<name>.py) by its path, so it works from any
    directory and never collides with another package called `experiments`; ValueError unless
    the file exists and defines `run(ablation, workdir)`."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"ablation.runner: {str(path)!r}: expected an existing runner file")
    name = f"longctx_runner_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"ablation.runner: {str(path)!r}: expected a file defining run()")
    return module


# --- Training the variants --------------------------------------------------------------------


def start_order(variants: dict) -> list[str]:
    """Variant names, every one after the variant it starts from ("@name"); ValueError on an
    unknown name or a cycle."""
    order: list[str] = []

    def visit(name, path):
        if name in order:
            return
        if name in path:
            raise ValueError(f"variants start from each other in a cycle: {path + (name,)}")
        parent = variants[name][0].train.init_from
        if parent.startswith("@"):
            if parent[1:] not in variants:
                raise ValueError(f"variant {name!r}: train.init_from={parent!r} names no variant")
            visit(parent[1:], path + (name,))
        order.append(name)

    for name in variants:
        visit(name, ())
    return order


def train_variants(ablation, workdir: Path, *, seeds=None) -> dict:
    """Trains (or resumes) every variant in `start_order`, each in workdir/<name>; returns
    {name: (config, its workdir)}.

    With `seeds` (a sequence of ints), every variant trains once per seed s in
    workdir/<name>/seed_<s>, with `train.seed` and `data.seed` set to s (a variant starting from
    "@parent" starts from the same seed's parent); returns {(name, s): (config, its workdir)}.
    """
    from longctx_jax.train.loop import train

    workdir = Path(workdir)
    out = {}
    variants = checked_variants(ablation)
    for seed in [None] if seeds is None else list(seeds):
        for name in start_order(variants):
            config = variants[name][0].copy_and_resolve_references()
            run_dir = workdir / name if seed is None else workdir / name / f"seed_{seed}"
            parent = config.train.init_from
            if parent.startswith("@"):
                parent_dir = workdir / parent[1:]
                config.train.init_from = str(
                    parent_dir if seed is None else parent_dir / f"seed_{seed}"
                )
            if seed is not None:
                config.train.seed = config.data.seed = int(seed)
            print(f"== training {name}" + ("" if seed is None else f" (seed {seed})"))
            train(config, run_dir)
            out[name if seed is None else (name, seed)] = (config, run_dir)
    return out
