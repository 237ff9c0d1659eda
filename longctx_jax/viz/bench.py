"""Figures for `longctx bench attention` and `longctx bench ring`: time and memory, log-log."""

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


def plot_ring_bench(results, path) -> None:
    """Three panels: per-device temporaries vs devices (one line per length and strategy, the
    single-device blockwise baseline as a star), forward+backward time vs devices per ring
    layout at the longest length, and the longest trainable sequence per sequence-axis size."""
    rows, train = results["rows"], results.get("train") or []
    fig, axes = plt.subplots(1, 3 if train else 2, figsize=(15 if train else 10, 4.2))
    ax_mem, ax_time = axes[:2]
    lengths = sorted({r["length"] for r in rows})
    for i, length in enumerate(lengths):
        single = next(r for r in rows if r["length"] == length and r["strategy"] == "single")
        ax_mem.plot([1], [single["temp_bytes"] / 2**20], marker="*", markersize=12,
                    color=f"C{i}", linestyle="none")  # fmt: skip
        for strategy, style in (("ring", "-"), ("all_gather", "--")):
            # Memory does not depend on the layout: one row per n.
            by_n = {r["n"]: r for r in rows if (r["length"], r["strategy"]) == (length, strategy)}
            ns = sorted(by_n)
            ax_mem.plot(ns, [by_n[n]["temp_bytes"] / 2**20 for n in ns], marker="o",
                        color=f"C{i}", linestyle=style, label=f"L={length} {strategy}")  # fmt: skip
    ax_mem.set_title("per-device temporaries, fwd+bwd (star: one device, blockwise)", fontsize=9)
    ax_mem.set_ylabel("XLA temporaries (MiB)")

    longest = max(r["length"] for r in rows if r["seconds"] is not None)
    for j, layout in enumerate(sorted({r["layout"] for r in rows} - {"-"})):
        for strategy, style in (("ring", "-"), ("all_gather", "--")):
            sel = [r for r in rows if (r["length"], r["strategy"], r["layout"]) ==
                   (longest, strategy, layout)]  # fmt: skip
            ax_time.plot([r["n"] for r in sel], [r["seconds"] for r in sel], marker="o",
                         color=f"C{j}", linestyle=style, label=f"{strategy} {layout}")  # fmt: skip
    single = next(r for r in rows if r["length"] == longest and r["strategy"] == "single")
    ax_time.axhline(single["seconds"], color="k", linestyle=":", label="one device, blockwise")
    ax_time.set_title(f"fwd+bwd time at L={longest} ({results['setup']['backend']}, "
                      "devices simulated on shared cores)", fontsize=9)  # fmt: skip
    ax_time.set_ylabel("time (s)")
    for ax in (ax_mem, ax_time):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("devices on the sequence axis (n)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)

    if train:
        _plot_longest(axes[2], train, results["setup"]["memory_budget_bytes"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_longest(ax_train, train, budget_bytes) -> None:
    names = [f"sequence={t['sequence']}" for t in train]
    ax_train.bar(names, [t["longest"] for t in train], color=["C0", "C1"][: len(train)])
    for x, t in enumerate(train):
        ax_train.annotate(f"{t['longest']:,}", (x, t["longest"]), ha="center", va="bottom")
    budget = budget_bytes / 2**30
    ax_train.set_title(f"longest trainable sequence, quickstart model\n(compiled peak <= "
                       f"{budget:.1f} GiB per device)", fontsize=9)  # fmt: skip
    ax_train.set_ylabel("tokens")
