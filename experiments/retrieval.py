"""Retrieval under noise: MQAR accuracy by #pairs and by length per variant, over seeds, and a
NIAH depth x length grid for a dense model trained on NIAH, with and without eval-time YaRN.

Trains every variant at every seed (`train_variants(..., seeds=ablation.seeds)`), then measures
  mqar        per-query accuracy (the `mqar` evaluator) for each #pairs in the evaluator's
              `num_pairs`, at the training length: per seed, mean and 95% CI over seeds;
  length      accuracy at `length_multiples` x the training length for the middle #pairs, and
              the effective length (the longest length whose accuracy, and every shorter one's,
              is >= EFFECTIVE_THRESHOLD). Variants that select every key at the training length
              (dense, dense_ft) select every key at every length (top_k follows the length);
  width       accuracy by #pairs for dense and linear at every width (`<name>_w<width>`
              variants), with the linear state's bytes;
  niah        (sizes that have the niah variant) the `niah` evaluator's accuracy grid
              [lengths][depths], plain and with eval-time YaRN, averaged over seeds, and its
              effective length per seed.
Writes results.json (rows: variant, num_pairs, accuracy_per_seed, accuracy_mean, accuracy_ci95),
a table and figure.png.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from longctx_jax.ablation import train_variants
from longctx_jax.eval import registry
from longctx_jax.eval.evaluators.niah import effective_length
from longctx_jax.model.linear_mixer import state_bytes_per_layer
from longctx_jax.provenance import mean_ci, write_results
from longctx_jax.run import load_model

MQAR_VARIANTS = ("dense", "dense_ft", "dsa", "window", "oracle", "linear")  # those present


def mqar_variants(ablation) -> list[str]:
    return [name for name in MQAR_VARIANTS if name in ablation.variants]


EFFECTIVE_THRESHOLD = 0.5


def ci(values) -> dict:
    """mean and the 95% interval [low, high] of per-seed values (None bounds with one seed)."""
    stats = mean_ci(values)
    return dict(mean=stats["mean"], ci95=[stats["ci_low"], stats["ci_high"]])


def model_at_length(model_config, train_len: int, length: int):
    """The model config for inputs of `length`: a sparse_topk model selecting every key at the
    training length keeps selecting every key (exactly dense attention) at any length."""
    attention = model_config.attention
    if attention.kind != "sparse_topk" or attention.sparse.top_k < train_len:
        return model_config
    if isinstance(model_config, ml_collections.FrozenConfigDict):
        config = model_config.as_configdict()
    else:
        config = model_config.copy_and_resolve_references()
    config.attention.sparse.top_k = length
    return config


def pair_rows(by_pairs: dict, **fields) -> list[dict]:
    """One results row per #pairs: `fields`, num_pairs, per-seed accuracies, mean and 95% CI."""
    rows = []
    for p, values in by_pairs.items():
        stats = ci(values)
        rows.append(
            dict(
                **fields,
                num_pairs=p,
                accuracy_per_seed=values,
                accuracy_mean=stats["mean"],
                accuracy_ci95=stats["ci95"],
            )
        )
    return rows


