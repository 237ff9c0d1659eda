"""Top-k selection against numpy: exact sets, lowest index on ties, never a hidden key."""

import jax.numpy as jnp
import numpy as np
import pytest
from attention_reference import SHAPES, grid_case, make_mask, visibility

from longctx_jax.attention import AttentionMask
from longctx_jax.attention.sparse import (
    block_tokens,
    index_scores,
    keep_always,
    select_blocks,
    select_from_features,
    select_topk,
)

TOKEN_METHODS = ("exact", "approx", "threshold", "native")


def numpy_topk_sets(scores, vis, k):
    """Per query, the set of the k best visible keys (ties: lower index first), float64."""
    b, t, s = scores.shape
    out = np.empty((b, t), object)
    for i in range(b):
        for j in range(t):
            keys = np.flatnonzero(vis[i, j])
            order = np.lexsort((keys, -scores[i, j, keys].astype(np.float64)))
            out[i, j] = frozenset(keys[order[:k]].tolist())
    return out


def chosen_sets(indices, valid):
    indices, valid = np.asarray(indices), np.asarray(valid)
    b, t, _ = indices.shape
    out = np.empty((b, t), object)
    for i in range(b):
        for j in range(t):
            chosen = indices[i, j][valid[i, j]].tolist()
            assert len(chosen) == len(set(chosen)), f"query {(i, j)} selected a key twice"
            out[i, j] = frozenset(chosen)
    return out


def oracle_case(rng, kind):
    """Scores = the true attention logits of head 0 (the oracle), with its mask and visibility."""
    shape = SHAPES[0]
    q, k, _, _, mask = grid_case(rng, shape, kind)
    scores = jnp.einsum("bth,bsh->bts", q[:, :, 0], k[:, :, 0]) / np.sqrt(shape.head_dim)
    return scores, mask, visibility(mask, shape.batch, shape.q_len, shape.kv_len)


@pytest.mark.parametrize("method", TOKEN_METHODS)
@pytest.mark.parametrize("kind", ("causal", "combined", "permuted"))
def test_oracle_scores_give_the_exact_top_k_and_never_a_hidden_key(method, kind, seed):
    rng = np.random.default_rng(seed)
    scores, mask, vis = oracle_case(rng, kind)
    k = int(rng.integers(1, 30))
    indices, valid = select_topk(scores, k, mask=mask, method=method, block_rows=8)
    what = f"[seed={seed} method={method} mask={kind} k={k}]"
    assert indices.shape == valid.shape == scores.shape[:2] + (k,), what
    got = chosen_sets(indices, valid)
    want = numpy_topk_sets(np.asarray(scores), vis, k)
    b, t, _ = scores.shape
    for i in range(b):
        for j in range(t):
            assert got[i, j] == want[i, j], f"{what} query {(i, j)}"
            assert all(vis[i, j, s] for s in got[i, j]), f"{what} hidden key selected"
            assert len(got[i, j]) == min(k, vis[i, j].sum()), f"{what} valid count"


@pytest.mark.parametrize("method", ("exact", "threshold", "native"))
def test_ties_keep_the_lowest_indices(method, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 4, (2, 40, 300)).astype(np.float32)  # few values: many ties
    scores[:, :, rng.random(300) < 0.2] = -np.inf
    scores[0, 3] = 1.0  # a row that is one big tie
    k = int(rng.integers(1, 200))
    indices, valid = select_topk(jnp.asarray(scores), k, method=method, block_rows=16)
    got = chosen_sets(indices, valid)
    want = numpy_topk_sets(scores, scores > -np.inf, k)
    assert (got == want).all(), f"[seed={seed} k={k}] {np.argwhere(got != want)[:3]}"


