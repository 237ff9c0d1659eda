"""`attention.kind = "sparse_topk"`: gradient isolation between the LM and the indexer, causality
of the sparse stage (token and block selections), sparse attention over every key equal to the
dense model, and the oracle selector."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_testlib import (
    apply,
    assert_close,
    packed_segments,
    random_params,
    random_tokens,
    tiny_config,
)

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


@pytest.mark.parametrize("selector", ("indexer", "oracle"))
@pytest.mark.parametrize("granularity", ("token", "block"))
def test_future_tokens_leave_past_logits_bit_identical(granularity, selector, seed):
    """Selections only read what a query may see: for blocks, the anchor (the block's first
    query) chooses, so later tokens of the block cannot move earlier queries' keys. Every cut
    point is tried (most of them inside a query block)."""
    # 4 of 12 key blocks (or 16 keys): for blocks, own, first (first_tokens) and previous
    # (local_window) block forced, one chosen by score.
    cfg = sparse_config(
        "sparse",
        top_k=16,
        granularity=granularity,
        block_size=4,
        local_window=3,
        first_tokens=1,
        selector=selector,
    )
    params = random_params(cfg, seed)
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, B, 2 * T)
    before = np.asarray(apply(cfg, params, tokens))
    for cut in range(1, 2 * T):
        changed = tokens.at[:, cut:].set((tokens[:, cut:] + 1 + rng.integers(0, 254)) % 256)
        after = np.asarray(apply(cfg, params, changed))
        np.testing.assert_array_equal(
            before[:, :cut], after[:, :cut], err_msg=f"[seed={seed}] {cut=}"
        )
        assert not np.allclose(before[:, cut:], after[:, cut:]), f"{cut=}: nothing changed"


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


def test_oracle_block_selection_takes_the_anchors_heaviest_blocks(seed):
    """granularity "block" with the oracle: each query block's anchor keeps its own block and
    the blocks where its head-summed dense attention peaks."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, T, 2, 8)), jnp.float32)
    mask = AttentionMask(causal=True)
    sc = sparse_config("sparse", top_k=12, granularity="block", block_size=4).attention.sparse
    blocks, valid = select_keys(oracle_scores(q, k, mask), mask, sc)
    assert blocks.shape == (B, T // 4, 3)
    mass = np.asarray(attention_weights(q, k, mask=mask)).sum(1)  # [B, T, S]
    for b in range(B):
        for a in range(T // 4):
            peak = mass[b, 4 * a].reshape(-1, 4).max(-1)  # the anchor's best key per block
            peak[a] = -1.0  # its own block is always kept
            want = {a, *np.argsort(-peak, kind="stable")[: min(2, a)].tolist()}
            got = set(np.asarray(blocks[b, a])[np.asarray(valid[b, a])].tolist())
            assert got == want, f"[seed={seed}] query block ({b}, {a})"


def test_sparse_stage_memory_grows_linearly_with_length():
    """The sparse stage never holds [T, S] (streamed selection, scores of selected keys only):
    doubling T about doubles its compiled temporaries, where the dense warm-up's quadruple."""
    from longctx_jax.bench.cost import temp_bytes

    def temps(stage, t):
        cfg = sparse_config(stage, top_k=32, method="threshold")
        params = random_params(cfg, 0)["params"]
        tokens = jnp.zeros((1, t), jnp.int32)
        w = jnp.zeros((1, t, cfg.vocab_size), jnp.float32)
        grad = jax.grad(lambda p: sum(losses(cfg, p, tokens, {}, w)))
        return temp_bytes(jax.jit(grad).lower(params).compile())

    sparse = temps("sparse", 4096) / temps("sparse", 2048)
    warmup = temps("dense_warmup", 4096) / temps("dense_warmup", 2048)
    assert sparse < 2.6 < 3.4 < warmup, f"temporaries x{sparse:.2f} sparse, x{warmup:.2f} warm-up"
