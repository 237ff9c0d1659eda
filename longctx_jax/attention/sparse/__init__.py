"""Learned top-k sparse attention (DeepSeek-V3.2 DSA): indexer, selection, attention, loss.

    q_idx, k_idx, w = LightningIndexer(...)(x, positions)        # cheap per-token index features
    scores = index_scores(q_idx, k_idx, w, mask)                 # [B, T, S], -inf where hidden
    indices, valid = select_topk(scores, k, method="threshold")  # [B, T, k]
    out = sparse_attention(q, k, v, indices, mask=mask, valid=valid)
    loss = indexer_kl_loss(scores, attention_weights(...))       # dense warm-up

Block granularity: each aligned block of block_size queries shares the n key blocks its first
query (the anchor) ranks best, plus its own key block (select.py says why only the anchor):

    blocks, valid = select_blocks(scores, n, block_size=64, mask=mask)  # [B, T / 64, n]
    out = block_sparse_attention(q, k, v, blocks, block_size=64, mask=mask, valid=valid)

`select_from_features` fuses scoring and selection query block by query block, so the [T, S]
score matrix is never held whole at long lengths (block granularity scores the anchors only).
"""

from longctx_jax.attention.sparse.attend import sparse_attention, sparse_attention_weights
from longctx_jax.attention.sparse.blocks import block_sparse_attention
from longctx_jax.attention.sparse.indexer import LightningIndexer, index_scores
from longctx_jax.attention.sparse.loss import indexer_kl_loss
from longctx_jax.attention.sparse.recall import attention_mass_recall
from longctx_jax.attention.sparse.select import (
    METHODS,
    block_tokens,
    keep_always,
    masked_scores,
    select_blocks,
    select_topk,
)
from longctx_jax.attention.sparse.stream import select_from_features

__all__ = [
    "METHODS",
    "LightningIndexer",
    "attention_mass_recall",
    "block_sparse_attention",
    "block_tokens",
    "index_scores",
    "indexer_kl_loss",
    "keep_always",
    "masked_scores",
    "select_blocks",
    "select_from_features",
    "select_topk",
    "sparse_attention",
    "sparse_attention_weights",
]
