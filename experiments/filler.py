"""The filler experiment (configs/ablations/filler.py): accuracy by needle depth before and after
fine-tuning on each filler layout.

Every model (general = before, and each fine-tune) is scored at every seed on the same held-out
examples of layout "depth" (the evaluation seed 0; training examples use seeds >= 2**62), per
depth: the per-query accuracy on task A's queries (MQAR's per-query metric, decided in one
teacher-forced pass by `eval/task_eval.py`). Per fine-tune, the change from the general model of
the same seed is paired by seed, so its 95% CI removes the seed-to-seed spread of the general
models. Writes results.json, a table and figure.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from longctx_jax.ablation import train_variants
from longctx_jax.data.tasks.filler import make_filler_example
from longctx_jax.eval.perplexity import model_logits_fn
from longctx_jax.eval.task_eval import greedy_predictions_fn, score_task_examples
from longctx_jax.provenance import format_mean_ci, mean_ci, write_results
from longctx_jax.run import load_model

EVAL_SEED = 0


def depth_examples(ablation, depth):
    task = ablation.baseline.data.task.filler
    return [
        make_filler_example(
            EVAL_SEED,
            ablation.baseline.data.seq_len,
            "depth",
            index=i,
            depth=depth,
            num_pairs=task.num_pairs,
            example_len=task.example_len,
            key_range=tuple(task.key_range),
            value_range=tuple(task.value_range),
            filler_range=tuple(task.filler_range),
        )
        for i in range(ablation.eval_examples)
    ]


def accuracy_by_depth(ablation, run_dir, examples_by_depth) -> list[float]:
    """Per depth: the fraction of task A's queries answered right."""
    model_config, params = load_model(run_dir)
    predict = greedy_predictions_fn(model_logits_fn(model_config))
    out = []
    for examples in examples_by_depth:
        scores = score_task_examples(
            predict,
            params,
            examples,
            pad_len=ablation.baseline.data.seq_len,
            batch_size=min(64, len(examples)),
        )
        hits = [
            score.spans[q]
            for score, e in zip(scores, examples, strict=True)
            for q in e.metadata["a_queries"]
        ]
        out.append(float(np.mean(hits)))
    return out


def summarize(ablation, accuracy) -> dict:
    """{variant: {"accuracy": [CI per depth], "tilt": CI, and for fine-tunes "change": [paired
    CI per depth], "tilt_change": paired CI}}. The tilt is accuracy at the last depth minus at
    the first (pairs at the end of the filler against pairs at the very start): a model that
    discounts early history tilts up."""
    seeds = list(ablation.seeds)
    before = np.array([accuracy["general", s] for s in seeds])  # [seeds, depths]
    out = {}
    for name in sorted(ablation.variants, key=lambda n: n != "general"):  # general first
        per_seed = np.array([accuracy[name, s] for s in seeds])
        tilt = per_seed[:, -1] - per_seed[:, 0]
        entry = dict(
            accuracy=[mean_ci(per_seed[:, i]) for i in range(per_seed.shape[1])],
            tilt=mean_ci(tilt),
        )
        if name != "general":
            change = per_seed - before
            entry["change"] = [mean_ci(change[:, i]) for i in range(change.shape[1])]
            entry["tilt_change"] = mean_ci(tilt - (before[:, -1] - before[:, 0]))
        out[name] = entry
    return out


def format_table(results) -> str:
    depths = results["depths"]
    header = "".join(f"{'depth ' + str(d):>16}" for d in depths) + f"{'tilt':>16}"
    lines = [f"{'model':<16}" + header]
    for name, entry in results["variants"].items():
        cells = [format_mean_ci(c) for c in entry["accuracy"]]
        cells.append(format_mean_ci(entry["tilt"], signed=True))
        lines.append(f"{name:<16}" + "".join(f"{c:>16}" for c in cells))
    lines.append("change from general (paired by seed):")
    for name, entry in results["variants"].items():
        if "change" in entry:
            changes = entry["change"] + [entry["tilt_change"]]
            cells = "".join(f"{format_mean_ci(c, signed=True):>16}" for c in changes)
            lines.append(f"{name:<16}" + cells)
    return "\n".join(lines)


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir, seeds=ablation.seeds)
    examples = [depth_examples(ablation, d) for d in ablation.depths]
    accuracy = {}
    for (name, seed), (_, run_dir) in trained.items():
        print(f"== evaluating {name} (seed {seed})")
        accuracy[name, seed] = accuracy_by_depth(ablation, run_dir, examples)
    task = ablation.baseline.data.task.filler
    results = dict(
        ablation=ablation.name,
        seq_len=ablation.baseline.data.seq_len,
        num_pairs=task.num_pairs,
        example_len=task.example_len,
        depths=list(ablation.depths),
        eval_examples=ablation.eval_examples,
        chance=1.0 / (task.value_range[1] - task.value_range[0]),
        variants=summarize(ablation, accuracy),
    )
    write_results(workdir / "results.json", results, seeds=list(ablation.seeds))
    from longctx_jax.viz.filler import plot_filler

    plot_filler(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
