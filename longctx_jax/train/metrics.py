"""Metric writers: `metrics.jsonl` (one JSON object per logged step) and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricWriter:
    """Appends to WORKDIR/metrics.jsonl and writes WORKDIR/tensorboard; only process 0 writes."""

    def __init__(self, workdir, *, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

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

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
