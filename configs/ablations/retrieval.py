"""Retrieval under noise: multi-query associative recall (MQAR) by number of key-value pairs for
dense attention, a sliding window, DSA (learned top-k), oracle top-k and a fixed-state linear
mixer, at several seeds; plus a NIAH depth x length grid for a dense model trained on NIAH.

  longctx ablate --config configs/ablations/retrieval.py:demo   # about 12 min on 2 CPU cores
  longctx ablate --config configs/ablations/retrieval.py        # full: about 45 min on 2 CPU cores

Variants (every one trained at each seed in `seeds`; `train.seed` = `data.seed` = the seed):
  dense     sparse_topk selecting every key (exactly dense attention; the indexer is present but
            untrained: loss_weight 0), trained from scratch on MQAR rows only (`data.task`),
            a mixture over `train_pairs` pairs.
  warmup    from dense: only the indexer trains (KL to the dense attention).
  dense_ft, dsa, window, oracle   from warmup, the same steps each, at the sparse stage's
            learning rate: every key (the control for the extra steps), the indexer's top k,
            the k nearest keys, the k keys with the most head-summed dense attention.
  linear    the gated linear-attention mixer (`attention.kind="linear"`, a fixed state of
            heads x head_dim^2 numbers per layer) trained from scratch for as many steps as
            dense + warmup + one sparse stage.
  dense_wW, linear_wW   (full size) dense and linear at width W (`widths`), for accuracy vs width.
  niah      a dense model trained on single-needle NIAH rows (noise haystack) at `niah_len`;
            evaluated at 1x..4x that length, with and without eval-time YaRN.

The MQAR task: T = 32 tokens, keys and values from 16 tokens each, token 0 between the query
slots; these are what let dense attention leave the 1/P plateau within a few hundred steps on a
CPU (docs/retrieval.md has the probes: 32 keys or T = 64 stay on it for 800-1,200 steps).

Expected (zoology's picture): attention solves every #pairs; the linear mixer falls as the pairs
outgrow its state; the window fails on queries whose pair sits outside it; DSA matches dense when
k covers the pairs and the oracle bounds it.
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config
from longctx_jax.eval.registry import eval_config
from longctx_jax.model.sparse_config import dense_with_indexer

SIZES = {
    "demo": dict(
        seq_len=32,
        train_pairs=(2, 4),
        eval_pairs=(2, 4, 8),
        key_range=(1, 17),
        value_range=(128, 144),
        layers=2,
        width=128,
        heads=8,
        batch=32,
        learning_rate=3e-3,
        warmup_steps=200,
        steps=400,
        warmup=30,
        sparse=60,
        sparse_lr_fraction=0.1,
        top_k=4,
        seeds=(0, 1, 2),
        eval_examples=64,
        length_multiples=(1, 2),
        controls=False,
        widths=(),
    ),
    "full": dict(
        seq_len=32,
        train_pairs=(2, 4),
        eval_pairs=(2, 4, 8),
        key_range=(1, 17),
        value_range=(128, 144),
        layers=2,
        width=128,
        heads=8,
        batch=32,
        learning_rate=3e-3,
        warmup_steps=200,
        steps=1500,
        warmup=100,
        sparse=200,
        sparse_lr_fraction=0.1,
        top_k=4,
        seeds=(0, 1, 2),
        eval_examples=128,
        length_multiples=(1, 2, 4),
        controls=True,
        widths=(),  # e.g. (64,): dense and linear also at width 64
        niah_len=384,
        niah_steps=300,
        niah_batch=8,
        niah_multiples=(1, 2, 3, 4),
        niah_depths=(0.0, 0.25, 0.5, 0.75, 1.0),
        niah_examples=8,
    ),
}


def mqar_task(size):
    """The MQAR generator's knobs, the same for training rows and evaluation: keys and values
    from disjoint token ranges, token 0 between the query slots."""
    s = SIZES[size]
    return dict(key_range=s["key_range"], value_range=s["value_range"], noise="pad")


def baseline(size):
    """The dense MQAR run (every staged variant starts from it)."""
    s = SIZES[size]
    config = base_config()
    config.model.num_layers = s["layers"]
    config.model.embed_dim = s["width"]
    config.model.num_heads = s["heads"]
    config.model.num_kv_heads = s["heads"]
    config.model.head_dim = s["width"] // s["heads"]
    config.model.mlp_dim = 2 * s["width"]
    dense_with_indexer(config.model, s["seq_len"])
    config.data.seq_len = s["seq_len"]
    config.data.batch_size = s["batch"]
    config.data.task.kind = "mqar"
    config.data.task.fraction = 1.0
    config.data.task.mqar.num_pairs = s["train_pairs"]
    config.data.task.mqar.update(mqar_task(size))
    config.train.learning_rate = s["learning_rate"]
    config.train.weight_decay = 0.0
    config.train.log_every = 50
    stage_steps(config, s["steps"], s["warmup_steps"])
    return config


def stage_steps(config, steps, warmup_steps=None):
    config.train.steps = steps
    config.train.warmup_steps = max(1, steps // 10) if warmup_steps is None else warmup_steps
    config.train.checkpoint_every = steps


STEP_FIELDS = ("train.steps", "train.warmup_steps", "train.checkpoint_every")


def stage(size, init_from, steps, *, learning_rate=None, **sparse):
    """A stage from `init_from`'s checkpoint with the indexer loss on and `sparse` overrides."""
    config = baseline(size)
    config.model.attention.sparse.update(loss_weight=1.0, **sparse)
    config.train.init_from = init_from
    stage_steps(config, steps)
    changes = STEP_FIELDS + ("model.attention.sparse.loss_weight", "train.init_from")
    changes += tuple(f"model.attention.sparse.{name}" for name in sparse)
    if learning_rate is not None:
        config.train.learning_rate = learning_rate
        changes += ("train.learning_rate",)
    return variant(config, *changes)


