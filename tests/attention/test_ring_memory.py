"""Per-device memory of context-parallel attention: O(L / n), read from XLA's compiled analysis.

Compiles (never runs) forward+backward of causal ring attention on 8 simulated CPU devices at
local lengths large enough that the per-token buffers dominate the fixed tile temporaries.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from longctx_jax.attention import AttentionMask, attention
from longctx_jax.attention.ring import context_parallel_attention

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 64
MASK = AttentionMask(causal=True)


def fwd_bwd_temp_bytes(length, n=None):
    """Per-device temporaries of grad(sum(out**2)); n=None is single-device blockwise."""
    q = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, KV_HEADS, HEAD_DIM), jnp.float32)
    if n is None:
        fn = lambda q, k, v: attention(q, k, v, mask=MASK, impl="blockwise")  # noqa: E731
    else:
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("sequence",))
        fn = lambda q, k, v: context_parallel_attention(q, k, v, mask=MASK, mesh=mesh)  # noqa: E731
    loss = lambda q, k, v: jnp.sum(jnp.square(fn(q, k, v)))  # noqa: E731
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_ring_memory_grows_as_length_over_devices():
    length = 32768
    base = fwd_bwd_temp_bytes(length, 8)
    ratios = {
        "double L": fwd_bwd_temp_bytes(2 * length, 8) / base,
        "halve n": fwd_bwd_temp_bytes(length, 4) / base,
    }
    for what, ratio in ratios.items():
        assert 1.7 <= ratio <= 2.2, f"{what}: per-device temporaries x{ratio:.2f}, expected ~2"
    single = fwd_bwd_temp_bytes(length)
    assert base < single / 3, f"ring n=8 {base / 2**20:.0f} MiB vs one device {single / 2**20:.0f}"
