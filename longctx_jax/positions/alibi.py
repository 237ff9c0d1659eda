"""ALiBi head slopes: a per-head linear penalty on query-key distance instead of rotating features.

Slopes follow the paper and fairseq's `get_slopes`: for n a power of two, 2^(-8h/n), h = 1..n;
otherwise the slopes of the closest lower power of two, then every other slope of twice that.
"""

from numbers import Integral

import jax.numpy as jnp
import numpy as np


def _power_of_two_slopes(n):
    return 2.0 ** (-8.0 * np.arange(1, n + 1) / n)


def alibi_slopes(num_heads):
    """Per-head ALiBi slopes, float32 [num_heads]; bias = -slope * (q_position - kv_position)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, Integral) or num_heads < 1:
        raise ValueError(f"num_heads={num_heads!r}: expected a positive integer")
    closest = 1 << (int(num_heads).bit_length() - 1)  # largest power of two <= num_heads
    extra = _power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return jnp.asarray(np.concatenate([_power_of_two_slopes(closest), extra]), dtype=jnp.float32)
