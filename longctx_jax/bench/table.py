"""Benchmark outputs: plain-text tables (one row per measurement, skipped rows say why) and the
results.json + figure.png pair every `longctx bench` command writes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from longctx_jax.provenance import write_results


def write_bench(results, workdir, plot: Callable) -> Path:
    """Writes results.json (with its provenance) and `plot(results, path)`'s figure.png under
    workdir; returns it."""
    workdir = Path(workdir)
    write_results(workdir / "results.json", results)
    plot(results, workdir / "figure.png")
    return workdir


def format_rows(rows, columns, *, key_columns: int) -> str:
    """`columns` = [(header, width, format(row) -> str)]; a row with "skipped" prints its first
    `key_columns` cells and the reason instead of measurements."""
    header = " ".join(f"{name:>{width}}" for name, width, _ in columns)
    lines = [header]
    for row in rows:
        cells = [f"{cell(row):>{width}}" for _, width, cell in columns[:key_columns]]
        if row.get("skipped"):
            lines.append(" ".join(cells) + f" {row['skipped']}")
            continue
        cells += [f"{cell(row):>{width}}" for _, width, cell in columns[key_columns:]]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def mib(row) -> str:
    return "-" if row.get("temp_bytes") is None else f"{row['temp_bytes'] / 2**20:.0f}"


def speedup(row) -> str:
    value = row.get("speedup_vs_baseline")
    return "-" if value is None else f"{value:.2f}x"
