"""The retrieval ablation's figure: MQAR accuracy by #pairs and by length (mean and 95% CI over
seeds, per variant), and the NIAH depth x length grids with and without eval-time YaRN."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longctx_jax.viz.retrieval import plot_niah_heatmap  # noqa: E402

STYLES = {
    "dense": dict(color="black", marker="o"),
    "dense_ft": dict(color="0.55", marker="o", linestyle=":"),
    "dsa": dict(color="C0", marker="s"),
    "oracle": dict(color="C2", marker="^", linestyle="--"),
    "window": dict(color="C3", marker="v"),
    "linear": dict(color="C1", marker="D"),
}


def _errorbars(ax, x, means, intervals, offset, label, style):
    """Means with asymmetric 95% CI bars; x offset so that equal curves stay visible."""
    means = np.asarray(means, np.float64)
    low = np.array([m if lo is None else lo for m, (lo, _) in zip(means, intervals, strict=True)])
    high = np.array([m if hi is None else hi for m, (_, hi) in zip(means, intervals, strict=True)])
    ax.errorbar(
        np.asarray(x, np.float64) * offset,
        means,
        yerr=[means - low, high - means],
        capsize=3,
        label=label,
        **style,
    )


def _plot_width(ax, by_width, widths) -> None:
    """Accuracy at the largest #pairs vs model width, dense and linear (state bytes marked)."""
    hardest = max(r["num_pairs"] for r in by_width)
    for shift, name in zip((-0.03, 0.03), ("dense", "linear"), strict=True):
        rows = sorted(
            (r for r in by_width if r["variant"] == name and r["num_pairs"] == hardest),
            key=lambda r: r["width"],
        )
        _errorbars(
            ax,
            [r["width"] for r in rows],
            [r["accuracy_mean"] for r in rows],
            [r["accuracy_ci95"] for r in rows],
            2**shift,
            name,
            STYLES[name],
        )
        for r in rows:
            if r["state_bytes"]:
                ax.annotate(
                    f"{r['state_bytes'] // 1024} KiB",
                    (r["width"], r["accuracy_mean"]),
                    textcoords="offset points",
                    xytext=(6, -12),
                    fontsize=8,
                    color=STYLES[name]["color"],
                )
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("model width (linear: state per layer)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MQAR at {hardest} pairs by width", fontsize=10)
    ax.grid(alpha=0.3)


def plot_retrieval_ablation(results, path) -> None:
    mqar, niah = results["mqar"], results["niah"]
    evals = list(niah["evals"].items()) if niah else []
    by_width = results.get("by_width", [])
    widths = sorted({r["width"] for r in by_width})
    panels = 2 + (len(widths) > 1) + len(evals)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * 2 + 4.6 * (panels - 2), 4.6))
    variants = list(dict.fromkeys(row["variant"] for row in mqar["rows"]))
    spread = np.linspace(-0.06, 0.06, len(variants))  # log-x offsets: no curve hides another

    ax = axes[0]
    for shift, name in zip(spread, variants, strict=True):
        rows = [r for r in mqar["rows"] if r["variant"] == name]
        _errorbars(
            ax,
            [r["num_pairs"] for r in rows],
            [r["accuracy_mean"] for r in rows],
            [r["accuracy_ci95"] for r in rows],
            2**shift,
            name,
            STYLES.get(name, {}),
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(mqar["num_pairs"], [str(p) for p in mqar["num_pairs"]])
    ax.set_xlabel("key-value pairs")
    ax.set_ylabel("MQAR accuracy (per query)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MQAR at length {mqar['train_len']} (k = {results['top_k']})", fontsize=10)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for shift, row in zip(spread, mqar["by_length"], strict=True):
        _errorbars(
            ax,
            row["lengths"],
            row["accuracy_mean"],
            row["accuracy_ci95"],
            2**shift,
            row["variant"],
            STYLES.get(row["variant"], {}),
        )
    lengths = mqar["by_length"][0]["lengths"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.axvline(mqar["train_len"], color="0.7", linestyle="--", linewidth=1)
    ax.set_xlabel("example length (tokens)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MQAR at {mqar['by_length'][0]['num_pairs']} pairs by length", fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)

    if len(widths) > 1:
        _plot_width(axes[2], by_width, widths)
    for ax, (_, result) in zip(axes[panels - len(evals) :], evals, strict=True):
        title = "NIAH, dense" + (
            f" + eval-time {result['rope_kind']}" if result["rope_kind"] != "default" else ""
        )
        plot_niah_heatmap(
            result["accuracy_mean"],
            result["lengths"],
            result["depths"],
            ax=ax,
            title=f"{title} (trained at {niah['train_len']})",
            train_len=niah["train_len"],
        )
    seeds = results["seeds"]
    fig.suptitle(f"Retrieval under noise: mean and 95% CI over seeds {seeds}", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
