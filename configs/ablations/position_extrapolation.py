"""Position extrapolation: train short with RoPE, ALiBi and NoPE; evaluate at 1x..8x the length.

The RoPE model is also evaluated with eval-time PI (linear), NTK, dynamic NTK and YaRN (same
weights, rescaled frequencies), and fine-tuned briefly at 2x length with PI and with YaRN.

  longctx ablate --config configs/ablations/position_extrapolation.py:demo   # make demo, ~5 min
  longctx ablate --config configs/ablations/position_extrapolation.py        # full, ~40 min

Expected (as the papers report): plain RoPE's perplexity blows up past the training length, ALiBi
stays nearly flat, eval-time YaRN degrades far less than PI without fine-tuning, and a short
fine-tune at 2x repairs PI and YaRN at 2x.
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config, set_model_size

# Train length and steps, model size, batch, eval lengths (x train length), fine-tune steps.
SIZES = {
    "demo": dict(
        seq_len=64,
        steps=400,
        layers=2,
        width=96,
        batch=16,
        multiples=(1, 2, 4, 8),
        ft=60,
        eval_documents=12,
        eval_doc_bytes=2048,
    ),
    "full": dict(
        seq_len=128,
        steps=2500,
        layers=3,
        width=128,
        batch=16,
        multiples=(1, 2, 4, 8),
        ft=250,
        eval_documents=24,
        eval_doc_bytes=4096,
    ),
}


def baseline(size):
    s = SIZES[size]
    config = base_config()
    set_model_size(config.model, layers=s["layers"], width=s["width"], heads=4)
    config.data.seq_len = s["seq_len"]
    config.data.batch_size = s["batch"]
    config.train.steps = s["steps"]
    config.train.warmup_steps = s["steps"] // 10
    config.train.checkpoint_every = s["steps"]
    return config


def get_config(size="full"):
    ablation, s = new_ablation(
        "position_extrapolation", size, SIZES, "../../experiments/position_extrapolation.py"
    )
    ablation.baseline = baseline(size)
    ablation.eval_multiples = s["multiples"]
    ablation.eval_rope_kinds = ("linear", "ntk", "dynamic", "yarn")
    # The same text at every evaluation length: the first eval_doc_bytes bytes of the first
    # eval_documents validation files long enough for the longest length.
    ablation.eval_documents = s["eval_documents"]
    ablation.eval_doc_bytes = s["eval_doc_bytes"]

    rope = baseline(size)
    alibi = baseline(size)
    alibi.model.position.kind = "alibi"
    nope = baseline(size)
    nope.model.position.kind = "nope"
    variants = dict(
        rope=variant(rope),
        alibi=variant(alibi, "model.position.kind"),
        nope=variant(nope, "model.position.kind"),
    )
    # Short fine-tunes at 2x length from the RoPE checkpoint ("@rope": that variant's workdir).
    for kind in ("linear", "yarn"):
        tuned = baseline(size)
        tuned.model.position.rope_kind = kind
        tuned.model.position.rope_scaling.factor = 2.0
        changes = ["model.position.rope_kind", "model.position.rope_scaling.factor"]
        if kind == "yarn":
            tuned.model.position.rope_scaling.original_max_position_embeddings = s["seq_len"]
            changes.append("model.position.rope_scaling.original_max_position_embeddings")
        tuned.data.seq_len = 2 * s["seq_len"]
        tuned.data.batch_size = s["batch"] // 2  # same tokens per step
        tuned.train.steps = s["ft"]
        tuned.train.warmup_steps = s["ft"] // 10
        tuned.train.checkpoint_every = s["ft"]
        tuned.train.init_from = "@rope"
        changes += ["data.seq_len", "data.batch_size", "train.steps", "train.warmup_steps"]
        changes += ["train.checkpoint_every", "train.init_from"]
        variants[f"{'pi' if kind == 'linear' else kind}_finetune_2x"] = variant(tuned, *changes)
    ablation.variants = variants
    return ablation
