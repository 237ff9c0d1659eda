"""The preemption-bias experiment: regenerating interrupted requests from scratch biases outputs
short; a write-ahead log (or a deterministic stack) does not, and the log is the cheapest.

  longctx ablate --config configs/ablations/preemption_bias.py:demo   # 8 min on 2 CPU cores
  longctx ablate --config configs/ablations/preemption_bias.py        # full: ~2 h (estimate)

One small byte LM is trained on the standard library (the single variant "model"); then
`decode.requests` held-out prompts ending mid-line are completed to the end of their line under
per-step preemption hazards `hazards`, with five recovery strategies and `seeds` sampling /
preemption seeds (experiments/preemption_bias.py). Expected: `regenerate` shorter, following the
closed form p(ℓ)(1 − λ)^(ℓ−1); `same_seed`, `wal` and `wal_rebuild` identical to uninterrupted;
`wal` decoding the fewest tokens.
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config, set_model_size

SIZES = {
    "demo": dict(steps=300, requests=256, batch_size=64, hazards=(0.01, 0.02, 0.05)),
    "full": dict(steps=3000, requests=2048, batch_size=256, hazards=(0.005, 0.01, 0.02, 0.05)),
}


def get_config(size="full"):
    ablation, s = new_ablation(
        "preemption_bias", size, SIZES, "../../experiments/preemption_bias.py"
    )
    config = base_config()
    set_model_size(config.model, layers=2, width=128, heads=4)
    config.data.seq_len = 128
    config.data.batch_size = 16
    config.train.steps = s["steps"]
    config.train.warmup_steps = s["steps"] // 10
    config.train.learning_rate = 3e-3
    config.train.checkpoint_every = s["steps"]
    config.train.log_every = 50
    ablation.baseline = config
    ablation.variants = dict(model=variant(config))
    ablation.seeds = (0, 1, 2)
    ablation.hazards = s["hazards"]
    ablation.decode = dict(
        requests=s["requests"],
        prompt_len=48,
        max_new_tokens=64,
        temperature=1.0,
        batch_size=s["batch_size"],
    )
    return ablation
