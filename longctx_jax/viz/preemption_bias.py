"""The preemption-bias figure. Top row, one panel per hazard λ: the output-length distribution of
uninterrupted decoding, of regenerate-from-scratch with its closed form p(ℓ)(1 − λ)^(ℓ−1), and of
WAL resume (identical to uninterrupted, drawn dashed over it). Bottom: mean output length, tokens
decoded, and all tokens through the model (decoded + prefilled + replayed) per strategy and λ,
with 95% CIs over seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longctx_jax.viz.intervals import ci_errorbars  # noqa: E402

COLORS = {
    "uninterrupted": "black",
    "regenerate": "tab:red",
    "same_seed": "tab:blue",
    "wal": "tab:green",
    "wal_rebuild": "tab:olive",
}


def plot_preemption_bias(results: dict, path) -> None:
    hazards = list(results["hazards"])
    n = len(hazards)
    fig = plt.figure(figsize=(4.5 * max(n, 3), 8))
    grid = fig.add_gridspec(2, max(n, 3))
    for i, hazard in enumerate(hazards):
        ax = fig.add_subplot(grid[0, i])
        per_strategy = results["hazards"][hazard]
        lengths = np.arange(1, results["max_new_tokens"] + 1)
        for strategy, style in (
            ("uninterrupted", dict(linewidth=2)),
            ("regenerate", dict(linewidth=1.5)),
            ("wal", dict(linestyle="--", linewidth=1)),
        ):
            counts = np.asarray(per_strategy[strategy]["histogram"], np.float64)
            mean = per_strategy[strategy]["mean_length"]["mean"]
            ax.step(
                lengths,
                counts / counts.sum(),
                where="mid",
                color=COLORS[strategy],
                label=f"{strategy} (mean {mean:.1f})",
                **style,
            )
        regenerate = per_strategy["regenerate"]
        ax.plot(
            lengths,
            regenerate["predicted_histogram"],
            color="tab:red",
            linestyle=":",
            marker=".",
            markersize=3,
            label=f"closed form (mean {regenerate['predicted_mean_length']:.1f})",
        )
        # The length limit's bin (requests that never stopped) would flatten the rest: the
        # axis stops above the other bins and the limit's shares are written out instead.
        top = max(
            max(np.asarray(per_strategy[s]["histogram"][:-1]) / sum(per_strategy[s]["histogram"]))
            for s in ("uninterrupted", "regenerate")
        )
        ax.set_ylim(0, 1.35 * top)
        shares = [
            per_strategy[s]["histogram"][-1] / sum(per_strategy[s]["histogram"])
            for s in ("uninterrupted", "regenerate")
        ]
        ax.text(
            0.95, 0.55, f"at the limit ℓ = {lengths[-1]}:\nuninterrupted {shares[0]:.1%}\n"
            f"regenerate {shares[1]:.1%}", transform=ax.transAxes, ha="right", fontsize=7,
        )  # fmt: skip
        ax.set(
            xlabel="output length ℓ (tokens, stop included)",
            ylabel="fraction of requests",
            title=f"λ = {hazard} per decode step",
        )
        ax.legend(fontsize=7)
    x = np.arange(n)
    panels = (
        ("mean_length", "mean output length", "bias"),
        ("tokens_decoded", "tokens decoded (sampled)", "decoding cost"),
        ("tokens_processed", "tokens through the model", "decoded + prefilled + replayed"),
    )
    for k, (key, ylabel, title) in enumerate(panels):
        ax = fig.add_subplot(grid[1, k])
        for j, strategy in enumerate(COLORS):
            means, err = ci_errorbars([results["hazards"][h][strategy][key] for h in hazards])
            ax.errorbar(
                x + (j - 2) * 0.06, means, yerr=err, marker="o", capsize=2,
                color=COLORS[strategy], label=strategy,
            )  # fmt: skip
        ax.set_xticks(x, [f"λ = {h}" for h in hazards])
        ax.set(ylabel=ylabel, title=title)
        if k == 2:
            ax.legend(fontsize=8)
    fig.suptitle(
        f"{results['requests']} requests, completions to the end of the line "
        f"(≤ {results['max_new_tokens']} tokens), temperature {results['temperature']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
