"""Context-parallel attention on 8 simulated CPU devices against single-device references.

Each case lays a fresh random batch out over n devices (`reorder_for_context_parallel`), runs
`context_parallel_attention` forward and backward, restores the original order, and compares with
`attention(impl="reference")` on the unpermuted inputs and with the float64 references of
attention_reference.py.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import (
    BF16_RTOL,
    DSLOPES_RTOL,
    F32_RTOL,
    assert_close,
    reference_attention,
)
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from longctx_jax.attention import AttentionMask, attention, ring
from longctx_jax.attention.ring import (
    LAYOUTS,
    STRATEGIES,
    context_parallel_attention,
    reorder_for_context_parallel,
)

BATCH, LENGTH, HEADS, KV_HEADS, HEAD_DIM = 2, 64, 4, 2, 16  # GQA; 64 = 4 * 2n for n = 8
WINDOW = 11
# causal+segments: packed documents; sliding: causal + window; window+segments: bidirectional.
MASKS = ("full", "causal", "causal+segments", "sliding", "window+segments")


def mesh_of(n):
    return Mesh(np.asarray(jax.devices()[:n]), ("sequence",))


def make_mask(kind, rng):
    """(AttentionMask, segment ids [B, L] or None) with default (unpermuted) positions."""
    segments = None
    if "segments" in kind:
        starts = np.sort(rng.choice(np.arange(1, LENGTH), size=(BATCH, 3), replace=False), 1)
        segments = (np.arange(LENGTH)[None, :, None] >= starts[:, None, :]).sum(-1)
        segments = jnp.asarray(segments, jnp.int32)
    window = WINDOW if kind in ("sliding", "window+segments") else None
    causal = kind not in ("full", "window+segments")
    mask = AttentionMask(
        causal=causal, window=window, q_segment_ids=segments, kv_segment_ids=segments
    )
    return mask, segments


def permuted_mask(mask, segments, reorder):
    """The same mask for inputs laid out by `reorder`: positions and segments travel along."""
    positions = reorder(jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, LENGTH)))
    segments = None if segments is None else reorder(segments)
    return AttentionMask(
        causal=mask.causal,
        window=mask.window,
        q_segment_ids=segments,
        kv_segment_ids=segments,
        q_positions=positions,
        kv_positions=positions,
    )


def inputs(rng, dtype):
    shapes = [(BATCH, LENGTH, HEADS, HEAD_DIM)] + [(BATCH, LENGTH, KV_HEADS, HEAD_DIM)] * 2
    q, k, v = (jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)
    w = jnp.asarray(rng.standard_normal(shapes[0]), dtype)  # the output cotangent
    return q, k, v, w


def out_and_grads(fn, q, k, v, w, slopes):
    """fn(q, k, v, slopes) and d<fn, w>/d(q, k, v, slopes)."""

    def loss(q, k, v, slopes):
        out = fn(q, k, v, slopes)
        return jnp.sum(out.astype(jnp.float32) * w.astype(jnp.float32)), out

    argnums = (0, 1, 2, 3) if slopes is not None else (0, 1, 2)
    grad = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))
    grads, out = grad(q, k, v, slopes)
    return out, grads


def run_case(
    seed, strategy, layout, n, kind, dtype=jnp.float32, alibi=False, soft_cap=None, impl="auto"
):
    """(context-parallel (out, grads) in the original order, reference (out, grads), mask)."""
    rng = np.random.default_rng(seed)
    q, k, v, w = inputs(rng, dtype)
    mask, segments = make_mask(kind, rng)
    slopes = jnp.asarray(rng.uniform(0.01, 0.5, HEADS), jnp.float32) if alibi else None
    options = dict(logits_soft_cap=soft_cap)

    def reorder(x, inverse=False):
        return reorder_for_context_parallel(x, n, layout=layout, inverse=inverse)

    mesh = mesh_of(n)
    sharded = NamedSharding(mesh, P(None, "sequence"))
    cp_mask = permuted_mask(mask, segments, reorder)

    def cp(q, k, v, slopes):
        return context_parallel_attention(
            q,
            k,
            v,
            mask=cp_mask,
            mesh=mesh,
            strategy=strategy,
            impl=impl,
            alibi_slopes=slopes,
            **options,
        )

    def ref(q, k, v, slopes):
        return attention(q, k, v, mask=mask, impl="reference", alibi_slopes=slopes, **options)

    laid_out = [jax.device_put(reorder(x), sharded) for x in (q, k, v, w)]
    out, grads = out_and_grads(cp, *laid_out, slopes)
    out, grads = reorder(out, True), [reorder(g, True) for g in grads[:3]] + list(grads[3:])
    return (out, grads), out_and_grads(ref, q, k, v, w, slopes), (q, k, v, mask, slopes)


CASES = [
    (strategy, layout, n, MASKS[i % len(MASKS)])
    for i, (strategy, layout, n) in enumerate(itertools.product(STRATEGIES, LAYOUTS, (2, 4, 8)))
]


@pytest.mark.parametrize("strategy,layout,n,kind", CASES)
def test_matches_reference_float32(strategy, layout, n, kind, seed):
    (out, grads), (ref_out, ref_grads), (q, k, v, mask, _) = run_case(
        seed, strategy, layout, n, kind
    )
    what = f"[seed={seed} {strategy} {layout} n={n} {kind}]"
    assert out.dtype == q.dtype and out.shape == q.shape, what
    assert_close(out, ref_out, F32_RTOL, f"{what} out vs attention(impl='reference')")
    f64, _ = reference_attention(q, k, v, mask)
    assert_close(out, f64, F32_RTOL, f"{what} out vs float64 reference")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert_close(got, want, F32_RTOL, f"{what} {name} vs attention(impl='reference')")


@pytest.mark.parametrize("strategy,layout,n", [("ring", "zigzag", 4), ("all_gather", "striped", 8)])
def test_alibi_and_soft_cap(strategy, layout, n, seed):
    (out, grads), (ref_out, ref_grads), _ = run_case(
        seed, strategy, layout, n, "causal+segments", alibi=True, soft_cap=3.0
    )
    what = f"[seed={seed} {strategy} {layout} n={n} alibi + soft cap]"
    assert_close(out, ref_out, F32_RTOL, f"{what} out")
    for name, got, want in zip(("dq", "dk", "dv"), grads[:3], ref_grads[:3], strict=True):
        assert_close(got, want, F32_RTOL, f"{what} {name}")
    assert_close(grads[3], ref_grads[3], DSLOPES_RTOL, f"{what} d alibi_slopes")


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_ring_steps_run_the_pallas_kernels(impl, seed):
    """Each ring step through a Pallas kernel's (out, lse) forward and statistics backward
    (interpret mode here), with ALiBi and a soft cap."""
    (out, grads), (ref_out, ref_grads), _ = run_case(
        seed, "ring", "zigzag", 4, "causal+segments", alibi=True, soft_cap=3.0, impl=impl
    )
    what = f"[seed={seed} ring {impl}]"
    assert_close(out, ref_out, F32_RTOL, f"{what} out")
    for name, got, want in zip(("dq", "dk", "dv"), grads[:3], ref_grads[:3], strict=True):
        assert_close(got, want, F32_RTOL, f"{what} {name}")
    assert_close(grads[3], ref_grads[3], DSLOPES_RTOL, f"{what} d alibi_slopes")


@pytest.mark.parametrize(
    "strategy,layout,n,kind",
    [("ring", "zigzag", 8, "causal+segments"), ("all_gather", "contiguous", 2, "sliding")],
)
def test_matches_reference_bfloat16(strategy, layout, n, kind, seed):
    (out, grads), (ref_out, ref_grads), (q, *_) = run_case(
        seed, strategy, layout, n, kind, dtype=jnp.bfloat16
    )
    what = f"[seed={seed} {strategy} {layout} n={n} {kind} bf16]"
    assert out.dtype == jnp.bfloat16, what
    assert_close(out, ref_out, BF16_RTOL, f"{what} out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        assert got.dtype == jnp.bfloat16, f"{what} {name} dtype {got.dtype}"
        assert_close(got, want, BF16_RTOL, f"{what} {name}")


def test_row_that_sees_nothing_is_zero(seed):
    """Causal with kv positions all after a query's: output and gradients 0, never NaN."""
    rng = np.random.default_rng(seed)
    q, k, v, w = inputs(rng, jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, LENGTH))
    mask = AttentionMask(causal=True, q_positions=positions, kv_positions=positions + LENGTH // 2)
    mesh = mesh_of(4)

    def cp(q, k, v, slopes):
        return context_parallel_attention(q, k, v, mask=mask, mesh=mesh)

    out, (dq, dk, dv) = out_and_grads(cp, q, k, v, w, None)
    blind = slice(0, LENGTH // 2)
    assert np.all(np.asarray(out[:, blind]) == 0)
    assert np.all(np.asarray(dq[:, blind]) == 0)
    assert np.isfinite(np.asarray(dk)).all() and np.isfinite(np.asarray(dv)).all()
    assert np.abs(np.asarray(out[:, LENGTH // 2 :])).max() > 0


@pytest.mark.parametrize(
    "layout,window,computed",
    [
        ("contiguous", None, 4 * 5 // 2),  # device d computes chunks 0..d
        ("zigzag", None, 4 * 4),  # every chunk pair holds some causal work
        ("contiguous", LENGTH // 4, 4 + 3),  # a window of one chunk: own and previous chunk
    ],
)
def test_empty_steps_are_skipped(monkeypatch, layout, window, computed, seed):
    """Counts, on device, the ring steps whose local attention actually ran (n = 4)."""
    calls = []
    forward, backward = ring.RING_IMPLEMENTATIONS["blockwise"]

    def counting_forward(*args, **kwargs):
        jax.debug.callback(lambda: calls.append(1))
        return forward(*args, **kwargs)

    monkeypatch.setitem(ring.RING_IMPLEMENTATIONS, "blockwise", (counting_forward, backward))
    rng = np.random.default_rng(seed)
    q, k, v, _ = inputs(rng, jnp.float32)

    def reorder(x):
        return reorder_for_context_parallel(x, 4, layout=layout)

    mask = permuted_mask(AttentionMask(causal=True, window=window), None, reorder)
    out = context_parallel_attention(reorder(q), reorder(k), reorder(v), mask=mask, mesh=mesh_of(4))
    jax.block_until_ready(out)
    assert len(calls) == computed
