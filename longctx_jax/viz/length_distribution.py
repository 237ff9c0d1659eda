"""The length-distribution ablation's figure.

Left column, one shared x-axis (distance in tokens): span-recall token accuracy by distance per
variant at the training length (solid: as trained, dashed: eval-time STRING; dotted gray: the
guessing control), and beneath it the
share of trained (query, key) pairs at each distance, as the trainer counted them. Right column:
perplexity vs evaluation length (solid: as trained, dashed: eval-time STRING, dotted: eval-time
YaRN) and validation loss by position at the training length. Error bars: 95% CIs over seeds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longctx_jax.viz.intervals import ci_errorbars  # noqa: E402

STYLES = dict(default="-", string="--", yarn=":")


def plot_length_distribution(results: dict, path) -> None:
    train_len = results["train_len"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    (recall_ax, ppl_ax), (pairs_ax, position_ax) = axes
    pairs_ax.sharex(recall_ax)  # distance on one axis: recall above, trained pairs beneath
    controls = []
    for i, (name, v) in enumerate(results["variants"].items()):
        color = plt.cm.tab10(i % 10)
        cells = [c for c in v["recall"]["default"]["cells"] if c["length"] == train_len]
        means, err = ci_errorbars([c["token_accuracy"] for c in cells])
        distances = [c["distance"] for c in cells]
        recall_ax.errorbar(
            distances, means, yerr=err, marker="o", capsize=2, color=color, label=name
        )
        controls.append(v["recall"]["default"]["control_token_accuracy"]["mean"])
        pairs = np.asarray(v["pairs"], float)
        share = pairs / pairs.sum()
        pairs_ax.plot(np.arange(len(share)), share, color=color, label=name)
        for kind, style in STYLES.items():
            means, err = ci_errorbars(v["perplexity"][kind])
            ppl_ax.errorbar(
                results["lengths"],
                means,
                yerr=err,
                linestyle=style,
                marker="o",
                ms=3,
                capsize=2,
                color=color,
                label=name if kind == "default" else None,
            )
        edges = v["loss_by_position"]["edges"]
        means, err = ci_errorbars(v["loss_by_position"]["nll"])
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        position_ax.errorbar(centers, means, yerr=err, marker="o", capsize=2, color=color)
    recall_ax.axhline(np.mean(controls), color="gray", linestyle=":", label="control (guessing)")
    recall_ax.set(
        ylabel="span-recall token accuracy",
        title=f"recall by distance at the training length {train_len} (-- STRING)",
    )
    recall_ax.legend(fontsize=7)
    pairs_ax.set(
        xlabel="distance q_pos - kv_pos (tokens)",
        ylabel="share of trained pairs",
        yscale="log",
        title="trained pair distances (data_stats.json)",
    )
    ppl_ax.set(
        xscale="log",
        yscale="log",
        ylabel="perplexity (bytes)",
        title="perplexity vs eval length (— trained, -- STRING, ··· YaRN)",
    )
    ppl_ax.axvline(train_len, color="gray", linewidth=0.5)
    ppl_ax.legend(fontsize=7)
    position_ax.set(
        xlabel="position (tokens)",
        ylabel="validation NLL (nats/byte)",
        title=f"loss by position at {train_len}",
    )
    ppl_ax.set_xlabel("evaluation length (tokens)")
    fig.suptitle(
        f"{results['ablation']}: {results['token_budget']:,} training tokens per run, "
        f"{len(results['seeds'])} seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