def test_threshold_covers_the_whole_float_range(seed):
    """Values spanning many binades, negative and positive, huge and tiny (the key mapping)."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((1, 16, 500)) * np.exp(rng.uniform(-40, 40, (1, 16, 500)))
    scores = scores.astype(np.float32)
    k = int(rng.integers(1, 500))
    got = chosen_sets(*select_topk(jnp.asarray(scores), k, method="threshold"))
    want = numpy_topk_sets(scores, np.ones(scores.shape, bool), k)
    assert (got == want).all(), f"[seed={seed} k={k}]"


@pytest.mark.parametrize("method", ("exact", "threshold", "native"))
def test_a_point_mass_at_the_k_th_value_is_cut_at_the_lowest_indices(method, seed):
    """Index scores are sums of ReLUs: many exact zeros, often where the k-th value falls."""
    rng = np.random.default_rng(seed)
    s = 3000
    scores = np.maximum(rng.standard_normal((1, 12, s)), 0.0).astype(np.float32)
    scores[:, :, rng.random(s) < 0.1] = -np.inf
    zeros_from = (scores > 0).sum(-1).max()
    k = int(rng.integers(zeros_from + 1, zeros_from + 200))  # the k-th value is 0 in every row
    indices, valid = select_topk(jnp.asarray(scores), k, method=method, block_rows=4)
    got = chosen_sets(indices, valid)
    want = numpy_topk_sets(scores, scores > -np.inf, k)
    assert (got == want).all(), f"[seed={seed} k={k}] {np.argwhere(got != want)[:3]}"


@pytest.mark.parametrize("method", ("threshold", "native"))
def test_subnormal_scores_compare_as_zero(method):
    """The CPU flushes subnormal floats to zero in comparisons; the threshold search and the
    native selection follow it, so a subnormal score ties with 0 (lowest index first) instead
    of ranking above it."""
    scores = np.array([[[0.0, 1e-40, 0.0, 3e-39, -1e-40, 1.0, 0.0]]], np.float32)
    got = chosen_sets(*select_topk(jnp.asarray(scores), 3, method=method))
    assert got[0, 0] == {0, 1, 5}


def test_native_selection_of_long_rows_equals_numpy(seed):
    """Wide rows (a histogram bin then holds many keys), NaN and +-inf scores, random k."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((1, 9, 5000)) * rng.choice((1e-3, 1.0, 1e3), (1, 9, 1))).astype(
        np.float32
    )
    scores[0, 0, rng.random(5000) < 0.5] = -np.inf
    scores[0, 1, :7] = np.nan
    scores[0, 2, ::3] = np.inf
    k = int(rng.integers(1, 3000))
    got = chosen_sets(*select_topk(jnp.asarray(scores), k, method="native"))
    visible = scores > -np.inf  # NaN is never selected: NaN > -inf is False
    want = numpy_topk_sets(np.where(visible, scores, -np.inf), visible, k)
    assert (got == want).all(), f"[seed={seed} k={k}] {np.argwhere(got != want)[:3]}"


