"""KV-cache memory: MQAR accuracy against the bytes a cache really holds, per eviction policy and
quantisation, for MHA / GQA / MQA models and the fixed-state linear mixer, at several seeds.

  longctx ablate --config configs/ablations/kv_memory.py:demo   # about 9 min on 2 CPU cores
  longctx ablate --config configs/ablations/kv_memory.py        # full: about 45 min

Variants (each trained at every seed; `train.seed` = `data.seed` = the seed), all on MQAR rows
(the retrieval ablation's task: T = 32, keys and values from 16 tokens each, trained on 2 and 4
pairs):
  mha      dense attention, 8 query and 8 key/value heads.
  gqa      (full size) 2 key/value heads: a quarter of the cache.
  mqa      1 key/value head: an eighth.
  linear   (full size) the gated linear-attention mixer: a fixed state of kv_heads x head_dim^2
           per layer.
The recipe is the retrieval ablation's dense one (400 steps, 200 of warm-up, peak 3e-3): with 300
steps and 100 of warm-up the models stay on the 1/P plateau (every cache then scores ~0.23).
The runner evaluates each trained model through `longctx_jax.inference` caches: the MQAR context
(the key-value pairs) is one prefill chunk, then every later token is a decode step, so a cache
smaller than the sequence evicts as it goes. MHA gets every policy at every capacity in
`capacities` and every quantisation in `quantisations` (at full capacity); GQA and MQA the full
cache and int4 KIVI; the mixer its state. x = payload bytes per sequence (inference/layout.py).
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config

# The retrieval ablation's MQAR (configs/ablations/retrieval.py): disjoint key and value ranges,
# token 0 between the query slots.
MQAR_TASK = dict(key_range=(1, 17), value_range=(128, 144), noise="pad")

DEMO = dict(
    seq_len=32,
    train_pairs=(2, 4),
    eval_pairs=4,
    layers=2,
    width=128,
    heads=8,
    batch=32,
    learning_rate=3e-3,
    warmup_steps=200,
    steps=400,
    seeds=(0, 1, 2),
    eval_examples=64,
    variants=("mha", "mqa"),
    policies=("window", "sinks", "h2o", "tova", "snapkv", "knorm"),
    capacities=(6, 12),
    quantisations=("bf16", "int8", "int4", "int4_kivi", "int2", "int2_kivi"),
)
SIZES = {
    "demo": DEMO,
    "full": dict(
        DEMO,
        steps=800,
        eval_examples=128,
        variants=("mha", "gqa", "mqa", "linear"),
        capacities=(6, 8, 10, 12, 16, 20, 24),
    ),
}
KV_HEADS = dict(mha=8, gqa=2, mqa=1, linear=8)


def model_run(size, name):
    s = SIZES[size]
    config = base_config()
    config.model.num_layers = s["layers"]
    config.model.embed_dim = s["width"]
    config.model.num_heads = s["heads"]
    config.model.num_kv_heads = KV_HEADS[name]
    config.model.head_dim = s["width"] // s["heads"]
    config.model.mlp_dim = 2 * s["width"]
    if name == "linear":
        config.model.attention.kind = "linear"
    config.data.seq_len = s["seq_len"]
    config.data.batch_size = s["batch"]
    config.data.task.kind = "mqar"
    config.data.task.fraction = 1.0
    config.data.task.mqar.num_pairs = s["train_pairs"]
    config.data.task.mqar.update(MQAR_TASK)
    config.train.learning_rate = s["learning_rate"]
    config.train.weight_decay = 0.0
    config.train.log_every = 50
    config.train.steps = s["steps"]
    config.train.warmup_steps = s["warmup_steps"]
    config.train.checkpoint_every = s["steps"]
    return config


def get_config(size="full"):
    ablation, s = new_ablation("kv_memory", size, SIZES, "../../experiments/kv_memory.py")
    ablation.baseline = model_run(size, "mha")
    ablation.seeds = s["seeds"]
    ablation.eval_pairs = s["eval_pairs"]
    ablation.eval_examples = s["eval_examples"]
    ablation.policies = s["policies"]
    ablation.capacities = s["capacities"]
    ablation.quantisations = s["quantisations"]
    ablation.mqar_task = MQAR_TASK
    variants = {}
    for name in s["variants"]:
        changes = () if name == "mha" else ("model.num_kv_heads",)
        if name == "linear":
            changes += ("model.attention.kind",)
        variants[name] = variant(model_run(size, name), *changes)
    ablation.variants = variants
    return ablation