def mqar_eval(size, *, length=0):
    s = SIZES[size]
    return eval_config(
        "mqar",
        length=length,
        num_pairs=s["eval_pairs"],
        num_examples=s["eval_examples"],
        batch_size=32,
        **mqar_task(size),
    )


def niah_eval(size, *, rope_kind="default"):
    s = SIZES[size]
    lengths = tuple(m * s["niah_len"] for m in s["niah_multiples"])
    return eval_config(
        "niah",
        lengths=lengths,
        depths=s["niah_depths"],
        num_examples=s["niah_examples"],
        batch_size=8,
        rope_kind=rope_kind,
    )


def get_config(size="full"):
    ablation, s = new_ablation("retrieval", size, SIZES, "../../experiments/retrieval.py")
    k, sparse_steps = s["top_k"], s["sparse"]
    sparse_lr = s["sparse_lr_fraction"] * s["learning_rate"]
    ablation.baseline = baseline(size)
    ablation.seeds = s["seeds"]
    ablation.top_k = k
    ablation.mqar_eval = mqar_eval(size)
    ablation.length_multiples = s["length_multiples"]

    linear = baseline(size)
    linear.model.attention.kind = "linear"
    stage_steps(linear, s["steps"] + s["warmup"] + sparse_steps, s["warmup_steps"])

    variants = dict(
        dense=variant(baseline(size)),
        warmup=stage(size, "@dense", s["warmup"], stage="dense_warmup"),
        dsa=stage(size, "@warmup", sparse_steps, learning_rate=sparse_lr, top_k=k),
        window=stage(
            size, "@warmup", sparse_steps, learning_rate=sparse_lr, top_k=k, local_window=k
        ),
        oracle=stage(
            size, "@warmup", sparse_steps, learning_rate=sparse_lr, top_k=k, selector="oracle"
        ),
        linear=variant(linear, "model.attention.kind", *STEP_FIELDS),
    )
    if s["controls"]:  # the staged variants' extra steps, with every key
        variants["dense_ft"] = stage(size, "@warmup", sparse_steps, learning_rate=sparse_lr)
    for width in s["widths"]:  # accuracy vs model width: dense and linear at other widths
        for name, base in (("dense", baseline(size)), ("linear", linear)):
            config = base.copy_and_resolve_references()
            config.model.embed_dim = width
            config.model.head_dim = width // s["heads"]
            config.model.mlp_dim = 2 * width
            changes = ("model.embed_dim", "model.head_dim", "model.mlp_dim")
            changes += variants[name].changes
            variants[f"{name}_w{width}"] = variant(config, *changes)
    ablation.niah_evals = {}
    if "niah_len" in s:  # a dense model trained on NIAH, for the depth x length grid
        niah = baseline(size)
        niah.data.seq_len = s["niah_len"]
        niah.data.batch_size = s["niah_batch"]
        niah.data.task.kind = "niah"
        niah.model.attention.kind = "dense"  # the same function; the probes read its maps
        stage_steps(niah, s["niah_steps"])
        changes = ("data.seq_len", "data.batch_size", "data.task.kind", "model.attention.kind")
        variants["niah"] = variant(niah, *changes, *STEP_FIELDS)
        ablation.niah_evals = dict(plain=niah_eval(size), yarn=niah_eval(size, rope_kind="yarn"))
    ablation.variants = variants
    return ablation