def evaluate_mqar(ablation, trained: dict) -> dict:
    """Accuracy by #pairs at the training length and by length at the middle #pairs."""
    seeds = list(ablation.seeds)
    train_len = ablation.baseline.data.seq_len
    pairs = list(ablation.mqar_eval.num_pairs)
    middle = pairs[len(pairs) // 2]
    lengths = [m * train_len for m in ablation.length_multiples]
    mqar = registry.get("mqar").run
    rows, by_length = [], []
    for name in mqar_variants(ablation):
        by_pairs = {p: [] for p in pairs}
        at_length = {n: [] for n in lengths}
        for seed in seeds:
            config, run_dir = trained[(name, seed)]
            print(f"== evaluating {name} (seed {seed})")
            model_config, params = load_model(run_dir)
            scalars, _ = mqar(ablation.mqar_eval, model_config, params, config.data, progress=False)
            for p in pairs:
                by_pairs[p].append(scalars[f"accuracy@{p}"])
            for n in lengths:
                cfg = ablation.mqar_eval.copy_and_resolve_references()
                cfg.length, cfg.num_pairs = n, (middle,)
                model = model_at_length(model_config, train_len, n)
                scalars, _ = mqar(cfg, model, params, config.data, progress=False)
                at_length[n].append(scalars[f"accuracy@{middle}"])
        rows += pair_rows(by_pairs, variant=name)
        effective = [
            effective_length(lengths, [at_length[n][i] for n in lengths], EFFECTIVE_THRESHOLD)
            for i in range(len(seeds))
        ]
        per_length = [ci(at_length[n]) for n in lengths]
        effective_stats = ci(effective)
        by_length.append(
            dict(
                variant=name,
                num_pairs=middle,
                lengths=lengths,
                accuracy_per_seed=[at_length[n] for n in lengths],
                accuracy_mean=[stats["mean"] for stats in per_length],
                accuracy_ci95=[stats["ci95"] for stats in per_length],
                effective_length_per_seed=effective,
                effective_length_mean=effective_stats["mean"],
                effective_length_ci95=effective_stats["ci95"],
            )
        )
    return dict(train_len=train_len, num_pairs=pairs, rows=rows, by_length=by_length)


def evaluate_width(ablation, trained: dict, mqar_rows: list[dict]) -> list[dict]:
    """MQAR accuracy by #pairs for dense and linear at every width (the `<name>_w<width>`
    variants; the main ones' rows from `mqar_rows`), with the linear state's bytes per layer."""
    base = ablation.baseline.model.embed_dim
    widths = sorted({base} | {int(n.rsplit("_w", 1)[1]) for n in ablation.variants if "_w" in n})
    pairs = list(ablation.mqar_eval.num_pairs)
    rows = []
    for family in ("dense", "linear"):
        for width in widths:
            name = family if width == base else f"{family}_w{width}"
            config = trained[(name, ablation.seeds[0])][0]
            state = state_bytes_per_layer(config.model) if family == "linear" else None
            if width == base:
                rows += [
                    dict(r, width=width, state_bytes=state)
                    for r in mqar_rows
                    if r["variant"] == family
                ]
                continue
            by_pairs = {p: [] for p in pairs}
            for seed in ablation.seeds:
                config, run_dir = trained[(name, seed)]
                print(f"== evaluating {name} (seed {seed})")
                model_config, params = load_model(run_dir)
                scalars, _ = registry.get("mqar").run(
                    ablation.mqar_eval, model_config, params, config.data, progress=False
                )
                for p in pairs:
                    by_pairs[p].append(scalars[f"accuracy@{p}"])
            rows += pair_rows(by_pairs, variant=family, width=width, state_bytes=state)
    return rows


def evaluate_niah(ablation, trained: dict) -> dict:
    """The niah variant's accuracy grids (mean over seeds) and effective lengths, per eval."""
    seeds = list(ablation.seeds)
    out = {}
    for eval_name, cfg in ablation.niah_evals.items():
        grids, effective = [], []
        for seed in seeds:
            config, run_dir = trained[("niah", seed)]
            print(f"== evaluating niah/{eval_name} (seed {seed})")
            model_config, params = load_model(run_dir)
            scalars, details = registry.get("niah").run(
                cfg, model_config, params, config.data, progress=False
            )
            grids.append(np.asarray(details["accuracy"], np.float64))
            effective.append(scalars["effective_length"])
        stats = ci(effective)
        out[eval_name] = dict(
            rope_kind=cfg.rope_kind,
            lengths=list(cfg.lengths),
            depths=list(cfg.depths),
            accuracy_mean=np.mean(grids, axis=0).tolist(),
            accuracy_per_seed=[g.tolist() for g in grids],
            effective_length_per_seed=effective,
            effective_length_mean=stats["mean"],
            effective_length_ci95=stats["ci95"],
        )
    return dict(train_len=trained[("niah", seeds[0])][0].data.seq_len, evals=out)


def state_bytes(ablation, trained: dict) -> dict:
    """Bytes a layer keeps about the past at the training length: the linear mixer's fixed state
    vs a float32 KV cache (2 x length x kv_heads x head_dim x 4 bytes)."""
    model = ablation.baseline.model
    linear_config = trained[("linear", ablation.seeds[0])][0].model
    kv = 2 * ablation.baseline.data.seq_len * model.num_kv_heads * model.head_dim * 4
    return dict(linear_state=state_bytes_per_layer(linear_config), kv_cache_at_train_len=kv)


def _fmt_ci(mean, interval) -> str:
    low, high = interval
    if low is None:
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def format_table(results) -> str:
    mqar = results["mqar"]
    pairs = mqar["num_pairs"]
    lines = [
        f"MQAR accuracy (mean [95% CI] over seeds {results['seeds']}) at length "
        f"{mqar['train_len']}",
        f"{'variant':<10}" + "".join(f"{f'{p} pairs':>24}" for p in pairs),
    ]
    for name in dict.fromkeys(r["variant"] for r in mqar["rows"]):
        cells = {r["num_pairs"]: r for r in mqar["rows"] if r["variant"] == name}
        line = f"{name:<10}"
        for p in pairs:
            line += f"{_fmt_ci(cells[p]['accuracy_mean'], cells[p]['accuracy_ci95']):>24}"
        lines.append(line)
    first = mqar["by_length"][0]
    lines.append("")
    lines.append(
        f"MQAR accuracy at {first['num_pairs']} pairs by length; effective length "
        f"(accuracy >= {EFFECTIVE_THRESHOLD})"
    )
    lines.append(f"{'variant':<10}" + "".join(f"{n:>10}" for n in first["lengths"]) + "  effective")
    for row in mqar["by_length"]:
        line = f"{row['variant']:<10}" + "".join(f"{a:>10.3f}" for a in row["accuracy_mean"])
        line += f"  {_fmt_ci(row['effective_length_mean'], row['effective_length_ci95'])}"
        lines.append(line)
    lines.append("")
    niah = results["niah"] or dict(evals={})
    for name, result in niah["evals"].items():
        lines.append(
            f"NIAH ({name}, trained at {niah['train_len']}): accuracy by length "
            f"{result['lengths']} = "
            + ", ".join(f"{np.mean(row):.3f}" for row in result["accuracy_mean"])
            + "; effective length "
            + _fmt_ci(result["effective_length_mean"], result["effective_length_ci95"])
        )
    widths = sorted({r["width"] for r in results["by_width"]})
    if len(widths) > 1:
        lines.append(f"MQAR accuracy by width (mean over seeds) at {pairs} pairs")
        for row_name in ("dense", "linear"):
            for width in widths:
                cells = [
                    r
                    for r in results["by_width"]
                    if r["variant"] == row_name and r["width"] == width
                ]
                line = f"{row_name} w{width:<5}" + "".join(
                    f"{_fmt_ci(r['accuracy_mean'], r['accuracy_ci95']):>24}" for r in cells
                )
                lines.append(line)
    sb = results["state_bytes"]
    lines.append(
        f"per layer: linear state {sb['linear_state']} bytes; float32 KV cache at the training "
        f"length {sb['kv_cache_at_train_len']} bytes"
    )
    return "\n".join(lines)


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir, seeds=ablation.seeds)
    results = dict(
        ablation=ablation.name,
        seeds=list(ablation.seeds),
        top_k=ablation.top_k,
        mqar=evaluate_mqar(ablation, trained),
        niah=evaluate_niah(ablation, trained) if "niah" in ablation.variants else None,
        state_bytes=state_bytes(ablation, trained),
    )
    results["by_width"] = evaluate_width(ablation, trained, results["mqar"]["rows"])
    results["rows"] = results["mqar"]["rows"]
    write_results(workdir / "results.json", results, seeds=list(ablation.seeds))
    from longctx_jax.viz.retrieval_ablation import plot_retrieval_ablation

    plot_retrieval_ablation(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
