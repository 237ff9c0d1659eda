"""Position schemes: RoPE frequencies (with context-extension scalings), apply_rope, ALiBi slopes.

`KINDS` names every scheme a model can pick: the RoPE kinds, "alibi", and "nope" (no positional
signal at all: nothing to compute).
"""

from longctx_jax.positions.alibi import alibi_slopes
from longctx_jax.positions.apply import LAYOUTS, apply_rope
from longctx_jax.positions.rope import ROPE_KINDS, rope_frequencies

KINDS = (*ROPE_KINDS, "alibi", "nope")

__all__ = ["KINDS", "LAYOUTS", "ROPE_KINDS", "alibi_slopes", "apply_rope", "rope_frequencies"]
