"""The training-length distribution ablation (configs/ablations/length_distribution.py).

Trains every variant (a length distribution x document masking) at every seed on the same token
budget, then per run: reads the trained pair-distance histogram and piece lengths the trainer
counted (WORKDIR/data_stats.json), measures loss by position and perplexity at 1x..4x the
training length on the same validation text, and span-recall accuracy by distance (copying a
random span seen d bytes back, `eval/evaluators/span_recall.py`) at the training length.
Perplexity is measured as trained, with eval-time STRING and with eval-time YaRN (same
weights); recall as trained and with STRING (YaRN changes nothing at the training length). Writes
results.json (per-seed values, mean and 95% CI per cell), a table and figure.png.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from longctx_jax.ablation import train_variants
from longctx_jax.eval.evaluators.span_recall import defaults as recall_defaults
from longctx_jax.eval.evaluators.span_recall import span_recall
from longctx_jax.eval.perplexity import perplexity_by_position, with_eval_rope
from longctx_jax.provenance import format_mean_ci, mean_ci, write_results
from longctx_jax.run import load_model

EVAL_KINDS = ("default", "string", "yarn")  # as trained, eval-time STRING, eval-time YaRN
RECALL_KINDS = ("default", "string")  # at the training length YaRN is the model as trained
POSITION_BUCKETS = 8


def model_for(model_config, kind, train_len, length):
    return (
        model_config if kind == "default" else with_eval_rope(model_config, kind, train_len, length)
    )


def evaluate_run(ablation, config, run_dir) -> dict:
    """One run's numbers: trained distances, perplexity by length and recall by distance."""
    data = ablation.baseline.data  # every run is evaluated on the same validation text
    train_len = data.seq_len
    lengths = [train_len * m for m in ablation.eval_multiples]
    stats = json.loads((Path(run_dir) / "data_stats.json").read_text())
    _, params = load_model(run_dir)
    same_text = dict(num_documents=ablation.eval_documents, min_doc_len=max(lengths) + 1)
    out = dict(
        pairs=stats["pairs"],
        piece_lengths=stats.get("piece_lengths_stats"),
        perplexity={},
        loss_by_position=None,
        recall={},
    )
    for kind in EVAL_KINDS:
        rows = []
        for length in lengths:
            result = perplexity_by_position(
                model_for(config.model, kind, train_len, length),
                params,
                data,
                eval_len=length,
                stride=length,
                max_doc_len=max(lengths) + 1,
                buckets=POSITION_BUCKETS,
                progress=False,
                **same_text,
            )
            rows.append(result["perplexity"])
            if kind == "default" and length == train_len:
                out["loss_by_position"] = result["by_position"]
        out["perplexity"][kind] = rows
    for kind in RECALL_KINDS:
        cfg = recall_defaults()
        cfg.update(
            lengths=(train_len,),
            num_examples=ablation.recall_examples,
            batch_size=ablation.recall_examples,
            rope_kind=kind,
        )
        scalars, details = span_recall(cfg, config.model, params, data, progress=False)
        out["recall"][kind] = dict(
            cells=details["cells"], control_token_accuracy=scalars["control_token_accuracy"]
        )
    return out


def summarize(ablation, per_run: dict) -> dict:
    """Per variant: mean and 95% CI over seeds of every number; pair histograms summed."""
    variants = {}
    for name in ablation.variants:
        runs = [per_run[name, seed] for seed in ablation.seeds]
        pairs = np.sum([r["pairs"] for r in runs], axis=0)
        summary = dict(
            pairs=pairs.tolist(),
            piece_lengths=[r["piece_lengths"] for r in runs],
            loss_by_position=dict(
                edges=runs[0]["loss_by_position"]["edges"],
                nll=[
                    mean_ci(values)
                    for values in zip(*[r["loss_by_position"]["nll"] for r in runs], strict=True)
                ],
            ),
            perplexity={
                kind: [mean_ci(v) for v in zip(*[r["perplexity"][kind] for r in runs], strict=True)]
                for kind in EVAL_KINDS
            },
            recall={},
        )
        for kind in RECALL_KINDS:
            cells = []
            for i, cell in enumerate(runs[0]["recall"][kind]["cells"]):
                per_seed = [r["recall"][kind]["cells"][i] for r in runs]
                cells.append(
                    dict(
                        length=cell["length"],
                        distance=cell["distance"],
                        accuracy=mean_ci([c["accuracy"] for c in per_seed]),
                        token_accuracy=mean_ci([c["token_accuracy"] for c in per_seed]),
                    )
                )
            control = mean_ci([r["recall"][kind]["control_token_accuracy"] for r in runs])
            summary["recall"][kind] = dict(cells=cells, control_token_accuracy=control)
        variants[name] = summary
    return variants


def format_table(results) -> str:
    train_len = results["train_len"]
    lengths = results["lengths"]
    lines = [
        f"{'variant':<20} {'tok-w mean':>10} {'pairs>=L/2':>10} "
        + "".join(f"{'ppl@' + str(n):>14}" for n in lengths)
        + f" {'recall tok acc @L (by distance)':>34}"
    ]
    for name, v in results["variants"].items():
        pieces = [p for p in v["piece_lengths"] if p]
        weighted = np.mean([p["token_weighted_mean"] for p in pieces]) if pieces else float("nan")
        pairs = np.asarray(v["pairs"], float)
        far = pairs[train_len // 2 :].sum() / pairs.sum()
        recall = " ".join(
            f"{c['distance']}:{c['token_accuracy']['mean']:.2f}"
            for c in v["recall"]["default"]["cells"]
            if c["length"] == train_len
        )
        lines.append(
            f"{name:<20} {weighted:>10.1f} {far:>10.3f} "
            + "".join(f"{format_mean_ci(c):>14}" for c in v["perplexity"]["default"])
            + f" {recall}"
        )
    return "\n".join(lines)


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir, seeds=ablation.seeds)
    per_run = {}
    for (name, seed), (config, run_dir) in trained.items():
        print(f"== evaluating {name} (seed {seed})")
        per_run[name, seed] = evaluate_run(ablation, config, run_dir)
    train_len = ablation.baseline.data.seq_len
    results = dict(
        ablation=ablation.name,
        train_len=train_len,
        lengths=[train_len * m for m in ablation.eval_multiples],
        token_budget=ablation.token_budget,
        seeds=list(ablation.seeds),
        steps=ablation.baseline.train.steps,
        eval_kinds=list(EVAL_KINDS),
        variants=summarize(ablation, per_run),
    )
    write_results(workdir / "results.json", results, seeds=list(ablation.seeds))
    from longctx_jax.viz.length_distribution import plot_length_distribution

    plot_length_distribution(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
