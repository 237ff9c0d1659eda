"""`longctx bench train` measures the real train step for each attention impl."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_config import tiny_config  # noqa: E402

from longctx_jax.bench.train import format_train_table, run_train_benchmark  # noqa: E402


def test_train_benchmark_rows():
    results = run_train_benchmark(tiny_config(), [32], ("xla", "blockwise"), repeats=1)
    rows = {r["impl"]: r for r in results["rows"]}
    assert set(rows) == {"xla", "blockwise"}
    for row in rows.values():
        assert row["seconds"] > 0 and row["tokens_per_second"] > 0 and row["temp_bytes"] > 0
    assert rows["xla"]["speedup_vs_baseline"] == 1.0
    assert "blockwise" in format_train_table(results)


def test_budget_skips_instead_of_running():
    results = run_train_benchmark(tiny_config(), [32], ("xla",), repeats=1, budget=1)
    (row,) = results["rows"]
    assert row["seconds"] is None and "budget" in row["skipped"]
