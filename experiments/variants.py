"""Training an ablation's variants, each after the variant its `train.init_from = "@name"` names."""

from __future__ import annotations

from pathlib import Path

from longctx_jax.ablation import checked_variants
from longctx_jax.train.loop import train


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


def train_variants(ablation, workdir: Path) -> dict:
    """Trains (or resumes) every variant; returns {name: (config, its workdir)}."""
    out = {}
    variants = checked_variants(ablation)
    for name in start_order(variants):
        config = variants[name][0].copy_and_resolve_references()
        if config.train.init_from.startswith("@"):
            config.train.init_from = str(workdir / config.train.init_from[1:])
        print(f"== training {name}")
        train(config, workdir / name)
        out[name] = (config, workdir / name)
    return out
