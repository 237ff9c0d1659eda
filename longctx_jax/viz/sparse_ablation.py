"""The sparse attention ablation's figure: loss by position, and attention-mass recall vs k."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_sparse_ablation(results, path) -> None:
    """Left: NLL by position bucket after the sparse stage; right: recall vs k (log2 k)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (row, r) in enumerate(results["loss"].items()):
        edges = r["by_position"]["edges"]
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        style = "-" if row.startswith("after") else ":"
        left.plot(centers, r["by_position"]["nll"], style, marker="o", color=f"C{i % 4}", label=row)
    left.axvline(results["top_k"], color="gray", linestyle="--", label=f"k = {results['top_k']}")
    left.set_xlabel("position in the window (bytes)")
    left.set_ylabel("NLL (nats / byte)")
    left.set_title(f"{results['ablation']}: loss by position", fontsize=10)
    left.legend(fontsize=7)
    left.grid(True, alpha=0.3)

    recall = results["recall"]
    for name, values in recall["curves"].items():
        right.plot(recall["ks"], values, marker="o", label=name)
    right.axvline(results["top_k"], color="gray", linestyle="--")
    right.set_xscale("log", base=2)
    right.set_ylim(0, 1.02)
    right.set_xlabel("key budget k")
    right.set_ylabel("share of dense attention mass kept")
    right.set_title("attention-mass recall vs k", fontsize=10)
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
