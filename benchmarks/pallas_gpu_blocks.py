"""Block-size / warp sweep of the Pallas GPU flash-attention kernel (bf16, causal, 16k tokens x2).

Run on a CUDA machine: python benchmarks/pallas_gpu_blocks.py. Prints TFLOP/s (useful causal FLOPs)
for forward and forward+backward per configuration, timed in the same process.
"""

import itertools
import time

import jax
import jax.numpy as jnp

from longctx_jax.bench.cost import attention_flops
from pallas_kernels.flash_attention import gpu


def timed(fn, *args, repeats=10):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(batch=2, heads=16, length=16384, head_dim=128):
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (batch, heads, length, head_dim)
    q, k, v, do = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
    ids = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    mask = dict(q_positions=ids, kv_positions=ids, q_segment_ids=0 * ids, kv_segment_ids=0 * ids)
    flops = attention_flops(batch, length, length, heads, head_dim, causal=True)
    default_params = gpu.NUM_WARPS, gpu.NUM_STAGES
    for (bq, bkv), warps, stages in itertools.product(
        [(128, 64), (128, 128), (64, 64), (64, 128)], [4, 8], [2, 3]
    ):
        gpu.NUM_WARPS, gpu.NUM_STAGES = warps, stages

        def attend(q, k, v, bq=bq, bkv=bkv):
            return gpu.flash_attention(q, k, v, causal=True, block_q=bq, block_kv=bkv, **mask)

        fwd = jax.jit(attend)
        fwd_bwd = jax.jit(lambda q, k, v, do, f=attend: jax.vjp(f, q, k, v)[1](do))
        try:
            t_f = timed(fwd, q, k, v)
            t_b = timed(fwd_bwd, q, k, v, do)
        except Exception as error:  # a configuration Triton cannot compile (shared memory, ...)
            print(f"bq={bq} bkv={bkv} warps={warps} stages={stages}: {type(error).__name__}")
            continue
        print(
            f"bq={bq:4d} bkv={bkv:4d} warps={warps} stages={stages}: "
            f"fwd {flops / t_f / 1e12:6.1f} TFLOP/s  "
            f"fwd+bwd {3.5 * flops / t_b / 1e12:6.1f} TFLOP/s"
        )
    gpu.NUM_WARPS, gpu.NUM_STAGES = default_params


if __name__ == "__main__":
    main()
