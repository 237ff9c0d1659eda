"""The filler experiment: does fine-tuning on retrieval with irrelevant filler at the start (or
stacked, interrupted tasks) teach a model to discount early history?

  longctx ablate --config configs/ablations/filler.py:demo   # 6.9 min on 2 CPU cores
  longctx ablate --config configs/ablations/filler.py        # full: ~20 min (estimate)

Task: MQAR with filler (`data.task.kind="filler"`, longctx_jax/data/tasks/filler.py): P pairs
and their queries in an example of `example_len` tokens, laid out in rows of `seq_len` tokens
with irrelevant filler tokens (a range disjoint from keys and values).

  general       trained from scratch on the task alone (layout "absent": rows of example_len
                tokens, no filler): the model "before" fine-tuning.
  ft_absent     from general, the same data for `ft_steps` more steps (the control: what more
                training alone does).
  ft_start      from general, all the filler first, then the task (bootstrap padding): the early
                context is always noise.
  ft_interleaved  from general, filler after every pair, before the queries.
  ft_stacked    from general, task A's pairs, whole tasks B and C, then A's queries.

Probes for the general model (docs/length_distribution.md): trained with the pairs at a random
depth of the filler from the start, it stayed on MQAR's 1/P plateau for 1,500 steps; trained on
the task alone it left the plateau after ~250 of 600 steps and answered 0.78-0.84 of the
queries with filler at any depth; a 400-step schedule left seed 0 on the plateau.

Measured (experiments/filler.py): per-query accuracy on A's queries with the pairs at depth
0, 0.25, ..., 1 of the filler (layout "depth": depth 0 is the very start of the context), for
every model, at every seed; per fine-tune the change from its own seed's general model, with 95%
CIs. The hypothesis: ft_start loses accuracy at depth 0 (the start of the context) relative to
the control ft_absent.
"""

from longctx_jax.ablation import new_ablation, variant
from longctx_jax.config import base_config, set_model_size

SIZES = {
    "demo": dict(steps=600, ft_steps=60, seeds=(0, 1, 2), eval_examples=128),
    "full": dict(steps=1800, ft_steps=180, seeds=(0, 1, 2), eval_examples=512),
}
LAYOUTS = ("absent", "start", "interleaved", "stacked")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def baseline(size):
    s = SIZES[size]
    config = base_config()
    set_model_size(config.model, layers=2, width=128, heads=8)
    config.data.seq_len = 32
    config.data.batch_size = 32
    config.data.task.kind = "filler"
    config.data.task.fraction = 1.0
    config.data.task.filler.update(dict(layout="absent", depths=(), num_pairs=2, example_len=16))
    config.train.steps = s["steps"]
    config.train.warmup_steps = s["steps"] // 4
    config.train.learning_rate = 3e-3
    config.train.checkpoint_every = s["steps"]
    config.train.log_every = 50
    return config


def get_config(size="full"):
    ablation, s = new_ablation("filler", size, SIZES, "../../experiments/filler.py")
    ablation.baseline = baseline(size)
    ablation.seeds = s["seeds"]
    ablation.depths = DEPTHS
    ablation.eval_examples = s["eval_examples"]
    variants = dict(general=variant(baseline(size)))
    for layout in LAYOUTS:
        tuned = baseline(size)
        tuned.data.task.filler.layout = layout
        tuned.train.init_from = "@general"
        tuned.train.steps = s["ft_steps"]
        tuned.train.warmup_steps = s["ft_steps"] // 10
        tuned.train.learning_rate = 1e-3
        tuned.train.checkpoint_every = s["ft_steps"]
        changes = ["train.init_from", "train.steps", "train.warmup_steps", "train.learning_rate"]
        changes += ["train.checkpoint_every"]
        if layout != "absent":
            changes.append("data.task.filler.layout")
        variants[f"ft_{layout}"] = variant(tuned, *changes)
    ablation.variants = variants
    return ablation