def numpy_anchored_blocks(scores, vis, num_blocks, block_size):
    """Per query block, the set of key blocks its anchor (first query) selects: its own block
    (holding key anchor + S - T, clamped) and the num_blocks - 1 other blocks with the best max
    score over the anchor's visible keys (ties: lower block), among blocks it sees a key of."""
    b, t, s = scores.shape
    n_q, n_kv = -(-t // block_size), -(-s // block_size)
    out = np.empty((b, n_q), object)
    for i, a in np.ndindex(b, n_q):
        anchor = a * block_size
        own = min(max((anchor + s - t) // block_size, 0), n_kv - 1)
        best = np.full(n_kv, -np.inf)
        for key in np.flatnonzero(vis[i, anchor]):
            best[key // block_size] = max(best[key // block_size], scores[i, anchor, key])
        others = [j for j in range(n_kv) if j != own and best[j] > -np.inf]
        others.sort(key=lambda j: (-best[j], j))
        out[i, a] = frozenset([own, *others[: num_blocks - 1]])
    return out


@pytest.mark.parametrize("kind", ("causal", "sliding", "segments", "kv_cache", "combined"))
def test_anchored_block_selection_equals_a_numpy_ranking(kind, seed):
    rng = np.random.default_rng(seed)
    scores, mask, vis = oracle_case(rng, kind)
    b, t, s = scores.shape
    block_size = int(rng.choice((4, 8, 16)))
    n_kv = -(-s // block_size)
    num_blocks = int(rng.integers(1, n_kv + 1))
    blocks, valid = select_blocks(scores, num_blocks, block_size=block_size, mask=mask)
    what = f"[seed={seed} mask={kind} bs={block_size} n={num_blocks}]"
    assert blocks.shape == valid.shape == (b, -(-t // block_size), num_blocks), what
    got = chosen_sets(blocks, valid)
    want = numpy_anchored_blocks(np.asarray(scores, np.float64), vis, num_blocks, block_size)
    assert (got == want).all(), f"{what} {np.argwhere(got != want)[:3]}"

    # Every valid block but the own one holds a key its anchor sees.
    blocks, valid = np.asarray(blocks), np.asarray(valid)
    for i, a, slot in np.ndindex(*blocks.shape):
        if valid[i, a, slot] and slot > 0:
            keys = slice(blocks[i, a, slot] * block_size, (blocks[i, a, slot] + 1) * block_size)
            assert vis[i, a * block_size, keys].any(), f"{what} block invisible to the anchor"


def test_block_tokens_give_each_query_its_blocks_keys(seed):
    rng = np.random.default_rng(seed)
    b, t, s, block_size, n = 2, 29, 37, 4, 3
    n_q, n_kv = -(-t // block_size), -(-s // block_size)
    blocks = np.stack([rng.choice(n_kv, n, replace=False) for _ in range(b * n_q)])
    blocks = blocks.reshape(b, n_q, n)
    valid = rng.random((b, n_q, n)) < 0.7
    tokens, ok = block_tokens(
        jnp.asarray(blocks), jnp.asarray(valid), block_size=block_size, q_len=t, kv_len=s
    )
    assert tokens.shape == ok.shape == (b, t, n * block_size)
    for i, query in np.ndindex(b, t):
        row = (i, query // block_size)
        want = {
            int(j) * block_size + o
            for j, v in zip(blocks[row], valid[row], strict=True)
            if v
            for o in range(block_size)
            if int(j) * block_size + o < s
        }
        got = np.asarray(tokens[i, query])[np.asarray(ok[i, query])]
        assert sorted(got) == sorted(want), f"[seed={seed}] query {(i, query)}"


def test_keep_always_reaches_the_anchor_ranking(seed):
    """local_window / first_tokens force the anchor's recent and first key blocks in."""
    rng = np.random.default_rng(seed)
    b, t = 2, 41
    scores = jnp.asarray(rng.standard_normal((b, t, t)), jnp.float32)
    mask = AttentionMask(causal=True)
    forced = keep_always(scores, mask, local_window=5, first_tokens=1)
    blocks, valid = select_blocks(forced, 4, block_size=4, mask=mask)
    got = chosen_sets(blocks, valid)
    for i, a in np.ndindex(b, -(-t // 4)):
        anchor = 4 * a
        must = {key // 4 for key in range(anchor + 1) if anchor - key < 5 or key < 1}
        assert must <= got[i, a], f"[seed={seed}] block {(i, a)} misses {must - got[i, a]}"


def test_keep_always_forces_the_local_window_and_first_tokens(seed):
    rng = np.random.default_rng(seed)
    scores, mask, vis = oracle_case(rng, "causal")
    forced = keep_always(scores, mask, local_window=4, first_tokens=2)
    indices, valid = select_topk(forced, 8, method="threshold")
    got = chosen_sets(indices, valid)
    b, t, _ = scores.shape
    for i in range(b):
        for j in range(t):
            must = {s for s in range(t) if vis[i, j, s] and (j - s < 4 or s < 2)}
            assert must <= got[i, j], f"[seed={seed}] query {(i, j)} misses {must - got[i, j]}"


def test_bad_k_raises_value_error():
    with pytest.raises(ValueError, match="k=0"):
        select_topk(jnp.zeros((1, 2, 5)), 0)
    with pytest.raises(ValueError, match="k=6"):
        select_topk(jnp.zeros((1, 2, 5)), 6)
    with pytest.raises(ValueError, match="method="):
        select_topk(jnp.zeros((1, 2, 5)), 2, method="sort")


@pytest.mark.parametrize("kind", ("combined", "causal"))  # causal: scores key prefixes only
@pytest.mark.parametrize(
    "method, granularity",
    [("threshold", "token"), ("native", "token"), ("exact", "token"), ("exact", "block")],
)
def test_streaming_selection_equals_selecting_from_the_whole_score_matrix(
    method, granularity, kind, seed
):
    rng = np.random.default_rng(seed)
    shape = SHAPES[1]
    mask = make_mask(kind, rng, shape)
    b, t = shape.batch, shape.q_len
    q_idx = jnp.asarray(rng.standard_normal((b, t, 3, 8)), jnp.float32)
    k_idx = jnp.asarray(rng.standard_normal((b, t, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((b, t, 3)), jnp.float32)
    k = 16
    keep = dict(local_window=int(rng.integers(0, 6)), first_tokens=int(rng.integers(0, 3)))
    got = select_from_features(
        q_idx,
        k_idx,
        w,
        k,
        mask=mask,
        method=method,
        granularity=granularity,
        block_size=4,
        block_q=8,
        **keep,
    )
    scores = keep_always(index_scores(q_idx, k_idx, w, mask), mask, **keep)
    if granularity == "block":
        want = select_blocks(scores, k // 4, block_size=4, mask=mask)
    else:
        want = select_topk(scores, k, method="exact")
    assert (chosen_sets(*got) == chosen_sets(*want)).all(), f"[seed={seed} {keep}]"
