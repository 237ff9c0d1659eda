"""Metric writers: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events.

A run resumed from step N first drops every record after N (the steps it will redo), from
metrics.jsonl (rewritten) and from TensorBoard (`purge_step`), so each step appears once however
often the run was interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tensorboardX import SummaryWriter


class MetricWriter:
    """Appends to WORKDIR/metrics.jsonl and writes WORKDIR/tensorboard; only process 0 writes."""

    def __init__(self, workdir, *, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        truncate_after(path, start_step)
        self._jsonl = open(path, "a")  # noqa: SIM115
        self._tb = SummaryWriter(
            str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else str(value)
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def histogram(self, name: str, counts, step: int) -> None:
        """A TensorBoard histogram of integer-valued samples given as counts per value 0, 1, ..."""
        if not self.enabled:
            return
        counts = np.asarray(counts, np.float64)
        values = np.arange(len(counts), dtype=np.float64)
        total = counts.sum()
        if total == 0:
            return
        self._tb.add_histogram_raw(
            name,
            min=float(values[counts > 0].min()),
            max=float(values[counts > 0].max()),
            num=float(total),
            sum=float((counts * values).sum()),
            sum_squares=float((counts * values**2).sum()),
            bucket_limits=(values + 0.5).tolist(),
            bucket_counts=counts.tolist(),
            global_step=step,
        )
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def truncate_after(path: Path, step: int) -> None:
    """Keeps the records of steps <= `step` (and drops a torn last line)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("step", 0)) <= step:
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
