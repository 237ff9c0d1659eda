"""`longctx bench ring`: attention rows per (L, n, strategy, layout), longest trainable length."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_config import tiny_config  # noqa: E402

from longctx_jax.eval import ring_bench  # noqa: E402
from longctx_jax.eval.ring_bench import (  # noqa: E402
    fits,
    format_ring_table,
    run_ring_benchmark,
    write_ring_results,
)


def test_ring_benchmark_rows_and_outputs(tmp_path):
    results = run_ring_benchmark(
        [256], (1, 4), memory_lengths=[512], heads=2, kv_heads=1, head_dim=8, repeats=1
    )
    memory_only = [r for r in results["rows"] if r["length"] == 512]
    assert len(memory_only) == 1 + 2 * 2
    assert all(r["seconds"] is None and r["temp_bytes"] > 0 for r in memory_only)
    rows = [r for r in results["rows"] if r["length"] == 256]
    keys = {(r["strategy"], r["n"], r["layout"]) for r in rows}
    for n in (1, 4):
        for strategy in ("ring", "all_gather"):
            for layout in ("contiguous", "zigzag", "striped"):
                assert (strategy, n, layout) in keys
    assert ("single", 1, "-") in keys and len(rows) == 1 + 2 * 2 * 3
    for r in rows:
        assert r["seconds"] > 0 and r["temp_bytes"] > 0 and r["peak_bytes"] >= r["temp_bytes"]
    ring = {r["n"]: r["temp_bytes"] for r in rows if r["strategy"] == "ring"}
    assert ring[4] < ring[1]
    balance = results["causal_balance_max_over_min"]
    assert balance["contiguous"]["4"] > 6 and balance["zigzag"]["4"] == 1.0
    workdir = write_ring_results(results, tmp_path)
    assert (workdir / "results.json").exists() and (workdir / "figure.png").stat().st_size > 0
    assert "all_gather" in format_ring_table(results)


def test_longest_trainable_is_the_boundary(monkeypatch):
    """The search against a known memory model: peak = 1000 + 3 * seq_len bytes."""
    probed = []

    def fake_fits(config, seq_len, sequence, budget):
        probed.append(seq_len)
        peak = 1000 + 3 * seq_len
        return peak <= budget, peak

    monkeypatch.setattr(ring_bench, "fits", fake_fits)
    found = ring_bench.longest_trainable(None, 8, budget=1000 + 3 * 5000, unit=512)
    assert found["longest"] == 4608 and found["next_length"] == 5120  # 512-multiples around 5000
    assert found["peak_bytes"] == 1000 + 3 * 4608
    assert len(probed) <= 10


def test_train_step_peak_grows_with_length():
    config = tiny_config()
    ok, peak_256 = fits(config, 256, 1, budget=2**40)
    assert ok and peak_256 > 0
    ok, peak_1024 = fits(config, 1024, 1, budget=peak_256)
    assert not ok and peak_1024 > peak_256
