"""Layouts of `reorder_for_context_parallel`, causal load balance, context-parallel errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from longctx_jax.attention import AttentionMask
from longctx_jax.attention.ring import (
    LAYOUTS,
    causal_work_per_shard,
    context_parallel_attention,
    reorder_for_context_parallel,
)


def expected_shards(length, n, layout):
    """The tokens each device holds, written from the layout definitions."""
    tokens = np.arange(length)
    if layout == "contiguous":
        return [tokens[d * length // n : (d + 1) * length // n] for d in range(n)]
    if layout == "striped":
        return [tokens[d::n] for d in range(n)]
    c = length // (2 * n)
    return [np.concatenate([tokens[d * c : (d + 1) * c], tokens[(2 * n - 1 - d) * c :][:c]])
            for d in range(n)]  # fmt: skip


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_layouts_and_inverse(layout, n, seed):
    rng = np.random.default_rng(seed)
    length = 2 * n * int(rng.integers(1, 5))
    x = rng.standard_normal((3, length, 2)).astype(np.float32)
    laid_out = reorder_for_context_parallel(x, n, layout=layout)
    shards = np.split(laid_out, n, axis=1)
    for d, want in enumerate(expected_shards(length, n, layout)):
        np.testing.assert_array_equal(shards[d], x[:, want], err_msg=f"{layout} shard {d}")
    back = reorder_for_context_parallel(laid_out, n, layout=layout, inverse=True)
    np.testing.assert_array_equal(back, x)
    on_axis0 = reorder_for_context_parallel(jnp.asarray(x[0]), n, layout=layout, axis=0)
    np.testing.assert_array_equal(np.asarray(on_axis0), laid_out[0])


def exact_causal_work(length, n, layout):
    """Visible (query, key) token pairs per device, a token's own key counted half."""
    return np.array([(shard + 0.5).sum() for shard in expected_shards(length, n, layout)])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_causal_load_balance_at_8_devices(layout):
    n, length = 8, 8 * 2 * 64
    work = causal_work_per_shard(length, n, layout)
    exact = exact_causal_work(length, n, layout)
    for name, w in (("chunk pairs", work), ("token pairs", exact)):
        ratio = w.max() / w.min()
        if layout == "contiguous":
            assert abs(ratio / (2 * n - 1) - 1) < 0.01, f"{layout} {name}: max/min {ratio:.3f}"
        else:
            assert ratio <= 1.1, f"{layout} {name}: max/min {ratio:.3f}"
    # Every layout does the same total work: the whole causal triangle.
    assert work.sum() == pytest.approx((2 * n) ** 2 / 2)


def test_reorder_errors():
    x = np.zeros((2, 24))
    with pytest.raises(ValueError, match=r"layout='zigzag' over 8 shards needs a multiple of 16"):
        reorder_for_context_parallel(x, 8)
    with pytest.raises(ValueError, match=r"layout='spiral'.*expected one of"):
        reorder_for_context_parallel(x, 2, layout="spiral")
    with pytest.raises(ValueError, match=r"num_shards=0"):
        reorder_for_context_parallel(x, 0)
    with pytest.raises(ValueError, match=r"axis=2: out of range"):
        reorder_for_context_parallel(x, 2, axis=2)


def test_context_parallel_errors():
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("sequence",))
    q = jnp.zeros((1, 16, 4, 8))
    k = jnp.zeros((1, 16, 2, 8))
    call = lambda **kw: context_parallel_attention(q, k, k, **{"mesh": mesh, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=r"axis_name='context': not an axis of the mesh"):
        call(axis_name="context")
    with pytest.raises(ValueError, match=r"strategy='tree'"):
        call(strategy="tree")
    with pytest.raises(ValueError, match=r"impl='reference': strategy='ring' needs"):
        call(impl="reference")
    with pytest.raises(ValueError, match=r"q_len=18: expected a multiple of the 4 devices"):
        context_parallel_attention(jnp.zeros((1, 18, 4, 8)), k, k, mesh=mesh)
    with pytest.raises(ValueError, match=r"mask.q_positions has shape"):
        call(mask=AttentionMask(q_positions=jnp.zeros((1, 8), jnp.int32)))
