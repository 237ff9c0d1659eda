"""The filler experiment's figure: per-query accuracy by needle depth for the general model and
each fine-tune (left), and each fine-tune's change from the general model, paired by seed
(right). Error bars: 95% CIs over seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from longctx_jax.viz.intervals import ci_errorbars  # noqa: E402


def plot_filler(results: dict, path) -> None:
    depths = results["depths"]
    fig, (accuracy_ax, change_ax) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for i, (name, entry) in enumerate(results["variants"].items()):
        style = dict(color="black", linestyle="--") if name == "general" else {}
        offset = (i - len(results["variants"]) / 2) * 0.006  # keep error bars apart
        means, err = ci_errorbars(entry["accuracy"])
        accuracy_ax.errorbar(
            np.add(depths, offset), means, yerr=err, marker="o", capsize=2, label=name, **style
        )
        if "change" in entry:
            means, err = ci_errorbars(entry["change"])
            change_ax.errorbar(
                np.add(depths, offset), means, yerr=err, marker="o", capsize=2, label=name
            )
    accuracy_ax.axhline(results["chance"], color="gray", linestyle=":", label="chance")
    accuracy_ax.set(
        xlabel="depth of the pairs in the filler (0 = start of context)",
        ylabel="per-query accuracy (task A)",
        title=f"MQAR with filler, {results['seq_len']} tokens, {results['num_pairs']} pairs",
    )
    accuracy_ax.legend(fontsize=8)
    change_ax.axhline(0.0, color="gray", linewidth=0.8)
    change_ax.set(
        xlabel="depth of the pairs in the filler (0 = start of context)",
        ylabel="accuracy change from the general model",
        title="after fine-tuning, paired by seed",
    )
    change_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
