"""Decode attention (pallas_kernels/decode_attention) against a float64 numpy reference.

Every backend -- "xla", and the TPU and GPU kernels in Pallas interpret mode -- on fresh random
caches: float32 and bfloat16, packed 8- and 4-bit codes (symmetric and asymmetric, unpacked here
with numpy from the same bytes), MHA / GQA / MQA, 1 and 4 new tokens, empty slots, windows,
ALiBi, soft caps, causal queries inside the cache, and a cache length that is not a whole number
of blocks. The TPU kernel also compiles ahead of time with Mosaic for a TPU target (libtpu), and
the GPU kernel lowers to Triton for an abstract H100 (no GPU needed to check Triton's rules).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels.decode_attention import decode_attention

BATCH, HEAD_DIM, CACHE = 2, 32, 300  # 300 keys: 2.3 TPU blocks of 128, 9.4 GPU blocks of 32
BLOCKS = dict(xla=None, tpu=128, gpu=32)
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def unpack(packed, bits):
    """uint8 [..., W] -> codes [..., W * 8 // bits]: code j of slice i is bits [i*b, (i+1)*b)."""
    slices = [(packed >> (bits * i)) & ((1 << bits) - 1) for i in range(8 // bits)]
    return np.concatenate(slices, axis=-1).astype(np.float64)


def dequantize(packed, bits, scale, minimum):
    codes = unpack(packed, bits)
    if minimum is None:
        return (codes - (2 ** (bits - 1) - 1)) * scale
    return codes * scale + minimum


def attention(q, k, v, q_pos, kv_pos, q_seg, kv_seg, *, causal, window, scale, soft_cap, slopes):
    """float64 attention, [B, T, N, H]; kv head of query head n is n // (N // K)."""
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if soft_cap is not None:
        s = soft_cap * np.tanh(s / soft_cap)
    distance = (q_pos[:, :, None] - kv_pos[:, None, :]).astype(np.float64)
    if slopes is not None:
        s = s - slopes[None, :, None, None] * distance[:, None]
    ok = q_seg[:, :, None] == kv_seg[:, None, :]
    if causal:
        ok &= distance >= 0
    if window is not None:
        ok &= distance < window
    s = np.where(ok[:, None], s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    p = np.where(ok[:, None], np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = p.sum(axis=-1, keepdims=True)
    p = p / np.where(total > 0, total, 1.0)
    return np.einsum("bnts,bsnh->btnh", p, v)


def make_case(seed, *, dtype, bits, asymmetric, heads, kv_heads, new_tokens, length=CACHE):
    """((q, keys, values, array kwargs), float64 reference inputs). Row 0's cache is full, row
    1's is filled to 250 with random holes; the new tokens are the last ones written (causal hides
    later slots). Row 1's last query has a segment no key has (it must output 0)."""
    rng = np.random.default_rng(seed)
    b, t = BATCH, new_tokens
    q = jnp.asarray(rng.normal(size=(b, t, heads, HEAD_DIM)), dtype)
    kv_pos = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy()
    kv_seg = np.zeros((b, length), np.int32)
    kv_seg[1, 250:] = -1
    kv_seg[1, rng.choice(250, 25, replace=False)] = -1
    filled = np.array([length, 250])
    q_pos = (filled[:, None] - t + np.arange(t)).astype(np.int32)
    q_seg = np.zeros((b, t), np.int32)
    q_seg[1, -1] = 7
    shape = (b, length, kv_heads)
    if bits is None:
        keys, values = (jnp.asarray(rng.normal(size=(*shape, HEAD_DIM)), dtype) for _ in "kv")
        k, v = (np.asarray(x, np.float64) for x in (keys, values))
        quantized = {}
    else:
        width = HEAD_DIM * bits // 8
        keys, values = (rng.integers(0, 256, (*shape, width), dtype=np.uint8) for _ in "kv")
        top = 2**bits - 1 if asymmetric else 2 ** (bits - 1) - 1
        stats = {}
        for name in ("key", "value"):
            stats[name + "_scale"] = rng.uniform(1.0, 3.0, (*shape, 1)).astype(np.float32) / top
            minimum = rng.uniform(-2.0, -1.0, (*shape, 1)).astype(np.float32)
            stats[name + "_minimum"] = minimum if asymmetric else None
        k = dequantize(keys, bits, stats["key_scale"], stats["key_minimum"])
        v = dequantize(values, bits, stats["value_scale"], stats["value_minimum"])
        quantized = stats
    mask = dict(q_positions=q_pos, kv_positions=kv_pos, q_segment_ids=q_seg, kv_segment_ids=kv_seg)
    reference = (np.asarray(q, np.float64), k, v, q_pos, kv_pos, q_seg, kv_seg)
    return (q, keys, values, mask | quantized), reference


def decode(q, keys, values, arrays, **static):
    """decode_attention under one jit: `arrays` (mask, scales, slopes) traced, the rest static."""

    def call(q, keys, values, arrays):
        return decode_attention(q, keys, values, **arrays, **static)

    return jax.jit(call)(q, keys, values, arrays)


CASES = {
    "f32-mha-1tok": dict(dtype=jnp.float32, bits=None, asymmetric=False, heads=2, kv_heads=2,
                         new_tokens=1, options=dict(), splits=None),
    "bf16-gqa-window-alibi": dict(dtype=jnp.bfloat16, bits=None, asymmetric=False, heads=4,
                                  kv_heads=2, new_tokens=4, options=dict(window=100, alibi=True),
                                  splits=2),
    "int8-sym-mqa-cap-noncausal": dict(dtype=jnp.float32, bits=8, asymmetric=False, heads=4,
                                       kv_heads=1, new_tokens=4,
                                       options=dict(soft_cap=2.0, causal=False), splits=3),
    "int8-asym-gqa-bf16": dict(dtype=jnp.bfloat16, bits=8, asymmetric=True, heads=4, kv_heads=2,
                               new_tokens=1, options=dict(window=150, alibi=True), splits=None),
    "int4-sym-gqa": dict(dtype=jnp.float32, bits=4, asymmetric=False, heads=4, kv_heads=2,
                         new_tokens=4, options=dict(soft_cap=3.0, alibi=True), splits=2),
    "int4-asym-mqa-bf16": dict(dtype=jnp.bfloat16, bits=4, asymmetric=True, heads=2, kv_heads=1,
                               new_tokens=1, options=dict(window=64), splits=None),
}  # fmt: skip


def run(backend, inputs, case, seed):
    (q, keys, values, kwargs), ref_inputs = inputs
    options = dict(case["options"])
    rng = np.random.default_rng(seed + 1)
    slopes = (
        rng.uniform(0.0, 0.2, case["heads"]).astype(np.float32) if options.pop("alibi", 0) else None
    )
    logits = dict(causal=True, window=None, scale=HEAD_DIM**-0.5, soft_cap=None) | options
    out = decode(q, keys, values, kwargs | dict(slopes=slopes), **logits, bits=case["bits"],
                 backend=backend, block_kv=BLOCKS[backend], num_splits=case["splits"])  # fmt: skip
    expected = attention(*ref_inputs, **logits, slopes=slopes)
    return out, expected


@pytest.mark.parametrize("backend", ["xla", "tpu", "gpu"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference(name, backend, seed):
    case = CASES[name]
    inputs = make_case(
        seed,
        **{k: case[k] for k in ("dtype", "bits", "asymmetric", "heads", "kv_heads", "new_tokens")},
    )
    out, expected = run(backend, inputs, case, seed)
    assert out.shape == expected.shape and out.dtype == case["dtype"]
    tol = TOLERANCE[case["dtype"]]
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=tol, rtol=tol)
    assert np.all(np.asarray(out[1, -1]) == 0)  # the query that sees no key


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_blocks_no_query_sees_are_not_read(backend, seed):
    """A window leaves the first 128 keys unseen: NaN there cannot reach the kernels' output."""
    case = dict(dtype=jnp.float32, bits=None, asymmetric=False, heads=2, kv_heads=1, new_tokens=1)
    (q, keys, values, kwargs), ref = make_case(seed, **case)
    poisoned = [x.at[:, :128].set(jnp.nan) for x in (keys, values)]
    out = decode(q, *poisoned, kwargs, window=40, scale=0.2, backend=backend,
                 block_kv=BLOCKS[backend], num_splits=2)  # fmt: skip
    expected = attention(*ref, causal=True, window=40, scale=0.2, soft_cap=None, slopes=None)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=2e-5)


def test_auto_is_xla_on_cpu(seed):
    case = dict(dtype=jnp.float32, bits=4, asymmetric=True, heads=4, kv_heads=2, new_tokens=1)
    (q, keys, values, kwargs), _ = make_case(seed, **case)
    auto, xla = (
        decode(q, keys, values, kwargs, bits=4, scale=0.2, backend=b) for b in ("auto", "xla")
    )
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_tpu_kernel_compiles_with_mosaic(bits):
    """Lowered for a v5e chip, the call is one Mosaic kernel whose temporaries are far below a
    dequantised cache's size (the codes are unpacked in VMEM, block by block)."""
    devices = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    sharding = NamedSharding(jax.sharding.Mesh(np.array(devices[:1]), ("d",)), P())
    b, t, n, k, h, s = 1, 4, 16, 4, 128, 8192 + 100  # a partial last block
    width = h if bits is None else h * bits // 8
    cache = jax.ShapeDtypeStruct((b, s, k, width), jnp.bfloat16 if bits is None else jnp.uint8)
    stat = jax.ShapeDtypeStruct((b, s, k, 1), jnp.float32)
    ints = lambda length: jax.ShapeDtypeStruct((b, length), jnp.int32)  # noqa: E731

    def step(q, keys, values, q_pos, kv_pos, q_seg, kv_seg, key_scale, value_minimum, slopes):
        quantized = (
            {}
            if bits is None
            else dict(
                bits=bits, key_scale=key_scale, value_scale=key_scale, value_minimum=value_minimum
            )
        )
        return decode_attention(q, keys, values, q_positions=q_pos, kv_positions=kv_pos,
                                q_segment_ids=q_seg, kv_segment_ids=kv_seg, window=4096,
                                scale=h**-0.5, soft_cap=30.0, slopes=slopes, backend="tpu",
                                **quantized)  # fmt: skip

    args = (jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16), cache, cache, ints(t), ints(s),
            ints(t), ints(s), stat, stat, jax.ShapeDtypeStruct((n,), jnp.float32))  # fmt: skip
    args = [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) for x in args]
    lowered = jax.jit(step).lower(*args)
    compiled = lowered.compile()
    assert lowered.as_text().count("tpu_custom_call") == 1
    dequantised_keys = b * s * k * h * 2
    assert compiled.memory_analysis().temp_size_in_bytes < dequantised_keys / 8


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")
@pytest.mark.parametrize("bits", [None, 8, 4])
def test_gpu_kernel_lowers_to_triton(bits):
    """Lowered for an (abstract) H100, the call is one Triton kernel: Triton's shape rules
    (power-of-two tiles >= 16) hold for 32 heads x 128, 8 kv heads and a ragged cache length."""
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                       platform="gpu")  # fmt: skip
    b, t, n, k, h, s = 1, 1, 32, 8, 128, 4096 + 100
    width = h if bits is None else h * bits // 8
    cache = jax.ShapeDtypeStruct((b, s, k, width), jnp.bfloat16 if bits is None else jnp.uint8)
    stat = jax.ShapeDtypeStruct((b, s, k, 1), jnp.float32)
    ints = lambda length: jax.ShapeDtypeStruct((b, length), jnp.int32)  # noqa: E731

    def step(q, keys, values, q_pos, kv_pos, seg, key_scale, key_minimum, slopes):
        quantized = (
            {}
            if bits is None
            else dict(
                bits=bits, key_scale=key_scale, value_scale=key_scale, key_minimum=key_minimum
            )
        )
        return decode_attention(q, keys, values, q_positions=q_pos, kv_positions=kv_pos,
                                q_segment_ids=seg[:, :t], kv_segment_ids=seg, window=1024,
                                scale=h**-0.5, soft_cap=30.0, slopes=slopes, backend="gpu",
                                **quantized)  # fmt: skip

    args = (jax.ShapeDtypeStruct((b, t, n, h), jnp.bfloat16), cache, cache, ints(t), ints(s),
            ints(s), stat, stat, jax.ShapeDtypeStruct((n,), jnp.float32))  # fmt: skip
    with jax.sharding.use_abstract_mesh(
        jax.sharding.AbstractMesh((1,), ("d",), abstract_device=h100)
    ):
        lowered = jax.jit(step).trace(*args).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 1


def _inputs(**changes):
    b, t, n, k, h, s = 1, 1, 4, 2, 32, 64
    args = dict(
        q=jnp.zeros((b, t, n, h)),
        keys=jnp.zeros((b, s, k, h // 2), jnp.uint8),
        values=jnp.zeros((b, s, k, h // 2), jnp.uint8),
        q_positions=jnp.zeros((b, t), jnp.int32),
        kv_positions=jnp.zeros((b, s), jnp.int32),
        q_segment_ids=jnp.zeros((b, t), jnp.int32),
        kv_segment_ids=jnp.zeros((b, s), jnp.int32),
        scale=0.1,
        bits=4,
        key_scale=jnp.ones((b, s, k, 1)),
        value_scale=jnp.ones((b, s, k, 1)),
    )
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(bits=2), r"bits=2"),
        (dict(bits=3), r"bits=3"),
        (dict(key_scale=None), r"key_scale=None: required"),
        (dict(value_minimum=jnp.ones((1, 64, 2))), r"value_minimum \(1, 64, 2\)"),
        (dict(bits=8), r"keys \(1, 64, 2, 16\) uint8: expected .*\[B=1, S, K, 32\]"),
        (dict(values=jnp.zeros((1, 63, 2, 16), jnp.uint8)), r"values \(1, 63, 2, 16\)"),
        (
            dict(
                keys=jnp.zeros((1, 64, 3, 16), jnp.uint8),
                values=jnp.zeros((1, 64, 3, 16), jnp.uint8),
            ),
            r"keys .*kv heads dividing N=4",
        ),
        (dict(keys=jnp.zeros((1, 64, 2, 16), jnp.float32)), r"keys \(1, 64, 2, 16\) float32"),
        (dict(bits=None), r"keys .* expected a float32"),
        (dict(q_positions=jnp.zeros((1, 2), jnp.int32)), r"q_positions \(1, 2\)"),
        (dict(kv_segment_ids=jnp.zeros((1, 64))), r"kv_segment_ids \(1, 64\) float32"),
        (dict(slopes=jnp.ones(3)), r"slopes \(3,\)"),
        (dict(soft_cap=0.0), r"soft_cap=0.0"),
        (dict(window=0), r"window=0"),
        (dict(backend="cuda"), r"backend='cuda'"),
        (dict(backend="tpu", block_kv=100), r"block_kv=100: the TPU kernel"),
        (dict(backend="gpu", block_kv=48), r"block_kv=48: the GPU kernel"),
        (dict(backend="gpu", num_splits=0), r"num_splits=0"),
    ],
)
def test_bad_input_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        decode_attention(**_inputs(**changes))
