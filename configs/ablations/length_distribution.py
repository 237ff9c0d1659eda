"""The training-length distribution: what each distribution of document lengths, with and without
document masking, teaches about distance, at an equal token budget.

  longctx ablate --config configs/ablations/length_distribution.py:demo   # 6.4 min, 2 CPU cores
  longctx ablate --config configs/ablations/length_distribution.py        # full (see below)

Variants: every distribution in `distributions` x document masking on / off, each at `seeds`
(train.seed = data.seed = the seed); every run trains on exactly `token_budget` tokens (steps =
token_budget / (batch_size x seq_len): packing fills every row, so the budget is equal by
construction). The corpus is the stdlib with each package's modules joined into one document
(`data.join_packages`), so long documents exist.

  as_is      documents as they are (token-weighted mean length far above the document mean).
  short      truncated to seq_len / 4: no trained pair is farther than that with masking.
  uniform    crop lengths uniform on [16, 8 x seq_len].
  power_law  p(L) ~ 1/L on [16, 8 x seq_len] (sampled lengths decay fast, as in real corpora).
  prolong    40% short (16 .. seq_len / 4), 60% long (seq_len .. 64K): ProLong's mix.
  upsample   per-source length upsampling (Fu et al.): documents >= 2 x seq_len 4x as likely
             inside their package, each package's token share unchanged.

Measured per run (experiments/length_distribution.py): the trained pair-distance histogram and
piece lengths the trainer counted (data_stats.json), loss by position at the training length,
perplexity at 1x..4x it (as trained, with eval-time STRING and with eval-time YaRN), and
span-recall accuracy by distance at the training length (copying a random span seen d bytes back
in real text, with its guessing control; as trained and with STRING).

Full size: the six distributions x 2 maskings x 3 seeds (36 runs of 1,000 steps of 16 x 256
tokens, width 128: about 16x the demo's work per step). Scaled from the demo's 14 steps/s, about
10 hours on 2 CPU cores; an estimate, not run here (an accelerator is the place for it).
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config, set_model_size

SIZES = {
    "demo": dict(
        seq_len=128,
        batch=8,
        layers=2,
        width=64,
        token_budget=128 * 8 * 150,  # 150 steps
        distributions=("as_is", "short"),
        seeds=(0, 1, 2),
        eval_multiples=(1, 2, 4),
        eval_documents=16,
        recall_examples=16,
    ),
    "full": dict(
        seq_len=256,
        batch=16,
        layers=2,
        width=128,
        token_budget=256 * 16 * 1000,
        distributions=("as_is", "short", "uniform", "power_law", "prolong", "upsample"),
        seeds=(0, 1, 2),
        eval_multiples=(1, 2, 4),
        eval_documents=48,
        recall_examples=32,
    ),
}

# distribution name -> the data fields it sets (functions of seq_len)
DISTRIBUTIONS = {
    "as_is": lambda n: {},
    "short": lambda n: dict(length_distribution="truncated", max_doc_len=n // 4),
    "uniform": lambda n: dict(length_distribution="uniform", max_doc_len=8 * n),
    "power_law": lambda n: dict(
        length_distribution="power_law", max_doc_len=8 * n, power_law_alpha=1.0
    ),
    "prolong": lambda n: {
        "length_distribution": "mixture",
        "mixture.fractions": (0.4, 0.6),
        "mixture.lengths": ((16, n // 4), (n, 65536)),
    },
    "upsample": lambda n: dict(
        length_distribution="upsample", upsample_min_len=2 * n, upsample_ratio=4.0
    ),
}


def steps_for_budget(token_budget, batch_size, seq_len) -> int:
    """Train steps that consume `token_budget` tokens; ValueError naming the field if the budget
    is smaller than one batch or not a whole number of batches."""
    per_step = batch_size * seq_len
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"token_budget={token_budget!r}: expected a positive integer")
    if token_budget < per_step:
        raise ValueError(
            f"token_budget={token_budget}: smaller than one batch (batch_size x seq_len = "
            f"{per_step} tokens)"
        )
    if token_budget % per_step:
        raise ValueError(
            f"token_budget={token_budget}: expected a multiple of one batch ({per_step} tokens)"
        )
    return token_budget // per_step


def baseline(size):
    s = SIZES[size]
    config = base_config()
    set_model_size(config.model, layers=s["layers"], width=s["width"], heads=4)
    config.data.seq_len = s["seq_len"]
    config.data.batch_size = s["batch"]
    config.data.join_packages = True
    config.data.min_doc_len = 16  # the shortest crop of every distribution that draws lengths
    steps = steps_for_budget(s["token_budget"], s["batch"], s["seq_len"])
    config.train.steps = steps
    config.train.warmup_steps = max(1, steps // 10)
    config.train.learning_rate = 3e-3
    config.train.checkpoint_every = steps
    config.train.log_every = max(1, steps // 10)
    return config


def get_config(size="full"):
    ablation, s = new_ablation(
        "length_distribution", size, SIZES, "../../experiments/length_distribution.py"
    )
    ablation.baseline = baseline(size)
    ablation.token_budget = s["token_budget"]
    ablation.seeds = s["seeds"]
    ablation.eval_multiples = s["eval_multiples"]
    ablation.eval_documents = s["eval_documents"]
    ablation.recall_examples = s["recall_examples"]
    variants = {}
    for name in s["distributions"]:
        for masking in (True, False):
            config = baseline(size)
            fields = DISTRIBUTIONS[name](s["seq_len"])
            for field, value in fields.items():
                section, _, leaf = field.rpartition(".")
                (config.data[section] if section else config.data)[leaf] = value
            changes = [f"data.{field}" for field in fields]
            if not masking:
                config.data.document_masking = False
                changes.append("data.document_masking")
            label = f"{name}_{'masked' if masking else 'unmasked'}"
            variants[label] = variant(config, *changes)
    ablation.variants = variants
    return ablation
