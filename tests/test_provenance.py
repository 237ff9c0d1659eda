"""Provenance blocks, results.json writing, and the multi-seed mean with a Student-t interval."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from longctx_jax import provenance as prov

# Two-sided 95% critical values t_{0.975, df} from printed tables (3 decimals).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 29: 2.045}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_matches_tables(df):
    assert prov.t_quantile(0.975, df) == pytest.approx(T_975[df], abs=5e-4)


def test_t_quantile_is_symmetric_and_tends_to_normal():
    assert prov.t_quantile(0.025, 4) == pytest.approx(-prov.t_quantile(0.975, 4))
    assert prov.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    assert prov.t_quantile(0.975, 10**6) == pytest.approx(1.95996, abs=1e-4)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_mean_ci_against_formula(n):
    values = np.random.default_rng(n).normal(3.0, 0.5, size=n)
    summary = prov.mean_ci(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 1] * s / math.sqrt(n) if n - 1 in T_975 else None
    assert summary["n"] == n
    assert summary["values"] == pytest.approx(list(values))
    assert summary["mean"] == pytest.approx(mean)
    assert summary["ci_low"] < summary["mean"] < summary["ci_high"]
    assert summary["mean"] - summary["ci_low"] == pytest.approx(summary["ci_high"] - mean)
    if half is not None:
        assert summary["ci_high"] - mean == pytest.approx(half, rel=2e-4)


def test_mean_ci_three_seeds_worked_example():
    summary = prov.mean_ci([1.0, 2.0, 3.0])  # mean 2, s = 1, n = 3
    assert summary["mean"] == 2.0
    assert summary["ci_low"] == pytest.approx(2.0 - 4.303 / math.sqrt(3), abs=1e-3)
    assert summary["ci_high"] == pytest.approx(2.0 + 4.303 / math.sqrt(3), abs=1e-3)


def test_mean_ci_other_confidence_is_narrower():
    values = [0.1, 0.4, 0.35, 0.2]
    wide, narrow = prov.mean_ci(values), prov.mean_ci(values, confidence=0.8)
    assert narrow["ci_low"] > wide["ci_low"] and narrow["ci_high"] < wide["ci_high"]


def test_mean_ci_single_value_has_no_interval():
    assert prov.mean_ci([2.5]) == {
        "mean": 2.5,
        "ci_low": None,
        "ci_high": None,
        "n": 1,
        "values": [2.5],
    }


@pytest.mark.parametrize(
    "values, confidence",
    [([], 0.95), ([1.0, float("nan")], 0.95), ([1.0, 2.0], 1.0), ([1.0, 2.0], 0.0)],
)
def test_mean_ci_rejects_bad_input(values, confidence):
    with pytest.raises(ValueError):
        prov.mean_ci(values, confidence=confidence)


def test_provenance_fields():
    block = prov.provenance(seeds=(0, 1, np.int64(2)))
    assert block["jax_version"] == jax.__version__
    assert block["backend"] == jax.default_backend()
    assert block["device_kind"] == jax.devices()[0].device_kind
    assert block["device_count"] == jax.device_count()
    assert block["command_line"] == sys.argv
    assert block["python_version"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert block["seeds"] == [0, 1, 2]
    assert block["timestamp_utc"].endswith("+00:00")
    assert prov.provenance()["seeds"] is None
    json.dumps(block)
    root = Path(prov.__file__).resolve().parent.parent
    if (root / ".git").exists() and shutil.which("git"):
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        assert block["git_commit"] == head.stdout.strip()
        assert isinstance(block["git_dirty"], bool)


def test_write_results_adds_provenance(tmp_path):
    results = {"loss": np.float32(2.5), "curve": np.arange(3), "nested": {"n": np.int64(4)}}
    path = tmp_path / "run" / "results.json"
    written = prov.write_results(path, results, seeds=[3])
    assert "provenance" not in results
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(written, default=prov._to_json))
    assert loaded["loss"] == 2.5 and loaded["curve"] == [0, 1, 2] and loaded["nested"]["n"] == 4
    assert loaded["provenance"]["seeds"] == [3]
    assert loaded["provenance"]["jax_version"] == jax.__version__
    assert path.read_text().startswith('{\n  "loss"')  # indent 2
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_write_results_rejects_non_dict(tmp_path):
    with pytest.raises(ValueError, match="results"):
        prov.write_results(tmp_path / "results.json", [1, 2])


def test_git_state_outside_a_checkout(tmp_path):
    assert prov.git_state(tmp_path) == (None, None)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_and_dirty(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    assert prov.git_state(tmp_path) == (None, None)  # no commit yet
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert prov.git_state(tmp_path) == (head, False)
    (tmp_path / "untracked.txt").write_text("u")  # untracked files do not make it dirty
    assert prov.git_state(tmp_path) == (head, False)
    (tmp_path / "a.txt").write_text("b")
    assert prov.git_state(tmp_path) == (head, True)
    # A folder inside a checkout is not that checkout (an installed package under a venv).
    assert prov.git_state(tmp_path / "sub") == (None, None)
