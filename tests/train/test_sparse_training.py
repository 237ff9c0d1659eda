"""Two-stage training of `sparse_topk` attention: the dense warm-up trains only the indexer and
raises its recall of dense attention mass on the stdlib corpus; the sparse stage starts from the
warm-up checkpoint and trains everything."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from tiny_config import checkpointed_params, tiny_config

from longctx_jax.attention.sparse import attention_mass_recall
from longctx_jax.data.pipeline import make_train_iterator
from longctx_jax.model import attention_maps
from longctx_jax.model.sparse_block import index_score_maps
from longctx_jax.run import BATCH_KEYS, build_run
from longctx_jax.train.loop import train

TOP_K = 8


def sparse_tiny_config(stage, steps):
    config = tiny_config(steps)
    config.model.num_layers = 1
    config.model.init_std = 0.3  # peaked attention at init: something to imitate
    config.model.attention.kind = "sparse_topk"
    config.model.attention.sparse.update(
        stage=stage, top_k=TOP_K, index_heads=2, index_head_dim=16, index_rope_dim=8
    )
    config.train.learning_rate = 1e-2
    return config


def recall(model, params, batch):
    kwargs = {key: batch[key] for key in ("positions", "segment_ids")}
    _, state = model.apply(
        {"params": params},
        batch["tokens"],
        capture_attention=True,
        mutable=["intermediates"],
        **kwargs,
    )
    return float(attention_mass_recall(index_score_maps(state)[0], attention_maps(state)[0], TOP_K))


def test_warmup_moves_only_the_indexer_and_raises_its_recall(seed):
    config = sparse_tiny_config("dense_warmup", steps=40)
    config.train.seed = seed % 2**31
    run = build_run(config)  # the trainer's own step
    model = run.model
    data = make_train_iterator(config.data, process_index=0, process_count=1)
    as_batch = lambda b: {key: jnp.asarray(b[key]) for key in BATCH_KEYS}  # noqa: E731
    held_out = as_batch(next(data))
    state = run.init_state()
    params = jax.tree.map(jnp.copy, state.params)  # the step donates the state
    before = recall(model, params, held_out)
    first = None
    with run.scope():
        for _ in range(config.train.steps):
            state, metrics = run.step(state, run.put_batch(next(data)))
            first = float(metrics["indexer_loss"]) if first is None else first
    after = recall(model, state.params, held_out)
    last = float(metrics["indexer_loss"])
    what = f"[seed={seed}] recall@{TOP_K} {before:.3f} -> {after:.3f}, KL {first:.3f} -> {last:.3f}"
    print(what)
    assert after > before + 0.05, what
    assert last < first, what

    pairs = zip(
        jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(state.params), strict=True
    )
    for (path, old), new in pairs:
        moved = bool(np.any(np.asarray(new) != np.asarray(old)))
        name = jax.tree_util.keystr(path)
        assert moved == ("indexer" in name), f"[seed={seed}] {name} moved={moved}"


def test_sparse_stage_starts_from_the_warmup_checkpoint(tmp_path):
    warm, sparse = tmp_path / "warm", tmp_path / "sparse"
    train(sparse_tiny_config("dense_warmup", steps=2), warm)
    config = sparse_tiny_config("sparse", steps=2)
    config.train.init_from = str(warm)
    train(config, sparse)
    records = [json.loads(line) for line in (sparse / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["indexer_loss"]) for r in records)
    start, end = checkpointed_params(warm, 2), checkpointed_params(sparse, 2)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), start, end)
    assert all(jax.tree.leaves(moved)), "the sparse stage trains every parameter"
