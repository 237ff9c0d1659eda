"""The Pallas flash-attention kernels (TPU and GPU) against float64 numpy, forward and gradients.

On this CPU machine both kernels run in Pallas interpret mode through the same public call; on a
GPU (JAX_PLATFORMS=cuda pytest -k gpu ...) the GPU kernel is compiled for real. Small blocks make
every test length span several blocks, with padding, and causal / windowed / packed masks skip
whole blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    BF16_RTOL,
    DSLOPES_RTOL,
    F32_RTOL,
    MASK_KINDS,
    Shape,
    assert_close,
    grid_case,
    impl_out_and_grads,
    make_mask,
    mask_arrays,
    random_qkv,
    reference_attention,
    reference_grads,
    visibility,
)

from longctx_jax.attention import AttentionMask, attention
from pallas_kernels.flash_attention import block_sparsity, gpu, tpu
from pallas_kernels.flash_attention.problem import Problem

KERNELS = ("pallas_tpu_tiled", "pallas_gpu_tiled")
SHAPES = (
    Shape(2, 48, 80, 8, 2, 64, window=13),  # GQA, q_len < kv_len
    Shape(1, 67, 67, 4, 1, 80, window=24),  # MQA, lengths and head_dim not block multiples
    Shape(1, 150, 272, 2, 2, 128, window=60),  # MHA, several 128-wide TPU key blocks
)
NAMES = ("dq", "dk", "dv")


def check_case(impl, q, k, v, w, mask, what, rtol, **options):
    out, grads = impl_out_and_grads(
        q,
        k,
        v,
        w,
        mask,
        options.get("slopes"),
        impl=impl,
        **{key: value for key, value in options.items() if key != "slopes"},
    )
    assert out.dtype == q.dtype, f"{what} output dtype {out.dtype}"
    expected, _ = reference_attention(q, k, v, mask, **options)
    assert_close(out, expected, rtol, f"{what} out vs float64 numpy")
    expected_grads = reference_grads(q, k, v, w, mask, **options)
    for name, got, want in zip((*NAMES, "dslopes"), grads, expected_grads, strict=True):
        if want is None:
            continue
        tol = max(rtol, DSLOPES_RTOL) if name == "dslopes" else rtol
        assert_close(got, want, tol, f"{what} {name} vs float64 jax.grad reference")


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_matches_reference(impl, shape, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, shape, kind)
    check_case(impl, q, k, v, w, mask, f"[seed={seed} {impl} {shape} {kind}]", F32_RTOL)


@pytest.mark.parametrize("kind", ["causal", "combined"])
@pytest.mark.parametrize("impl", KERNELS)
def test_kernel_bfloat16(impl, kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, SHAPES[0], kind, jnp.bfloat16)
    check_case(impl, q, k, v, w, mask, f"[seed={seed} {impl} {kind} bf16]", BF16_RTOL)


@pytest.mark.parametrize("impl", KERNELS)
def test_soft_cap_alibi_and_scale(impl, seed):
    rng = np.random.default_rng(seed)
    shape = SHAPES[2]
    q, k, v, w, mask = grid_case(rng, shape, "combined")
    slopes = jnp.asarray(rng.uniform(0.01, 0.5, shape.num_heads), jnp.float32)
    options = dict(scale=0.3, soft_cap=4.0, slopes=slopes)
    check_case(impl, q, k, v, w, mask, f"[seed={seed} {impl} cap+alibi]", F32_RTOL, **options)


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_public_call_default_blocks(impl, seed):
    """attention(impl=...) with the backend's default blocks; on GPU the forward (128 x 64) and
    backward (64 x 64) passes tile head_dim 128 differently."""
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, SHAPES[2], "sliding")
    check_case(impl, q, k, v, w, mask, f"[seed={seed} {impl} default blocks]", F32_RTOL)


@pytest.mark.parametrize("impl", KERNELS)
def test_rows_without_keys_are_zero_with_zero_gradients(impl, seed):
    """Queries whose segment has no key output exactly 0 and pass back exactly 0."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[0]
    q, k, v, w = random_qkv(rng, shape)
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    q_seg = np.where(rng.random((b, t)) < 0.3, 7, 1).astype(np.int32)  # segment 7: no keys
    mask = AttentionMask(
        causal=True, q_segment_ids=jnp.asarray(q_seg), kv_segment_ids=jnp.ones((b, s), jnp.int32)
    )
    out, (dq, _, _, _) = impl_out_and_grads(q, k, v, w, mask, impl=impl)
    lonely = q_seg == 7
    assert not np.asarray(out)[lonely].any() and not np.asarray(dq)[lonely].any()
    expected, _ = reference_attention(q, k, v, mask)
    assert_close(out, expected, F32_RTOL, f"[seed={seed} {impl} lonely rows]")


