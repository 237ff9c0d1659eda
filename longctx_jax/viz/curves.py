"""Perplexity vs evaluation length, one curve per variant (from an experiment's results.json)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_perplexity_vs_length(results, path) -> None:
    """Log-log perplexity vs evaluation length with the training length marked."""
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    for i, (curve, rows) in enumerate(results["curves"].items()):
        style = "--" if "(eval)" in curve else "-"
        ax.plot(
            results["lengths"],
            [r["perplexity"] for r in rows],
            style,
            marker="o",
            color=f"C{i}",
            label=curve,
        )
    ax.axvline(results["train_len"], color="gray", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens = bytes)")
    ax.set_ylabel("perplexity per byte (sliding window)")
    ax.set_title(results.get("ablation", ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
