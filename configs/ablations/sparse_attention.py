"""Sparse attention at a fixed key budget k: dense vs DSA (learned top-k) vs sliding window vs
oracle top-k, on the stdlib corpus.

  longctx ablate --config configs/ablations/sparse_attention.py:demo   # ~12 min on a 2-core CPU
  longctx ablate --config configs/ablations/sparse_attention.py        # full

Stages, each from the previous one's checkpoint ("@name"):
  pretrain  a dense LM (`sparse_topk` selecting every key is exactly dense attention; the indexer
            is present but untrained: loss_weight 0, so only weight decay moves it).
  warmup    dense warm-up: only the indexer trains, by the KL loss to dense attention.
  dense, dsa, window, oracle   the sparse stage, the same steps and learning rate each: every
            key (dense), the indexer's top k (DSA), the k nearest keys (`local_window = k` fills
            the budget), or the top k by the true head-summed attention (oracle).

Learning rates: pretraining and the warm-up (a freshly initialised indexer, the rest frozen) warm
up to the pretraining peak `train.learning_rate`; the sparse stages train at
`sparse_lr_fraction` (0.1) of it, with a short warm-up (the optimizer state starts fresh) and the
usual cosine decay, instead of re-warming the whole pretrained model to the full peak.
DeepSeek-V3.2's reference ratio: indexer warm-up at 1e-3 for 1000 steps, sparse training at
7.3e-6, 0.73% of that; 7.3e-6 is the constant rate of DeepSeek-V3's last pretraining phase, so
the sparse stage continues the model at the rate its pretraining ended with. Here pretraining's
cosine ends at 10% of the peak (train/optimizer.py), so 0.1 is the same rule at this scale;
0.73% of our 3e-3 peak (2.2e-5) would barely move a model in the demo's 120 steps, and the
"after" rows would repeat "before".
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config
from longctx_jax.model.sparse_config import dense_with_indexer

# Train length, key budget, model size, batch, steps per stage, the sparse stages' learning rate
# as a fraction of the pretraining peak, evaluation documents and recall ks.
SIZES = {
    "demo": dict(
        seq_len=256,
        top_k=32,
        layers=2,
        width=128,
        batch=8,
        pretrain=200,
        warmup=100,
        sparse=120,
        sparse_lr_fraction=0.1,
        eval_documents=24,
        recall_ks=(4, 8, 16, 32, 64, 128),
    ),
    "full": dict(
        seq_len=1024,
        top_k=64,
        layers=4,
        width=256,
        batch=8,
        pretrain=3000,
        warmup=500,
        sparse=1000,
        sparse_lr_fraction=0.1,
        eval_documents=64,
        recall_ks=(8, 16, 32, 64, 128, 256, 512),
    ),
}


def baseline(size):
    """The dense pretraining run (every later stage starts from it)."""
    s = SIZES[size]
    config = base_config()
    config.model.num_layers = s["layers"]
    config.model.embed_dim = s["width"]
    config.model.num_heads = 4
    config.model.num_kv_heads = 4
    config.model.head_dim = s["width"] // 4
    config.model.mlp_dim = 4 * s["width"]
    dense_with_indexer(config.model, s["seq_len"])
    config.data.seq_len = s["seq_len"]
    config.data.batch_size = s["batch"]
    stage_steps(config, s["pretrain"])
    return config


def stage_steps(config, steps):
    config.train.steps = steps
    config.train.warmup_steps = steps // 10
    config.train.checkpoint_every = steps


STAGE_FIELDS = (
    "model.attention.sparse.loss_weight",
    "train.init_from",
    "train.steps",
    "train.warmup_steps",
    "train.checkpoint_every",
)


def stage(size, init_from, steps, lr_fraction=1.0, **sparse):
    """A stage from `init_from`'s checkpoint with the indexer loss on, `sparse` overrides and a
    peak learning rate of `lr_fraction` times the pretraining one."""
    config = baseline(size)
    config.model.attention.sparse.update(loss_weight=1.0, **sparse)
    config.train.init_from = init_from
    stage_steps(config, steps)
    changes = STAGE_FIELDS + tuple(f"model.attention.sparse.{name}" for name in sparse)
    if lr_fraction != 1.0:
        config.train.learning_rate *= lr_fraction
        changes += ("train.learning_rate",)
    return variant(config, *changes)


def get_config(size="full"):
    ablation, s = new_ablation(
        "sparse_attention", size, SIZES, "../../experiments/sparse_attention.py"
    )
    k, steps, lr = s["top_k"], s["sparse"], s["sparse_lr_fraction"]
    ablation.baseline = baseline(size)
    ablation.top_k = k
    ablation.recall_ks = s["recall_ks"]
    ablation.eval_documents = s["eval_documents"]
    ablation.variants = dict(
        pretrain=variant(baseline(size)),
        warmup=stage(size, "@pretrain", s["warmup"], stage="dense_warmup"),
        dense=stage(size, "@warmup", steps, lr),
        dsa=stage(size, "@warmup", steps, lr, top_k=k),
        window=stage(size, "@warmup", steps, lr, top_k=k, local_window=k),
        oracle=stage(size, "@warmup", steps, lr, top_k=k, selector="oracle"),
    )
    return ablation