def test_auto_is_blockwise_on_cpu(seed):
    """`auto` lowers to the blockwise implementation here: same numbers, no kernel call."""
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, SHAPES[0], "causal")
    f = jax.jit(lambda q, k, v: attention(q, k, v, mask=mask, impl="auto"))
    text = f.lower(q, k, v).as_text()
    assert "tpu_custom_call" not in text and "triton" not in text.lower()
    blockwise = attention(q, k, v, mask=mask, impl="blockwise")
    np.testing.assert_array_equal(np.asarray(f(q, k, v)), np.asarray(blockwise))


def test_auto_takes_shapes_a_kernel_cannot(seed):
    """head_dim 512 is beyond the GPU kernel: `auto` still traces and runs (blockwise here)."""
    rng = np.random.default_rng(seed)
    q, k, v, w, mask = grid_case(rng, Shape(1, 16, 16, 2, 1, 512, window=4), "causal")
    out = jax.jit(lambda q, k, v: attention(q, k, v, mask=mask, impl="auto"))(q, k, v)
    expected, _ = reference_attention(q, k, v, mask)
    assert_close(out, expected, F32_RTOL, f"[seed={seed} auto head_dim 512]")


@pytest.mark.parametrize(
    "kernel,blocks,message",
    [
        (tpu, dict(block_kv=64), "multiple of 128"),
        (tpu, dict(block_q=64), "block_q=64: the TPU kernel needs a multiple of 128"),
        (gpu, dict(block_q=48), "power of two"),
        (gpu, dict(block_kv=8), "power of two >= 16"),
    ],
)
def test_unsupported_blocks_are_named(kernel, blocks, message):
    x = jnp.zeros((1, 2, 256, 64))
    ids = jnp.zeros((1, 256), jnp.int32)
    mask = dict(q_positions=ids, kv_positions=ids, q_segment_ids=ids, kv_segment_ids=ids)
    with pytest.raises(ValueError, match=message):
        kernel.flash_attention(x, x, x, **mask, **blocks)


def test_gpu_rejects_huge_head_dim():
    x = jnp.zeros((1, 1, 32, 512))
    ids = jnp.zeros((1, 32), jnp.int32)
    mask = dict(q_positions=ids, kv_positions=ids, q_segment_ids=ids, kv_segment_ids=ids)
    with pytest.raises(ValueError, match="head_dim=512"):
        gpu.flash_attention(x, x, x, **mask)


@pytest.mark.parametrize("kind", ["causal", "sliding", "segments", "combined"])
def test_visited_blocks_are_the_nonempty_blocks(kind, seed):
    """The schedule visits every block holding a visible pair; for causal, windowed and packed
    masks on contiguous positions it visits exactly those."""
    rng = np.random.default_rng(seed)
    shape = Shape(2, 1024, 1024, 1, 1, 64, window=200)
    mask = make_mask(kind, rng, shape)
    b, t, s = shape.batch, shape.q_len, shape.kv_len
    block_q, block_kv = 64, 128
    causal, window, q_pos, kv_pos, q_seg, kv_seg = mask_arrays(mask, b, t, s)
    problem = Problem(causal, window, 1.0, None, False, block_q, block_kv, 1)
    as32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    classes = block_sparsity.tile_classes(problem, *map(as32, (q_pos, q_seg, kv_pos, kv_seg)))
    rows, _ = block_sparsity.row_schedule(classes)
    cols, _ = block_sparsity.column_schedule(classes)

    vis = visibility(mask, b, t, s).reshape(b, t // block_q, block_q, s // block_kv, block_kv)
    nonempty = vis.any(axis=(2, 4))  # [B, nq, nkv]
    full = vis.all(axis=(2, 4))
    got = np.asarray(classes)
    assert (got[nonempty] != block_sparsity.EMPTY).all(), "a block with visible keys is skipped"
    assert (got[got == block_sparsity.FULL] == full[got == block_sparsity.FULL]).all()
    visited = got != block_sparsity.EMPTY
    np.testing.assert_array_equal(np.asarray(rows), visited.sum(-1).reshape(-1))
    np.testing.assert_array_equal(np.asarray(cols), visited.sum(1).reshape(-1))
    if kind != "combined":  # one rule on contiguous positions: per-block ranges are exact
        np.testing.assert_array_equal(visited, nonempty)
    if kind == "causal":  # about half the blocks are skipped
        assert nonempty.sum() < 0.6 * nonempty.size
