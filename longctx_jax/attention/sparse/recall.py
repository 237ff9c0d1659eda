"""How much of the dense attention mass the indexer's top-k keys hold (the indexer's quality)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def attention_mass_recall(index_scores, attention_probs, k: int) -> jax.Array:
    """Mean over queries with more than k visible keys of the head-summed, L1-normalised
    attention mass on the k keys with the best index scores; 1.0 means perfect selection.

    index_scores [B, T, S] (-inf where hidden); attention_probs [B, N, T, S]. Returns a float32
    scalar (NaN if no query has more than k visible keys).
    """
    target = attention_probs.astype(jnp.float32).sum(1)
    mass = target.sum(-1, keepdims=True)
    target = target / jnp.where(mass > 0, mass, 1.0)
    values, indices = lax.top_k(index_scores.astype(jnp.float32), k)
    kept = jnp.where(values > -jnp.inf, jnp.take_along_axis(target, indices, -1), 0.0).sum(-1)
    rows = (index_scores > -jnp.inf).sum(-1) > k
    return jnp.sum(jnp.where(rows, kept, 0.0)) / jnp.sum(rows)
