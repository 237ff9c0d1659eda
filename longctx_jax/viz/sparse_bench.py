"""Figure for `longctx bench sparse`: time per variant, split into indexer / selection /
attention, beside blockwise dense attention; one panel per (mode, length)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGES = (
    ("index_seconds", "indexer", "C0"),
    ("select_seconds", "selection", "C1"),
    ("attention_seconds", "sparse attention", "C2"),
)


def plot_sparse_bench(results, path) -> None:
    """Stacked horizontal bars (seconds); the dense bar is one colour."""
    rows = results["rows"]
    panels = sorted({(r["mode"], r["length"]) for r in rows}, key=lambda p: (p[1], p[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (mode, length) in zip(axes[0], panels, strict=True):
        panel = [r for r in rows if (r["mode"], r["length"]) == (mode, length)]
        names = [r["variant"] for r in panel]
        for y, r in enumerate(panel):
            if r["variant"] == "dense":
                ax.barh(y, r["seconds"], color="0.5", label="dense (blockwise)" if y == 0 else None)
                continue
            left = 0.0
            for key, label, color in STAGES:
                width = max(r[key], 0.0)
                ax.barh(y, width, left=left, color=color, label=label if y == 1 else None)
                left += width
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("seconds")
        ax.set_title(f"L={length} {mode}", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    setup = results["setup"]
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"top-k={setup['k']}, {setup['heads']} heads x {setup['head_dim']} (MQA), indexer "
        f"{setup['index_heads']} x {setup['index_dim']}, causal, {setup['dtype']} on "
        f"{setup['backend']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
