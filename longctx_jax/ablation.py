"""Ablations: a baseline config and variants that each change only the fields they declare.

An ablation config (configs/ablations/*.py) has `name`, `experiment` (the runner under
experiments/ that evaluates and plots), `baseline` (a full training config) and `variants`, each
`ConfigDict(config=<full training config>, changes=(<dotted field names>,))`. `check_variant`
diffs every variant against the baseline and refuses one that changes a field it did not declare,
so an ablation changes one knob at a time by construction, not by convention.
"""

from __future__ import annotations

from collections.abc import Mapping


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
