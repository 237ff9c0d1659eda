"""Attention kind `sparse_topk`: a lightning indexer picks each query's keys (DeepSeek-V3.2 DSA).

Both stages run the indexer on the detached attention input (`stop_gradient`), so the language
model loss never reaches the indexer, and score its loss against detached queries and keys, so
the indexer loss never reaches the model:
  dense_warmup  dense attention; the indexer learns KL(head-summed dense attention || softmax(I)).
  sparse        each query attends to its top_k keys by index score (plus the always-kept local
                window and first tokens); the indexer learns the same KL restricted to those keys.
                granularity "block": each aligned block of block_size queries attends to the
                top_k // block_size key blocks its first query (the anchor) ranks best, its own
                key block included (select.py says why only the anchor chooses); the KL is
                restricted per query to the keys of its block's selected blocks.
                With `selector = "oracle"` the keys are ranked by `oracle_scores` instead.
                The indexer's selection is scored a block of queries at a time and its loss
                uses the scores of the selected keys only, so the sparse stage holds O(T * k),
                never the [T, S] index scores (only the warm-up and the oracle are dense).
The indexer's RoPE follows the model's `position` scheme (`indexer_rope`; none under NoPE).
The indexer loss is sown into the "losses" collection (only when that collection is mutable, so
evaluation pays nothing for it); the train step adds it to the objective. With "intermediates"
mutable, the index scores [B, T, S] are sown there too (`index_score_maps` stacks them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longctx_jax.attention import AttentionMask, attention_weights
from longctx_jax.attention.sparse import (
    LightningIndexer,
    block_sparse_attention,
    block_tokens,
    index_scores,
    indexer_kl_loss,
    keep_always,
    masked_scores,
    select_blocks,
    select_from_features,
    select_topk,
    sparse_attention,
    sparse_attention_weights,
)
from longctx_jax.attention.sparse.indexer import scores_at

LOSS_COLLECTION = "losses"
LOSS_NAME = "indexer_kl"


def sparse_topk_attention(
    module, x_BTD, q_BTNH, k_BTKH, v_BTKH, *, mask: AttentionMask, positions_BT, cfg, dense
):
    """Attention output [B, T, N, H] for `attention.kind = "sparse_topk"`.

    `module` is the calling attention module (the indexer becomes its child "indexer"; the loss
    is sown there); `dense(q, k, v, mask=...)` is the model's dense attention.
    """
    sc = cfg.attention.sparse
    indexer = lightning_indexer(cfg, name="indexer")
    features = indexer(jax.lax.stop_gradient(x_BTD), positions_BT)  # (q_idx, k_idx, w)
    with_loss = module.is_mutable_collection(LOSS_COLLECTION)
    if module.is_mutable_collection("intermediates"):
        module.sow("intermediates", "index_scores", index_scores(*features, mask))
    q_fixed, k_fixed = jax.lax.stop_gradient(q_BTNH), jax.lax.stop_gradient(k_BTKH)

    if sc.stage == "dense_warmup":
        out = dense(q_BTNH, k_BTKH, v_BTKH, mask=mask)
        if with_loss:
            target = attention_weights(q_fixed, k_fixed, mask=mask)
            module.sow(
                LOSS_COLLECTION, LOSS_NAME, indexer_kl_loss(index_scores(*features, mask), target)
            )
        return out

    if sc.selector == "oracle":
        indices, valid = select_keys(oracle_scores(q_fixed, k_fixed, mask), mask, sc)
    else:  # scored and selected a block of queries at a time: never the [T, S] scores
        indices, valid = select_from_features(
            *jax.lax.stop_gradient(features),
            min(sc.top_k, k_BTKH.shape[1]),
            mask=mask,
            method=sc.method,
            granularity=sc.granularity,
            block_size=sc.block_size,
            local_window=sc.local_window,
            first_tokens=sc.first_tokens,
        )
    if sc.granularity == "block":
        out = block_sparse_attention(
            q_BTNH, k_BTKH, v_BTKH, indices, block_size=sc.block_size, mask=mask, valid=valid
        )
        t, s = q_BTNH.shape[1], k_BTKH.shape[1]
        indices, valid = block_tokens(indices, valid, block_size=sc.block_size, q_len=t, kv_len=s)
    else:
        out = sparse_attention(q_BTNH, k_BTKH, v_BTKH, indices, mask=mask, valid=valid)
    if with_loss:
        target = sparse_attention_weights(q_fixed, k_fixed, indices, mask=mask, valid=valid)
        chosen = scores_at(*features, indices, valid)
        module.sow(LOSS_COLLECTION, LOSS_NAME, indexer_kl_loss(chosen, target))
    return out


def lightning_indexer(cfg, **kwargs) -> LightningIndexer:
    """The model's indexer: sizes from `attention.sparse`, RoPE from `position` (see
    `indexer_rope`); `kwargs` go to the module (e.g. `name`)."""
    sc = cfg.attention.sparse
    return LightningIndexer(
        num_heads=sc.index_heads,
        head_dim=sc.index_head_dim,
        init_std=cfg.init_std,
        norm_eps=cfg.norm_eps,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        **indexer_rope(cfg),
        **kwargs,
    )


def indexer_rope(cfg) -> dict:
    """The indexer's RoPE fields from the model's `position` config.

    position.kind "rope": the model's rope_kind, rope_base and rope_scaling, evaluated for a
    rotary head of `attention.sparse.index_rope_dim` dimensions (DeepSeek-V3.2's indexer uses its
    MLA's YaRN-scaled frequencies); `partial_rotary_factor` is dropped, since index_rope_dim
    already is the rotary dimension. "nope": no rotation (positions reach only the mask).
    """
    if cfg.position.kind != "rope":
        return dict(rope_dim=0)
    scaling = cfg.position.rope_scaling
    pairs = tuple(
        (name, tuple(value) if isinstance(value, list | tuple) else value)
        for name in sorted(scaling.keys())
        if (value := scaling[name]) is not None and name != "partial_rotary_factor"
    )
    return dict(
        rope_dim=cfg.attention.sparse.index_rope_dim,
        rope_base=cfg.position.rope_base,
        rope_kind=cfg.position.rope_kind,
        rope_scaling=pairs,
    )


def oracle_scores(q_BTNH, k_BTKH, mask: AttentionMask) -> jax.Array:
    """Head-summed dense attention probabilities [B, T, S], -inf where hidden: their top k keys
    hold the most attention mass any k keys can (the indexer's target and upper bound)."""
    probs_BTS = attention_weights(q_BTNH, k_BTKH, mask=mask).astype(jnp.float32).sum(1)
    return masked_scores(probs_BTS, mask)


def select_keys(scores_BTS, mask: AttentionMask, sc):
    """(indices, valid) from a whole score matrix by the config's granularity, method and
    always-kept keys: key indices [B, T, k], or for granularity "block" key-block indices
    [B, ceil(T / block_size), n] chosen by each query block's anchor (the oracle's path; the
    indexer's goes through `select_from_features`, which must agree with it)."""
    if sc.local_window or sc.first_tokens:
        scores_BTS = keep_always(
            scores_BTS, mask, local_window=sc.local_window, first_tokens=sc.first_tokens
        )
    s = scores_BTS.shape[-1]
    if sc.granularity == "block":
        num_blocks = min(sc.top_k // sc.block_size, -(-s // sc.block_size))
        return select_blocks(scores_BTS, num_blocks, block_size=sc.block_size, mask=mask)
    return select_topk(scores_BTS, min(sc.top_k, s), method=sc.method)


def indexer_loss(state) -> jax.Array:
    """Mean over layers of the sown indexer losses (0.0 if none were sown)."""
    losses = jax.tree.leaves(state.get(LOSS_COLLECTION, {}))
    if not losses:
        return jnp.zeros((), jnp.float32)
    return sum(losses) / len(losses)


def index_score_maps(state) -> jax.Array:
    """Every layer's sown index scores, stacked [num_layers, B, T, S] (see `attention_maps`)."""
    intermediates = state.get("intermediates", state)
    layers = sorted(
        (name for name in intermediates if name.startswith("blocks_")),
        key=lambda name: int(name.split("_")[1]),
    )
    return jnp.stack([intermediates[n]["attention"]["index_scores"][0] for n in layers])
