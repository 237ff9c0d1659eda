"""`indexer_kl_loss` against float64 numpy; its gradient reaches the index scores only."""

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.attention.sparse import indexer_kl_loss


def numpy_kl(scores, probs):
    """Mean over queries with target mass of KL(normalised head sum || softmax(scores))."""
    scores, probs = np.asarray(scores, np.float64), np.asarray(probs, np.float64)
    target = probs.sum(1)
    total, rows = 0.0, 0
    for i, j in np.ndindex(target.shape[:2]):
        p = target[i, j]
        if p.sum() == 0:
            continue
        p = p / p.sum()
        s = scores[i, j]
        log_q = s - s[np.isfinite(s)].max()
        log_q = log_q - np.log(np.exp(log_q).sum())
        on = p > 0
        total += np.sum(p[on] * (np.log(p[on]) - log_q[on]))
        rows += 1
    return total / max(rows, 1)


def random_case(rng, b=2, n=3, t=7, s=9):
    """Scores with hidden keys (-inf, prob 0) and one query that sees nothing."""
    vis = rng.random((b, t, s)) < 0.7
    vis[0, 2] = False
    scores = np.where(vis, rng.standard_normal((b, t, s)) * 2, -np.inf).astype(np.float32)
    logits = rng.standard_normal((b, n, t, s))
    probs = np.where(vis[:, None], np.exp(logits), 0.0)
    probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-30)
    return jnp.asarray(scores), jnp.asarray(probs, jnp.float32)


def test_dense_loss_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    scores, probs = random_case(rng)
    got = indexer_kl_loss(scores, probs)
    np.testing.assert_allclose(got, numpy_kl(scores, probs), rtol=1e-5, err_msg=f"[seed={seed}]")


def test_selected_loss_restricts_both_sides(seed):
    rng = np.random.default_rng(seed)
    scores, probs = random_case(rng)
    selected = jnp.asarray(np.stack([[rng.choice(9, 4, replace=False) for _ in range(7)]] * 2))
    got = indexer_kl_loss(scores, probs, selected=selected)
    take = lambda x: np.take_along_axis(np.asarray(x), np.asarray(selected), -1)  # noqa: E731
    want = numpy_kl(take(scores), np.stack([take(probs[:, h]) for h in range(3)], 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"[seed={seed}]")


def test_gradient_reaches_the_scores_only_and_is_finite(seed):
    rng = np.random.default_rng(seed)
    scores, probs = random_case(rng)
    d_scores, d_probs = jax.grad(indexer_kl_loss, argnums=(0, 1))(scores, probs)
    assert not np.asarray(d_probs).any(), "the target must be a constant"
    assert np.isfinite(np.asarray(d_scores)).all() and np.asarray(d_scores).any()
    # d KL / d scores = (softmax(scores) - target) / rows: check one visible entry numerically.
    eps = 1e-2
    i = tuple(np.argwhere(np.isfinite(np.asarray(scores)))[0])
    bump = jnp.zeros_like(scores).at[i].set(eps)
    numeric = (indexer_kl_loss(scores + bump, probs) - indexer_kl_loss(scores - bump, probs)) / (
        2 * eps
    )
    np.testing.assert_allclose(d_scores[i], numeric, rtol=2e-2, atol=1e-4)
