"""Ahead-of-time compilation of the TPU kernels for real TPU generations, from any host.

With `libtpu` installed, `jax.experimental.topologies` describes a TPU slice (e.g. "v5e:2x2")
without one attached; lowering for its devices selects the compiled Mosaic kernel (driver.py
dispatches on the lowering platform) and Mosaic's own compiler checks tiling, VMEM use and layouts
that interpret mode does not. Used by the tests and by benchmarks/tpu_compile.py, which records
the compiled memory analysis.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.flash_attention import tpu


def compile_for_tpu(
    topology: str,
    *,
    length: int = 8192,
    heads: int = 16,
    kv_heads: int = 4,
    head_dim: int = 128,
    dtype=jnp.bfloat16,
    block_q: int | None = None,
    block_kv: int | None = None,
):
    """Compiles forward+backward (causal, packed segments, soft cap, ALiBi) for `topology`.

    One sequence per chip, data-parallel inside `jax.shard_map`. Returns a dict with the number
    of Mosaic kernels in the program, compile seconds and the compiled memory analysis (bytes).
    """
    devices = np.array(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    mesh = jax.sharding.Mesh(devices.reshape(-1), ("data",))
    batch = devices.size

    def local_grads(q, k, v, positions, segments, slopes):
        def loss(q, k, v, slopes):
            out = tpu.flash_attention(
                q,
                k,
                v,
                q_positions=positions,
                kv_positions=positions,
                q_segment_ids=segments,
                kv_segment_ids=segments,
                slopes=slopes,
                causal=True,
                soft_cap=30.0,
                block_q=block_q,
                block_kv=block_kv,
            )
            return jnp.sum(out.astype(jnp.float32) ** 2)

        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, slopes)

    step = jax.shard_map(
        local_grads,
        mesh=mesh,
        in_specs=(P("data"),) * 5 + (P(),),
        out_specs=(P("data"),) * 3 + (P(),),
        check_vma=False,
    )

    def sharded(shape, dt, spec=None):
        spec = P("data") if spec is None else spec
        return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, spec))

    args = (
        sharded((batch, heads, length, head_dim), dtype),
        sharded((batch, kv_heads, length, head_dim), dtype),
        sharded((batch, kv_heads, length, head_dim), dtype),
        sharded((batch, length), jnp.int32),
        sharded((batch, length), jnp.int32),
        sharded((heads,), jnp.float32, P()),
    )
    start = time.perf_counter()
    lowered = jax.jit(step).lower(*args)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    return dict(
        topology=topology,
        length=length,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=jnp.dtype(dtype).name,
        blocks=tpu.BACKEND.blocks(length, length, head_dim, block_q, block_kv, backward=False),
        mosaic_kernels=lowered.as_text().count("tpu_custom_call"),
        compile_seconds=round(time.perf_counter() - start, 2),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
    )
