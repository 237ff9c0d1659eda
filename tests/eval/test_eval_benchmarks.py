"""`longctx bench attention` and `longctx bench sparse` end to end at toy lengths: every row is
measured or says why not, the tables print, and results.json + figure.png are written."""

import json

from longctx_jax.eval import attention_bench, sparse_bench


def test_attention_bench_writes_results(tmp_path):
    results = attention_bench.run_benchmark(
        [128], ("xla", "blockwise", "pallas_gpu"), heads=2, head_dim=16, repeats=1
    )
    rows = results["rows"]
    assert {(r["impl"], r["mode"]) for r in rows} == {
        (impl, mode)
        for impl in ("xla", "blockwise", "pallas_gpu")
        for mode in attention_bench.MODES
    }
    assert all(r["seconds"] > 0 and r["flops_per_second"] > 0 for r in rows)
    assert all(r["speedup_vs_baseline"] > 0 for r in rows)
    assert "blockwise" in attention_bench.format_table(results)
    workdir = attention_bench.write_results(results, tmp_path / "attention")
    assert json.loads((workdir / "results.json").read_text()) == results
    assert (workdir / "figure.png").stat().st_size > 0


def test_sparse_bench_writes_results(tmp_path):
    results = sparse_bench.run_benchmark(
        [256],
        ("token_native", "block64"),
        k=32,
        heads=2,
        head_dim=16,
        repeats=1,
        selection_lengths=(256,),
    )
    variants = {r["variant"] for r in results["rows"]}
    assert variants == {"dense", "token_native", "block64"}
    assert all(r["seconds"] > 0 for r in results["rows"])
    table = sparse_bench.format_table(results)
    assert "block64" in table and "native" in table and "selection only, L=256" in table
    workdir = sparse_bench.write_results(results, tmp_path / "sparse")
    assert json.loads((workdir / "results.json").read_text()) == results
    assert (workdir / "figure.png").stat().st_size > 0
