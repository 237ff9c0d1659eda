"""The KV-memory ablation's figure: MQAR accuracy against cache bytes per sequence (log x).

One curve per eviction policy (MHA, float cache, over capacities), one marker per quantisation
(MHA, every slot), the full float caches of MHA / GQA / MQA, and the linear mixer's state; error
bars are 95% confidence intervals over seeds.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from longctx_jax.inference.spec import POLICIES  # noqa: E402


def _errors(rows):
    low = [r["accuracy_mean"] - (r["accuracy_ci95"][0] or r["accuracy_mean"]) for r in rows]
    high = [(r["accuracy_ci95"][1] or r["accuracy_mean"]) - r["accuracy_mean"] for r in rows]
    return [low, high]


def plot_kv_memory(results: dict, path) -> None:
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(10, 5))
    labels = {r["label"] for r in rows if r["model"] == "mha"}
    policies = [policy for policy in POLICIES if policy in labels]
    full = [r for r in rows if r["model"] == "mha" and r["label"] == "full"]
    for policy in policies:
        if policy == "full":
            continue
        curve = sorted(
            [r for r in rows if r["model"] == "mha" and r["label"] == policy] + full,
            key=lambda r: r["payload_bytes"],
        )
        ax.errorbar(
            [r["payload_bytes"] for r in curve],
            [r["accuracy_mean"] for r in curve],
            yerr=_errors(curve),
            marker="o",
            ms=4,
            capsize=2,
            label=f"MHA, {policy}",
        )
    markers = dict(bf16="P", int8="s", int4="v", int4_kivi="^", int2="<", int2_kivi=">")
    for i, (label, marker) in enumerate(markers.items()):
        points = [r for r in rows if r["label"] == label]
        for r in points:
            ax.errorbar(
                [r["payload_bytes"]],
                [r["accuracy_mean"]],
                yerr=_errors([r]),
                marker=marker,
                ms=8,
                capsize=2,
                linestyle="none",
                color=plt.cm.Dark2(i),
                label=f"{r['model'].upper()}, {label}",
            )
    for model in ("gqa", "mqa"):
        for r in (r for r in rows if r["model"] == model and r["label"] == "full"):
            ax.errorbar(
                [r["payload_bytes"]],
                [r["accuracy_mean"]],
                yerr=_errors([r]),
                marker="D",
                ms=8,
                color="dimgray" if model == "gqa" else "black",
                capsize=2,
                linestyle="none",
                label=f"{model.upper()}, full cache",
            )
    for r in (r for r in rows if r["model"] == "linear"):
        ax.errorbar(
            [r["payload_bytes"]],
            [r["accuracy_mean"]],
            yerr=_errors([r]),
            marker="*",
            ms=12,
            capsize=2,
            linestyle="none",
            color="black",
            label="linear mixer, state",
        )
    ax.set_xscale("log")
    ax.set_xlabel("cache bytes per sequence (all layers; payload)")
    ax.set_ylabel(f"MQAR per-query accuracy ({results['eval_pairs']} pairs)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{results['ablation']}: accuracy vs KV-cache bytes (T = {results['seq_len']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
