"""The Pallas sparse-attention kernel against float64 numpy (interpret mode here) and its TPU
ahead-of-time compile (Mosaic's own compiler, libtpu, no TPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.sparse_attention import tpu
from pallas_kernels.sparse_attention.reference import reference_sparse_attention


def numpy_sparse_attention(q, k, v, indices, scale):
    """float64, one (batch, query, head) at a time, straight from the definition."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    groups = n // k.shape[2]
    out = np.zeros((b, t, n, h))
    for bi in range(b):
        for ti in range(t):
            for ni in range(n):
                rows = [r for r in np.asarray(indices)[bi, ti, ni // groups] if r >= 0]
                if not rows:
                    continue
                s = scale * k[bi, rows, ni // groups] @ q[bi, ti, ni]
                p = np.exp(s - s.max())
                out[bi, ti, ni] = (p / p.sum()) @ v[bi, rows, ni // groups]
    return out


def random_case(rng, b, t, s, n, kv_heads, h, slots, dtype):
    q = jnp.asarray(rng.standard_normal((b, t, n, h)), dtype)
    k = jnp.asarray(rng.standard_normal((b, s, kv_heads, h)), dtype)
    v = jnp.asarray(rng.standard_normal((b, s, kv_heads, h)), dtype)
    indices = np.stack(
        [
            [[rng.choice(s, slots, replace=False) for _ in range(kv_heads)] for _ in range(t)]
            for _ in range(b)
        ]
    ).astype(np.int32)
    indices[rng.random(indices.shape) < 0.3] = -1  # slots that do not count
    indices[0, 1] = -1  # a query with no key at all
    return q, k, v, jnp.asarray(indices)


@pytest.mark.parametrize(
    "n,kv_heads,h,slots,chunk,dtype,rtol",
    [
        (4, 2, 64, 20, 8, jnp.float32, 1e-5),  # GQA, slots padded to whole chunks
        (4, 1, 32, 16, 16, jnp.float32, 1e-5),  # MQA (DSA's sharing), one chunk
        (2, 2, 64, 24, 8, jnp.bfloat16, 2e-2),  # MHA, bf16
    ],
)
def test_sparse_kernel_matches_numpy(n, kv_heads, h, slots, chunk, dtype, rtol, seed):
    rng = np.random.default_rng(seed)
    q, k, v, indices = random_case(rng, 2, 6, 40, n, kv_heads, h, slots, dtype)
    out = tpu.sparse_attention(q, k, v, indices, scale=0.2, chunk=chunk)
    expected = numpy_sparse_attention(q, k, v, indices, 0.2)
    err = np.abs(np.asarray(out, np.float64) - expected).max()
    assert err <= rtol * np.abs(expected).max(), f"[seed={seed}] max error {err:.3g}"
    assert not np.asarray(out)[0, 1].any(), "a query with no selected key must output 0"
    reference = reference_sparse_attention(q, k, v, indices, scale=0.2)
    assert (
        np.abs(np.asarray(reference, np.float64) - expected).max() <= rtol * np.abs(expected).max()
    )


def test_bad_chunk_is_named():
    x = jnp.zeros((1, 4, 2, 16))
    with pytest.raises(ValueError, match="chunk=12"):
        tpu.sparse_attention(x, x, x, jnp.zeros((1, 4, 2, 8), jnp.int32), scale=1.0, chunk=12)


def test_sparse_kernel_compiles_for_tpu_without_gathering_in_hbm():
    """v5e, bf16, 4k queries x 1024 selected keys per chip: one Mosaic kernel, and no HBM
    temporaries at all (a gathered K/V would need 4096 * 1024 * 128 * 2 bytes = 1 GiB)."""
    devices = np.array(
        topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    )
    mesh = jax.sharding.Mesh(devices.reshape(-1), ("data",))
    b, t, n, kv_heads, h, slots = devices.size, 4096, 16, 1, 128, 1024
    attend = jax.shard_map(
        lambda q, k, v, i: tpu.sparse_attention(q, k, v, i, scale=0.1),
        mesh=mesh,
        in_specs=(P("data"),) * 4,
        out_specs=P("data"),
        check_vma=False,
    )

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P("data")))

    lowered = jax.jit(attend).lower(
        spec((b, t, n, h), jnp.bfloat16),
        spec((b, t, kv_heads, h), jnp.bfloat16),
        spec((b, t, kv_heads, h), jnp.bfloat16),
        spec((b, t, kv_heads, slots), jnp.int32),
    )
    assert lowered.as_text().count("tpu_custom_call") == 1
    memory = lowered.compile().memory_analysis()
    print(memory)
    assert memory.temp_size_in_bytes < 16 * 2**20
