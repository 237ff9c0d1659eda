"""Where a result came from, and multi-seed summaries.

Every `results.json` carries a `provenance` block so a number can be traced to the code, software
and hardware that produced it:

    from longctx_jax.provenance import mean_ci, write_results

    results = {"loss": mean_ci([2.51, 2.48, 2.55])}   # per-seed values, mean and 95% interval
    write_results(workdir / "results.json", results, seeds=[0, 1, 2])
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

# The checkout this package was imported from (None when installed without one).
_REPO_ROOT = Path(__file__).resolve().parent.parent


def git_state(root: str | os.PathLike = _REPO_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout whose top level is `root`; (None, None) when `root` is
    not the top of a checkout (e.g. an installed copy of the package) or git is unavailable.
    `dirty` is True when tracked files differ from the commit."""
    root = Path(root).resolve()

    def git(*args) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # A package installed inside some other repository (a venv in a checkout) is not that commit.
    if top is None or Path(top).resolve() != root:
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:  # a repository without commits
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def provenance(seeds: Sequence[int] | None = None) -> dict:
    """Versions, backend, devices, git commit, command line, time and seeds of this process.

    Keys: jax_version, jaxlib_version, python_version, backend, device_kind, device_count,
    process_count, git_commit, git_dirty, command_line, timestamp_utc, seeds. Initialises the JAX
    backend if nothing has yet."""
    import jax

    devices = jax.devices()
    commit, dirty = git_state()
    return {
        "jax_version": jax.__version__,
        "jaxlib_version": _version("jaxlib"),
        "python_version": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command_line": list(sys.argv),
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seeds": None if seeds is None else [int(s) for s in seeds],
    }


def _to_json(value):
    """json.dumps fallback for NumPy / JAX scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_results(
    path: str | os.PathLike, results: dict, *, seeds: Sequence[int] | None = None
) -> dict:
    """Writes `results` plus a `provenance` block (see `provenance`) to the JSON file `path`
    (indent 2; parent folders created; replaced atomically). Returns the dict written; `results`
    itself is not modified."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    path = Path(path)
    written = {**results, "provenance": provenance(seeds)}
    text = json.dumps(written, indent=2, default=_to_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text + "\n")
    partial.replace(path)
    return written


def t_quantile(probability: float, df: int | float) -> float:
    """The `probability` quantile of Student's t distribution with `df` degrees of freedom."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    from scipy import stats

    return float(stats.t.ppf(probability, df))


def format_mean_ci(ci: dict, *, signed: bool = False) -> str:
    """A `mean_ci` dict as mean ± half its 95% interval ("0.812±0.034"); the mean if n = 1."""
    mean = f"{ci['mean']:+.3f}" if signed else f"{ci['mean']:.3f}"
    if ci["ci_low"] is None:
        return mean
    return f"{mean}±{(ci['ci_high'] - ci['ci_low']) / 2:.3f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of per-seed `values` with a two-sided Student-t confidence interval.

    Returns {"mean", "ci_low", "ci_high", "n", "values"}: mean ± t_{(1+confidence)/2, n-1} ·
    s / sqrt(n), with s the sample standard deviation (ddof=1). With one value the interval is
    unknown: ci_low and ci_high are None."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError("values must hold at least one number, got none")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"values must be finite, got {array.tolist()}")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        low = high = None
    else:
        half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(array.std(ddof=1)) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": n, "values": array.tolist()}
