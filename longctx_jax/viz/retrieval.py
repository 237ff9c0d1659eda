"""Retrieval figures: the NIAH accuracy grid, per-(layer, head) score grids, needle attention.

Each function draws on `ax` (a new figure's axes when None) and returns the axes, so notebooks
show them inline and experiment runners compose them into one figure and save it:

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    plot_niah_heatmap(details["accuracy"], details["lengths"], details["depths"], ax=left)
    plot_head_scores(attention_details["retrieval_score"], ax=right)

The inputs are what the `niah` and `needle_attention` evaluators return in their details
(`longctx_jax/eval/evaluators/`): nested lists or arrays. Nothing here picks a matplotlib
backend: the caller's (inline in a notebook, Agg in a runner) is used.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _check_grid(name, grid, rows, cols):
    if grid.ndim != 2 or grid.shape != (rows, cols):
        raise ValueError(f"{name}: shape {grid.shape}, expected ({rows}, {cols})")


def _annotate(ax, grid, fmt, vmin, vmax):
    middle = (vmin + vmax) / 2
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            color = "white" if value < middle else "black"
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8, color=color)


def plot_niah_heatmap(
    grid,
    lengths,
    depths,
    ax=None,
    title="NIAH accuracy",
    *,
    vmin=0.0,
    vmax=1.0,
    cmap="viridis",
    annotate=True,
    train_len=None,
):
    """Accuracy over (needle depth x context length): rows are depths (0 = start of the
    haystack, at the top), columns lengths, as in RULER's and the NIAH papers' figures.

    grid: [len(lengths)][len(depths)], the `niah` evaluator's details["accuracy"] layout.
    train_len: a length to mark as the training length (a dashed line after its column).
    """
    lengths, depths = list(lengths), list(depths)
    grid = np.asarray(grid, np.float64)
    _check_grid("grid", grid, len(lengths), len(depths))
    ax = _axes(ax, (1.2 + 0.8 * len(lengths), 1.0 + 0.45 * len(depths)))
    image = ax.imshow(grid.T, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    if annotate:
        _annotate(ax, grid.T, ".2f", vmin, vmax)
    if train_len is not None:
        inside = [i for i, n in enumerate(lengths) if n <= train_len]
        if inside and inside[-1] < len(lengths) - 1:
            ax.axvline(inside[-1] + 0.5, color="white", linestyle="--", linewidth=1.5)
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_head_scores(
    scores,
    ax=None,
    title="retrieval score per head",
    *,
    vmin=0.0,
    vmax=None,
    cmap="magma",
    annotate=True,
    fmt=".2f",
):
    """A [layers x heads] grid (retrieval score, needle mass, ...) as a heatmap, layer 0 at the
    top. vmax None: 1 if every score is in [0, 1], else the largest score."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores: shape {scores.shape}, expected [layers, heads]")
    layers, heads = scores.shape
    if vmax is None:
        top = float(np.nanmax(scores)) if scores.size else 1.0
        vmax = 1.0 if 0.0 <= np.nanmin(scores) and top <= 1.0 else top
    ax = _axes(ax, (1.5 + 0.7 * heads, 1.0 + 0.5 * layers))
    image = ax.imshow(scores, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if annotate:
        _annotate(ax, scores, fmt, vmin, vmax)
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_needle_attention(attention, span, ax=None, title="", *, start=0, color="C0"):
    """One head's attention onto the context: `attention` [keys] (e.g. the mean over the rows
    producing the answer), with the needle's [start, end) `span` shaded. `start` is the key
    position of attention[0] (to plot a window of a long row)."""
    attention = np.asarray(attention, np.float64)
    if attention.ndim != 1:
        raise ValueError(f"attention: shape {attention.shape}, expected [keys]")
    ax = _axes(ax, (6, 2))
    ax.axvspan(span[0] - 0.5, span[1] - 0.5, color="C3", alpha=0.25, linewidth=0)
    ax.plot(np.arange(start, start + len(attention)), attention, color=color, linewidth=0.8)
    ax.set_xlim(start - 0.5, start + len(attention) - 0.5)
    ax.set_ylim(0, None)
    ax.set_title(title, fontsize=9)
    return ax
