"""`attention.kind = "sparse_topk"`: gradient isolation between the LM and the indexer, frozen
parameters in the dense warm-up, and sparse attention over every key equal to the dense model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import assert_close, packed_segments, random_params, random_tokens, tiny_config

from longctx_jax.attention import AttentionMask, attention_weights
from longctx_jax.model import DecoderLM
from longctx_jax.model.sparse_block import LOSS_COLLECTION, indexer_loss, oracle_scores, select_keys

B, T = 2, 24


def sparse_config(stage, **sparse):
    overrides = {"attention.kind": "sparse_topk", "attention.sparse.stage": stage}
    overrides.update({"attention.sparse.index_head_dim": 8, "attention.sparse.index_rope_dim": 4})
    overrides.update({f"attention.sparse.{k}": v for k, v in sparse.items()})
    return tiny_config(overrides)


def inputs(seed):
    rng = np.random.default_rng(seed)
    segment_ids, positions = packed_segments(rng, B, T)
    return random_tokens(rng, B, T), dict(positions=positions, segment_ids=segment_ids)


def losses(cfg, params, tokens, kwargs, w):
    """(LM stand-in sum(w * logits), indexer loss) of one forward pass."""
    logits, state = DecoderLM(cfg).apply(
        {"params": params}, tokens, mutable=[LOSS_COLLECTION], **kwargs
    )
    return jnp.sum(w * logits), indexer_loss(state)


def split(tree):
    """({path: leaf} of indexer parameters, {path: leaf} of the others)."""
    flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
    indexer = {k: v for k, v in flat.items() if "indexer" in k}
    return indexer, {k: v for k, v in flat.items() if "indexer" not in k}


@pytest.mark.parametrize(
    "stage, granularity", [("dense_warmup", "token"), ("sparse", "token"), ("sparse", "block")]
)
def test_gradients_are_isolated_both_ways(stage, granularity, seed):
    cfg = sparse_config(
        stage, top_k=8, local_window=2, first_tokens=1, granularity=granularity, block_size=4
    )
    params = random_params(cfg, seed)["params"]
    tokens, kwargs = inputs(seed)
    w = jnp.asarray(np.random.default_rng(seed).standard_normal((B, T, 256)), jnp.float32)

    lm_grads = jax.grad(lambda p: losses(cfg, p, tokens, kwargs, w)[0])(params)
    index_grads = jax.grad(lambda p: losses(cfg, p, tokens, kwargs, w)[1])(params)
    lm_on_indexer, lm_on_model = split(lm_grads)
    index_on_indexer, index_on_model = split(index_grads)
    assert lm_on_indexer and index_on_model, "expected indexer and model parameters"
    for name, g in lm_on_indexer.items():
        assert not np.asarray(g).any(), f"[seed={seed}] LM loss reaches {name}"
    for name, g in index_on_model.items():
        assert not np.asarray(g).any(), f"[seed={seed}] indexer loss reaches {name}"
    assert all(np.asarray(g).any() for g in index_on_indexer.values()), f"[seed={seed}]"
    assert sum(np.abs(np.asarray(g)).sum() for g in lm_on_model.values()) > 0, f"[seed={seed}]"


@pytest.mark.parametrize("granularity", ("token", "block"))
def test_selecting_every_key_equals_the_dense_model(granularity, seed):
    sparse_cfg = sparse_config("sparse", top_k=T, granularity=granularity, block_size=4)
    params = random_params(sparse_cfg, seed)["params"]
    tokens, kwargs = inputs(seed)
    got = DecoderLM(sparse_cfg).apply({"params": params}, tokens, **kwargs)
    dense_params = jax.tree.map(lambda x: x, params)
    for block in dense_params:
        if block.startswith("blocks_"):
            dense_params[block]["attention"].pop("indexer")
    want = DecoderLM(tiny_config()).apply({"params": dense_params}, tokens, **kwargs)
    assert_close(got, want, 1e-5, f"[seed={seed}] sparse over every key vs dense logits")

    partial = DecoderLM(sparse_config("sparse", top_k=4)).apply(
        {"params": params}, tokens, **kwargs
    )
    assert np.abs(np.asarray(partial) - np.asarray(want)).max() > 1e-3, "top_k=4 changed nothing"


def test_oracle_selects_the_keys_with_the_most_true_attention_mass(seed):
    rng = np.random.default_rng(seed)
    segment_ids, positions = packed_segments(rng, B, T)
    q = jnp.asarray(rng.standard_normal((B, T, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, T, 2, 8)), jnp.float32)
    mask = AttentionMask(
        q_positions=positions,
        kv_positions=positions,
        q_segment_ids=segment_ids,
        kv_segment_ids=segment_ids,
    )
    sc = sparse_config("sparse", top_k=4, selector="oracle").attention.sparse
    indices, valid = select_keys(oracle_scores(q, k, mask), mask, sc)
    mass = np.asarray(attention_weights(q, k, mask=mask)).sum(1)  # [B, T, S] head-summed
    for b in range(B):
        for t in range(T):
            visible = np.flatnonzero(mass[b, t] > 0)
            want = visible[np.argsort(-mass[b, t, visible], kind="stable")][:4]
            got = np.asarray(indices[b, t])[np.asarray(valid[b, t])]
            assert sorted(got) == sorted(want), f"[seed={seed}] query ({b}, {t})"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"attention.kind": "topk"}, "model.attention.kind='topk'"),
        ({"attention.sparse.stage": "warmup"}, "model.attention.sparse.stage='warmup'"),
        ({"attention.sparse.top_k": 0}, "model.attention.sparse.top_k=0"),
        ({"attention.sparse.method": "sort"}, "model.attention.sparse.method='sort'"),
        ({"attention.sparse.selector": "true"}, "model.attention.sparse.selector='true'"),
        ({"attention.sparse.index_rope_dim": 3}, "model.attention.sparse.index_rope_dim=3"),
        ({"attention.sparse.granularity": "block", "attention.sparse.top_k": 4}, "top_k=4"),
        ({"attention.logits_soft_cap": 30.0}, "logits_soft_cap=30.0"),
    ],
)
def test_bad_sparse_config_raises_value_error(overrides, message):
    cfg = sparse_config("sparse")
    cfg.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        DecoderLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
