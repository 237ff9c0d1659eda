"""`AttentionMask`: which keys each query may see, defined on positions and segment ids.

A key is visible to a query iff
  (not causal or kv_pos <= q_pos) and (window is None or q_pos - kv_pos < window)
  and (no segment ids or q_segment == kv_segment).
Because the rule is written on positions, permuted (zigzag) layouts, ring chunks and KV caches
need no special cases: they only pass the right positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Causal / sliding-window / packed-document mask; arrays are [batch, len] integers."""

    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
    window: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    q_positions: jax.Array | None = None
    kv_positions: jax.Array | None = None

    def validate(self, batch: int, q_len: int, kv_len: int) -> None:
        """Raises ValueError unless the mask fits [batch, q_len] queries, [batch, kv_len] keys."""
        if not isinstance(self.causal, bool | np.bool_):
            raise ValueError(f"mask.causal={self.causal!r}: expected a bool")
        if self.window is not None and (
            isinstance(self.window, bool)
            or not isinstance(self.window, int | np.integer)
            or self.window < 1
        ):
            raise ValueError(f"mask.window={self.window!r}: expected None or an int >= 1")
        if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
            raise ValueError(
                "mask.q_segment_ids and mask.kv_segment_ids: give both or neither "
                f"(got q_segment_ids={_describe(self.q_segment_ids)}, "
                f"kv_segment_ids={_describe(self.kv_segment_ids)})"
            )
        for name, value, length in (
            ("q_segment_ids", self.q_segment_ids, q_len),
            ("kv_segment_ids", self.kv_segment_ids, kv_len),
            ("q_positions", self.q_positions, q_len),
            ("kv_positions", self.kv_positions, kv_len),
        ):
            if value is None:
                continue
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                raise ValueError(
                    f"mask.{name} is a {type(value).__name__}: expected an integer array"
                )
            if tuple(value.shape) != (batch, length):
                raise ValueError(
                    f"mask.{name} has shape {tuple(value.shape)}: expected [batch, len] = "
                    f"{(batch, length)}"
                )
            if not jnp.issubdtype(value.dtype, jnp.integer):
                raise ValueError(f"mask.{name} has dtype {value.dtype}: expected an integer dtype")

    def resolved(self, batch: int, q_len: int, kv_len: int) -> ResolvedMask:
        """Explicit int32 positions and segment ids (defaults: arange and a single segment)."""

        def fill(value, length, default):
            if value is None:
                return jnp.broadcast_to(default(length), (batch, length))
            return jnp.asarray(value, jnp.int32)

        arange = lambda n: jnp.arange(n, dtype=jnp.int32)  # noqa: E731
        zeros = lambda n: jnp.zeros((n,), jnp.int32)  # noqa: E731
        return ResolvedMask(
            causal=self.causal,
            window=self.window,
            q_positions=fill(self.q_positions, q_len, arange),
            kv_positions=fill(self.kv_positions, kv_len, arange),
            q_segment_ids=fill(self.q_segment_ids, q_len, zeros),
            kv_segment_ids=fill(self.kv_segment_ids, kv_len, zeros),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ResolvedMask:
    """An `AttentionMask` with every array present; what implementations consume."""

    causal: bool = dataclasses.field(metadata=dict(static=True))
    window: int | None = dataclasses.field(metadata=dict(static=True))
    q_positions: jax.Array
    kv_positions: jax.Array
    q_segment_ids: jax.Array
    kv_segment_ids: jax.Array


def visible(
    causal: bool,
    window: int | None,
    q_pos: jax.Array,
    kv_pos: jax.Array,
    q_seg: jax.Array,
    kv_seg: jax.Array,
) -> jax.Array:
    """Elementwise visibility; q_* broadcast against kv_* (callers add the axes)."""
    ok = q_seg == kv_seg
    if causal:
        ok &= kv_pos <= q_pos
    if window is not None:
        ok &= q_pos - kv_pos < window
    return ok


def _describe(x) -> str:
    return "None" if x is None else f"array{tuple(x.shape)}"
