"""Cost model and measurement helpers: attention FLOPs, this machine's matmul rate, timing, memory.

Timings on a shared CPU drift, so benchmarks report ratios against a baseline measured in the same
run; memory is read from XLA's compiled memory analysis (temporaries, not counting inputs/outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def attention_flops(batch, q_len, kv_len, num_heads, head_dim, *, causal, backward=False):
    """Useful attention FLOPs: 4*B*H*T*S*D forward (QK^T and PV), halved when causal; the
    backward pass adds 2.5x the forward (five matmuls instead of two)."""
    flops = 4.0 * batch * num_heads * q_len * kv_len * head_dim
    if causal:
        flops /= 2
    return flops * 3.5 if backward else flops


def time_call(fn: Callable, *args, repeats: int = 3) -> float:
    """Best-of-`repeats` wall time (seconds) of an already-compiled call, after one warm-up."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def temp_bytes(compiled) -> int | None:
    """Bytes of temporaries XLA allocates for a compiled computation (None if not reported)."""
    analysis = compiled.memory_analysis()
    return None if analysis is None else int(analysis.temp_size_in_bytes)


def peak_bytes(compiled) -> int | None:
    """Per-device bytes a compiled computation needs at once: arguments + outputs + temporaries,
    less outputs aliased to arguments (None if not reported). An upper bound on the live peak."""
    a = compiled.memory_analysis()
    if a is None:
        return None
    total = a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes
    return int(total - a.alias_size_in_bytes)


def matmul_flops_per_second(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
    """This machine's dense matmul rate (FLOP/s) for a size x size x size product."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2.0 * size**3 / time_call(matmul, a, b, repeats=repeats)
