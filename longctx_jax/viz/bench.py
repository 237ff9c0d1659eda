"""Figure for `longctx bench attention`: time and temporaries vs sequence length, log-log."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_attention_bench(results, path) -> None:
    """Two panels (time, memory); one line per (implementation, mode); skipped points omitted."""
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = sorted({(r["impl"], r["mode"]) for r in results["rows"]})
    impls = sorted({impl for impl, _ in series})
    for impl, mode in series:
        rows = [r for r in results["rows"] if (r["impl"], r["mode"]) == (impl, mode)]
        style = dict(
            marker="o",
            color=f"C{impls.index(impl)}",
            linestyle="-" if mode == "fwd" else "--",
            label=f"{impl} {mode}",
        )
        timed = [r for r in rows if r["seconds"] is not None]
        ax_time.plot([r["length"] for r in timed], [r["seconds"] for r in timed], **style)
        sized = [r for r in rows if r["temp_bytes"] is not None]
        ax_mem.plot([r["length"] for r in sized], [r["temp_bytes"] / 2**20 for r in sized], **style)
    setup = results["setup"]
    title = (
        f"B={setup['batch']} H={setup['heads']} D={setup['head_dim']} "
        f"{'causal' if setup['causal'] else 'full'} {setup['dtype']} on {setup['backend']}"
    )
    for ax, label in ((ax_time, "time (s)"), (ax_mem, "XLA temporaries (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_mem.set_title("memory (dense baseline: computed even where not run)", fontsize=9)
    ax_time.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
