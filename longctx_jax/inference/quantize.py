"""Low-bit codes for KV caches: group quantisation, bit packing, and what each layout costs.

A tensor x is cut into groups along one axis (`group_size` elements; the whole axis if None);
each group stores unsigned codes c in [0, 2^bits) and float32 statistics:

  symmetric   (absmax)  x ~ (c - m) * scale,         m = 2^(bits-1) - 1, scale = max|x| / m
  asymmetric  (min-max) x ~ c * scale + minimum,      scale = (max - min) / (2^bits - 1)

Symmetric per-token int8 is MaxText's and kvpress's int8 cache; KIVI (Liu et al. 2024) is
asymmetric, keys grouped along *tokens* per channel (a channel's outliers get their own scale)
and values grouped along *channels* per token. Codes are packed 8 // bits to a byte along the last
axis in "split" order: byte j holds code j of each of the 8 // bits equal slices of the axis,
slice i in bits [i * bits, (i + 1) * bits), so unpacking is shifts, masks and one concatenate.
Every function is pure jnp; the decode kernel (pallas_kernels/decode_attention) reads the same
layout and dequantises in-kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

BITS = (2, 4, 8)


def check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits={bits!r}: expected one of {BITS}")
    return int(bits)


def pack(codes, bits: int) -> jax.Array:
    """uint8 codes [..., D] in [0, 2^bits) -> uint8 [..., D * bits // 8] (split order)."""
    bits = check_bits(bits)
    per_byte = 8 // bits
    d = codes.shape[-1]
    if d % per_byte:
        raise ValueError(
            f"last axis {d}: expected a multiple of {per_byte} to pack {bits}-bit codes"
        )
    slices = jnp.split(codes.astype(jnp.uint8), per_byte, axis=-1)
    out = slices[0]
    for i, part in enumerate(slices[1:], start=1):
        out = out | (part << (bits * i))
    return out


def unpack(packed, bits: int) -> jax.Array:
    """Inverse of `pack`: uint8 [..., D * bits // 8] -> uint8 codes [..., D]."""
    bits = check_bits(bits)
    if bits == 8:
        return packed
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(8 // bits)]
    return jnp.concatenate(parts, axis=-1).astype(jnp.uint8)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized:
    """Packed codes with their group statistics (scale, and minimum when asymmetric).

    `scale` / `minimum` have x's shape with the grouped axis divided by the group size (kept as a
    length-1 axis when the group is the whole axis)."""

    codes: jax.Array
    scale: jax.Array
    minimum: jax.Array | None
    bits: int = dataclasses.field(metadata=dict(static=True))
    axis: int = dataclasses.field(metadata=dict(static=True))
    group_size: int = dataclasses.field(metadata=dict(static=True))

    @property
    def nbytes(self) -> int:
        arrays = (self.codes, self.scale, self.minimum)
        return sum(a.size * a.dtype.itemsize for a in arrays if a is not None)


def _grouped(x, axis: int, group_size: int):
    """x with `axis` split into (num_groups, group_size) -> (array, axis of the group members)."""
    shape = x.shape
    if shape[axis] % group_size:
        raise ValueError(
            f"axis {axis} has {shape[axis]} elements: expected a multiple of "
            f"group_size={group_size}"
        )
    new = shape[:axis] + (shape[axis] // group_size, group_size) + shape[axis + 1 :]
    return x.reshape(new), axis + 1


def quantize(x, bits: int, *, axis: int = -1, group_size: int | None = None, symmetric: bool):
    """x (float) -> `Quantized`; groups of `group_size` consecutive elements along `axis`."""
    bits = check_bits(bits)
    axis = axis % x.ndim
    group_size = x.shape[axis] if group_size is None else group_size
    xg, member = _grouped(x.astype(jnp.float32), axis, group_size)
    top = (1 << bits) - 1
    if symmetric:
        mid = (1 << (bits - 1)) - 1
        scale = jnp.max(jnp.abs(xg), axis=member, keepdims=True) / mid
        safe = jnp.where(scale > 0, scale, 1.0)
        codes = jnp.clip(jnp.round(xg / safe) + mid, 0, top)
        minimum = None
    else:
        lo = jnp.min(xg, axis=member, keepdims=True)
        scale = (jnp.max(xg, axis=member, keepdims=True) - lo) / top
        safe = jnp.where(scale > 0, scale, 1.0)
        codes = jnp.clip(jnp.round((xg - lo) / safe), 0, top)
        minimum = jnp.squeeze(lo, member)
    codes = codes.astype(jnp.uint8).reshape(x.shape)
    return Quantized(
        codes=pack(codes, bits),
        scale=jnp.squeeze(scale, member),
        minimum=minimum,
        bits=bits,
        axis=axis,
        group_size=group_size,
    )


def dequantize(q: Quantized, dtype=jnp.float32) -> jax.Array:
    """`Quantized` -> the float array it approximates, in `dtype`."""
    codes = unpack(q.codes, q.bits).astype(jnp.float32)
    grouped, member = _grouped(codes, q.axis, q.group_size)
    scale = jnp.expand_dims(q.scale, member)
    if q.minimum is None:
        x = (grouped - ((1 << (q.bits - 1)) - 1)) * scale
    else:
        x = grouped * scale + jnp.expand_dims(q.minimum, member)
    return x.reshape(codes.shape).astype(dtype)
