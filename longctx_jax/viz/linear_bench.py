"""Figure for `longctx bench linear`: time and compiled temporaries against sequence length,
blockwise attention beside the linear mixer (one line per chunk size), one column per mode."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_linear_bench(results, path) -> None:
    """Log-log lines: seconds (top row) and temporaries in MiB (bottom row) per length."""
    rows = results["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    names = list(dict.fromkeys((r["mixer"], r["chunk_size"]) for r in rows))
    fig, axes = plt.subplots(2, len(modes), figsize=(4.5 * len(modes), 6.0), squeeze=False)
    for col, mode in enumerate(modes):
        for i, (mixer, chunk) in enumerate(names):
            line = [
                r for r in rows if (r["mixer"], r["chunk_size"], r["mode"]) == (mixer, chunk, mode)
            ]
            label = mixer if chunk is None else f"linear C={chunk}"
            lengths = [r["length"] for r in line]
            style = dict(marker="o", color=f"C{i}", label=label)
            axes[0][col].plot(lengths, [r["seconds"] for r in line], **style)
            temps = [(r["length"], r["temp_bytes"] / 2**20) for r in line if r["temp_bytes"]]
            if temps:
                axes[1][col].plot(*zip(*temps, strict=True), **style)
        for row, ylabel in enumerate(("seconds", "temporaries (MiB)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0][col].set_title(mode, fontsize=10)
    axes[0][0].legend(fontsize=8, loc="upper left")
    setup = results["setup"]
    fig.suptitle(
        f"{setup['heads']} heads x {setup['head_dim']}, batch 1, causal, {setup['dtype']} on "
        f"{setup['backend']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
