"""`model.attention.kind` and the `model.attention.sparse` sub-config (learned top-k attention).

Fields (defaults in brackets):
  attention.kind ["dense"]              "dense" | "sparse_topk" (DeepSeek-V3.2 DSA) | "linear"
                                        (gated linear attention: model/linear_config.py).
  attention.sparse.stage ["dense_warmup"]  "dense_warmup": dense attention; only the indexer
                                        trains, by the KL loss to the dense attention.
                                        "sparse": each query attends to its top_k keys; everything
                                        trains (the indexer's input is detached).
  attention.sparse.top_k [64]           keys per query (clamped to the sequence length).
  attention.sparse.granularity ["token"]  "token" | "block": queries in aligned blocks of
                                        block_size share one selection of top_k // block_size
                                        key blocks (block_size keys each), ranked by the best
                                        score of the block's first query (its anchor) over the
                                        keys it sees, the block's own key block always included.
                                        Only the anchor chooses: later queries' index features
                                        depend on later tokens, which would leak into earlier
                                        queries' outputs. Each query then attends to the keys of
                                        those blocks that its own mask shows it.
  attention.sparse.block_size [16]      queries per query block and keys per key block
                                        (granularity="block").
  attention.sparse.method ["exact"]     token selector: "exact" (lax.top_k) | "approx" |
                                        "threshold" (fast exact, pure JAX) | "native" (fastest
                                        exact on CPU: a compiled custom call).
  attention.sparse.selector ["indexer"]  what ranks the keys in the sparse stage: "indexer" (DSA) |
                                        "oracle" (the head-summed dense attention probabilities:
                                        the most mass any top_k keys hold; an upper bound).
  attention.sparse.local_window [0]     always keep keys within this distance (0 = off; for
                                        "block", of the anchor).
  attention.sparse.first_tokens [0]     always keep the first positions (attention sinks).
  attention.sparse.index_heads [4], index_head_dim [32], index_rope_dim [16]  the indexer; its
                                        first index_rope_dim dims follow the model's position
                                        scheme (rope_kind, rope_base, rope_scaling evaluated for
                                        a rotary head of index_rope_dim dims; none under NoPE).
  attention.sparse.loss_weight [1.0]    weight of the indexer loss in the training objective.
"""

from __future__ import annotations

import ml_collections

from longctx_jax import checks
from longctx_jax.attention.sparse import METHODS
from longctx_jax.model.sparse_block import indexer_rope
from longctx_jax.positions import rope_frequencies

KINDS = ("dense", "sparse_topk", "linear")
STAGES = ("dense_warmup", "sparse")
GRANULARITIES = ("token", "block")
SELECTORS = ("indexer", "oracle")


def default_sparse_config() -> ml_collections.ConfigDict:
    """`model.attention.sparse` at its defaults (see the module docstring)."""
    cfg = ml_collections.ConfigDict()
    cfg.stage = "dense_warmup"
    cfg.top_k = 64
    cfg.granularity = "token"
    cfg.block_size = 16
    cfg.method = "exact"
    cfg.selector = "indexer"
    cfg.local_window = 0
    cfg.first_tokens = 0
    cfg.index_heads = 4
    cfg.index_head_dim = 32
    cfg.index_rope_dim = 16
    cfg.loss_weight = 1.0
    return cfg


def dense_with_indexer(model_config, seq_len: int) -> None:
    """Sets `model_config` to `sparse_topk` keeping every key of `seq_len`: exactly dense
    attention, with an indexer present (loss weight 0: it does not train) that a later stage can
    warm up from this model's checkpoint (the dense stage of the staged sparse ablations)."""
    model_config.attention.kind = "sparse_topk"
    model_config.attention.sparse.stage = "sparse"
    model_config.attention.sparse.top_k = seq_len
    model_config.attention.sparse.loss_weight = 0.0


def validate_sparse_config(cfg) -> None:
    """ValueError naming the `model.attention.*` field unless kind and sparse settings are valid."""
    kind = checks.check_choice("model", "attention.kind", cfg.attention.get("kind", "dense"), KINDS)
    if kind != "sparse_topk":
        return
    sparse = cfg.attention.get("sparse", None)
    if sparse is None:
        raise checks.invalid(
            "model", "attention.sparse", None, "the sub-config of default_sparse_config()"
        )
    choices = dict(stage=STAGES, granularity=GRANULARITIES, method=METHODS, selector=SELECTORS)
    for name, allowed in choices.items():
        checks.check_choice("model", f"attention.sparse.{name}", sparse.get(name), allowed)
    for name in ("top_k", "block_size", "index_heads", "index_head_dim"):
        checks.check_int("model", f"attention.sparse.{name}", sparse.get(name), minimum=1)
    for name in ("local_window", "first_tokens", "index_rope_dim"):
        checks.check_int("model", f"attention.sparse.{name}", sparse.get(name), minimum=0)
    rope_dim = sparse.index_rope_dim
    if rope_dim % 2 or rope_dim > sparse.index_head_dim:
        raise checks.invalid(
            "model", "attention.sparse.index_rope_dim", rope_dim, "an even number <= index_head_dim"
        )
    if sparse.granularity == "block" and sparse.top_k < sparse.block_size:
        raise checks.invalid(
            "model", "attention.sparse.top_k", sparse.top_k, f">= block_size={sparse.block_size}"
        )
    checks.check_real(
        "model", "attention.sparse.loss_weight", sparse.get("loss_weight"), minimum=0, finite=False
    )
    if cfg.attention.logits_soft_cap is not None or cfg.position.kind == "alibi":
        raise ValueError(
            "model.attention.kind='sparse_topk': expected no logits_soft_cap and "
            f"position.kind other than 'alibi' (got logits_soft_cap="
            f"{cfg.attention.logits_soft_cap!r}, position.kind={cfg.position.kind!r})"
        )
    if cfg.position.kind == "rope" and rope_dim:
        _check_indexer_rope(cfg)


def _check_indexer_rope(cfg) -> None:
    """ValueError naming index_rope_dim if the model's RoPE scheme, valid for head_dim, does not
    fit a rotary head of index_rope_dim dims (longrope's factors are sized for the model's rotary
    dim; NTK needs >= 4 dims). A broken scheme is left to the `model.position` checks."""
    position = cfg.position
    scaling = {k: position.rope_scaling[k] for k in position.rope_scaling.keys()}
    scaling = {k: v for k, v in scaling.items() if v is not None}
    common = dict(base=position.rope_base, kind=position.rope_kind)
    try:
        rope_frequencies(cfg.head_dim, **common, **scaling)
    except (ValueError, TypeError):
        return
    rope = indexer_rope(cfg)
    try:
        rope_frequencies(rope["rope_dim"], **common, **dict(rope["rope_scaling"]))
    except ValueError as e:
        raise checks.invalid(
            "model",
            "attention.sparse.index_rope_dim",
            rope["rope_dim"],
            f"a rotary dim that position.rope_kind={position.rope_kind!r} fits ({e})",
        ) from e
