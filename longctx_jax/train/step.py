"""The train state and the pure train step (jitted by the loop with explicit shardings)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from longctx_jax.model.sparse_block import LOSS_COLLECTION, indexer_loss

# Loss-by-position buckets: [0, 64), [64, 128), [128, 256), ... (position within the document).
FIRST_BUCKET = 64


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def num_position_buckets(seq_len: int) -> int:
    """Buckets [0, 64), [64, 128), [128, 256), ..., up to seq_len."""
    buckets = 1
    while FIRST_BUCKET * 2 ** (buckets - 1) < seq_len:
        buckets += 1
    return buckets


def position_bucket(positions):
    """0 for positions < 64, then one bucket per doubling: the bit length of position // 64,
    in integers (a float log2 misplaces positions near powers of two)."""
    blocks = jnp.maximum(positions, 0).astype(jnp.int32) // FIRST_BUCKET
    return 32 - jax.lax.clz(blocks)


def loss_and_metrics(logits, batch, num_buckets: int):
    """Weighted next-token cross entropy (nats/token) and its mean per position bucket."""
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["targets"]
    )
    weights = batch["weights"].astype(jnp.float32)
    total = jnp.maximum(weights.sum(), 1.0)
    loss = (ce * weights).sum() / total
    buckets = jax.nn.one_hot(position_bucket(batch["positions"]), num_buckets) * weights[..., None]
    bucket_sum = jnp.einsum("btk,bt->k", buckets, ce)
    bucket_count = buckets.sum((0, 1))
    return loss, dict(
        loss=loss, tokens=weights.sum(), bucket_sum=bucket_sum, bucket_count=bucket_count
    )


def train_step(state: TrainState, batch, *, model, optimizer, learning_rate, num_buckets: int):
    """One optimizer step; returns (new state, metrics). Pure: `build_run` jits it with shardings.

    Metrics: "loss", "grad_norm", "learning_rate" (of this update, from the `learning_rate`
    schedule the optimizer uses), "finite" (every loss, gradient and updated parameter is finite:
    the trainer never checkpoints a state without it), and the loss-by-position sums and counts.

    With `attention.kind = "sparse_topk"` the objective is the LM loss plus loss_weight times the
    indexer loss (logged as "indexer_loss"); "loss" is always the LM cross entropy.
    """
    attention = model.config.attention

    def loss_fn(params):
        inputs = dict(positions=batch["positions"], segment_ids=batch["segment_ids"])
        if attention.kind != "sparse_topk":
            logits = model.apply({"params": params}, batch["tokens"], **inputs)
            return loss_and_metrics(logits, batch, num_buckets)
        logits, state = model.apply(
            {"params": params}, batch["tokens"], **inputs, mutable=[LOSS_COLLECTION]
        )
        loss, metrics = loss_and_metrics(logits, batch, num_buckets)
        metrics["indexer_loss"] = indexer_loss(state)
        return loss + attention.sparse.loss_weight * metrics["indexer_loss"], metrics

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = learning_rate(state.step)
    metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    for leaf in jax.tree.leaves(params):
        metrics["finite"] &= jnp.isfinite(leaf).all()
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
