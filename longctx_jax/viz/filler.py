"""The filler experiment's figure: per-query accuracy by needle depth for the general model and
each fine-tune (left), and each fine-tune's change from the general model, paired by seed
(right). Error bars: 95% CIs over seeds."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _bars(cis):
    means = np.array([c["mean"] for c in cis])
    low = np.array([c["mean"] if c["ci_low"] is None else c["ci_low"] for c in cis])
    high = np.array([c["mean"] if c["ci_high"] is None else c["ci_high"] for c in cis])
    return means, [means - low, high - means]


def plot_filler(results: dict, path) -> None:
    depths = results["depths"]
    fig, (accuracy_ax, change_ax) = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for i, (name, entry) in enumerate(results["variants"].items()):
        style = dict(color="black", linestyle="--") if name == "general" else {}
        offset = (i - len(results["variants"]) / 2) * 0.006  # keep error bars apart
        means, err = _bars(entry["accuracy"])
        accuracy_ax.errorbar(
            np.add(depths, offset), means, yerr=err, marker="o", capsize=2, label=name, **style
        )
        if "change" in entry:
            means, err = _bars(entry["change"])
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
