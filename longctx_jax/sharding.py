"""Device mesh from the config and the logical-axis rules that map model axes onto it.

Model code names its axes logically (`batch`, `length`, `embed`, `heads`, ...); the config's
`mesh.logical_axis_rules` says which mesh axis (`data`, `fsdp`, `tensor`, `sequence`) shards each
one. Changing a parallelism strategy is a rule change, never a model change.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Logical axis -> mesh axis (or axes). `length` and `kv_length` ride on `sequence` (context
# parallelism: attention.ring moves K/V between devices itself); `embed` on `fsdp` (parameters
# sharded ZeRO-3 style); heads / mlp / vocab on `tensor` (Megatron style).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "sequence"),
    ("kv_length", "sequence"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def mesh_shape(mesh_config) -> tuple[int, ...]:
    """(data, fsdp, tensor, sequence) sizes, validated against the available devices."""
    shape = tuple(int(mesh_config[name]) for name in MESH_AXES)
    for name, size in zip(MESH_AXES, shape, strict=True):
        if size < 1:
            raise ValueError(f"mesh.{name}={size}: expected a positive number of devices")
    needed, available = math.prod(shape), jax.device_count()
    if needed > available:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, shape, strict=True))} needs {needed} devices; "
            f"only {available} are available"
        )
    return shape


def make_mesh(mesh_config) -> Mesh:
    """A Mesh over the first prod(sizes) devices, axes named as in MESH_AXES."""
    shape = mesh_shape(mesh_config)
    devices = jax.devices()[: math.prod(shape)]
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_rules(mesh_config) -> tuple:
    """The config's rules as the tuple-of-pairs form flax expects."""
    rules = mesh_config.get("logical_axis_rules", None) or DEFAULT_RULES
    out = []
    for logical, physical in rules:
        axes = physical if isinstance(physical, tuple | list) else (physical,)
        for axis in axes:
            if axis is not None and axis not in MESH_AXES:
                raise ValueError(
                    f"mesh.logical_axis_rules: {logical!r} -> {axis!r}: expected mesh axes "
                    f"from {MESH_AXES} or None"
                )
        out.append((logical, tuple(physical) if isinstance(physical, list) else physical))
    return tuple(out)


def state_shardings(abstract_state, mesh: Mesh, rules):
    """NamedShardings for a (possibly abstract) pytree whose leaves carry logical axis names.

    Raises ValueError naming the parameter when a dimension does not divide by its mesh axes.
    """
    specs = nn.get_partition_spec(abstract_state)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_state))
    for (path, leaf), named in zip(leaves, jax.tree.leaves(shardings), strict=True):
        for dim, axes in zip(leaf.shape, named.spec, strict=False):
            axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            ways = math.prod(mesh.shape[a] for a in axes)
            if dim % ways:
                raise ValueError(
                    f"{jax.tree_util.keystr(path)} has shape {leaf.shape}: a dimension of size "
                    f"{dim} is sharded over mesh axes {axes} ({ways} devices); choose mesh sizes "
                    "that divide it (or change mesh.logical_axis_rules)"
                )
    return shardings


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """How a [batch, length] input array is laid out: batch over data axes, length by the rules."""
    spec = nn.logical_to_mesh_axes(("batch", "length"), rules)
    return NamedSharding(mesh, spec)


def length_shards(mesh: Mesh, rules) -> int:
    """How many devices the logical `length` axis is split over (1: no context parallelism)."""
    axes = nn.logical_to_mesh_axes(("length",), rules)[0]
    axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    return math.prod(mesh.shape[a] for a in axes)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
