"""Error bars from `provenance.mean_ci` dicts."""

from __future__ import annotations

import numpy as np


def ci_errorbars(cis):
    """(means, [below, above]) for matplotlib's `errorbar(yerr=...)`; no bar where n = 1."""
    means = np.array([c["mean"] for c in cis])
    low = np.array([c["mean"] if c["ci_low"] is None else c["ci_low"] for c in cis])
    high = np.array([c["mean"] if c["ci_high"] is None else c["ci_high"] for c in cis])
    return means, [means - low, high - means]
