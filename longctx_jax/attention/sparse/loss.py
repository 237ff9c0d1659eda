"""The indexer's training loss: KL from the main attention to the indexer's distribution.

Target: the main attention probabilities summed over heads and L1-normalised per query (where
the model attends, all heads together). Prediction: softmax of the index scores over the same
keys. Loss: KL(target || prediction), averaged over queries that have any target mass. The
target is a constant (stop_gradient): this loss trains the indexer only.

Dense warm-up: scores [B, T, S] and probabilities [B, N, T, S] over every key. Sparse stage:
both restricted to the selected keys, either given already gathered ([B, T, k] and [B, N, T, k],
as the sparse stage computes them: the key axis is then the selection's slots) or over every key
with `selected` [B, T, k] naming the slots to keep.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def indexer_kl_loss(index_scores, attention_probs, *, selected=None) -> jax.Array:
    """Mean over queries of KL(normalised head-summed attention || softmax(index scores))."""
    scores_shape = tuple(getattr(index_scores, "shape", ()))
    probs_shape = tuple(getattr(attention_probs, "shape", ()))
    if (
        len(scores_shape) != 3
        or len(probs_shape) != 4
        or probs_shape[:1] + probs_shape[2:] != scores_shape
    ):
        raise ValueError(
            f"index_scores {scores_shape}, attention_probs {probs_shape}: expected "
            "[batch, q_len, kv_len] and [batch, num_heads, q_len, kv_len]"
        )
    scores = jnp.asarray(index_scores, jnp.float32)
    target = jax.lax.stop_gradient(jnp.asarray(attention_probs, jnp.float32).sum(1))
    if selected is not None:
        if tuple(getattr(selected, "shape", ()))[:2] != scores_shape[:2] or selected.ndim != 3:
            raise ValueError(
                f"selected has shape {tuple(getattr(selected, 'shape', ()))}: expected "
                f"[batch, q_len, k] with batch, q_len = {scores_shape[:2]}"
            )
        scores = jnp.take_along_axis(scores, selected, axis=-1)
        target = jnp.take_along_axis(target, selected, axis=-1)
    mass = target.sum(-1, keepdims=True)
    target = target / jnp.where(mass > 0, mass, 1.0)
    seen = jnp.any(scores > -jnp.inf, axis=-1, keepdims=True)  # rows with no key: no NaN
    log_q = jax.nn.log_softmax(jnp.where(seen, scores, 0.0), axis=-1)
    terms = jnp.where(target > 0, target * (jnp.log(jnp.where(target > 0, target, 1.0)) - log_q), 0)
    rows = (mass[..., 0] > 0).astype(jnp.float32)
    return (terms.sum(-1) * rows).sum() / jnp.maximum(rows.sum(), 1.0)
