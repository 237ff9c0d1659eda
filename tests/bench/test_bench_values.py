"""`longctx bench attention` and `longctx bench sparse` end to end at toy lengths.

Timings are not tested (they are measurements, not behaviour). What is tested is everything a
benchmark derives from its measurements, against formulas written out here: FLOP/s from the
attention FLOP count, speedups against the baseline row (exactly 1.0 for the baseline itself),
stage shares that add up to the total, the memory numbers where their direction is certain, that
rows over the memory budget are skipped and say why, and that the printed table and results.json
show exactly the measured rows.
"""

import json

import pytest

from longctx_jax.bench import attention as attention_bench
from longctx_jax.bench import sparse as sparse_bench

HEADS, HEAD_DIM = 2, 16


def written_results(workdir):
    """results.json as written, less its provenance block (when the writer adds one)."""
    written = json.loads((workdir / "results.json").read_text())
    written.pop("provenance", None)
    return written


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, f"{path} is not a PNG figure"


def table_rows(table: str, skip: int) -> list[list[str]]:
    """The whitespace-separated cells of each line after the first `skip` lines."""
    return [line.split() for line in table.splitlines()[skip:]]


def causal_attention_flops(batch, length, heads, head_dim, backward):
    """QK^T and PV: 2 * T * S * D multiply-adds (2 FLOPs each) per head, half of them masked out
    by causality; the backward pass is 5 such matmuls where the forward has 2."""
    forward = 2 * (2 * length * length * head_dim) * batch * heads / 2
    return forward * (1 + 5 / 2) if backward else forward


@pytest.mark.slow
def test_attention_bench_values_follow_from_the_measurements(tmp_path):
    lengths, impls = [128, 256], ("xla", "blockwise", "pallas_gpu")
    results = attention_bench.run_benchmark(
        lengths, impls, heads=HEADS, head_dim=HEAD_DIM, repeats=1
    )
    setup, rows = results["setup"], results["rows"]
    assert setup["baseline"] == "xla"
    assert [(r["length"], r["impl"], r["mode"]) for r in rows] == [
        (length, impl, mode) for length in lengths for impl in impls for mode in ("fwd", "fwd+bwd")
    ]
    rate = setup["matmul_flops_per_second"]
    assert rate > 0
    by_key = {(r["impl"], r["mode"], r["length"]): r for r in rows}
    for r in rows:
        what = f"{r['impl']} {r['mode']} L={r['length']}"
        assert "skipped" not in r and r["batch"] == 1, what
        assert r["seconds"] > 0, what
        flops = causal_attention_flops(1, r["length"], HEADS, HEAD_DIM, r["mode"] == "fwd+bwd")
        assert r["flops_per_second"] == pytest.approx(flops / r["seconds"], rel=1e-12), what
        assert r["fraction_of_matmul"] == pytest.approx(r["flops_per_second"] / rate, rel=1e-12)
        baseline = by_key[("xla", r["mode"], r["length"])]
        assert r["speedup_vs_baseline"] == baseline["seconds"] / r["seconds"], what
        if r["impl"] == "xla":
            assert r["speedup_vs_baseline"] == 1.0, what

    # Memory: XLA's temporaries grow with the length for every implementation, and dense XLA
    # attention materialises at least one float32 [B, H, T, T] score matrix.
    for impl in impls:
        for mode in ("fwd", "fwd+bwd"):
            short, long = (by_key[(impl, mode, length)]["temp_bytes"] for length in lengths)
            assert 0 < short < long, f"{impl} {mode}: temporaries {short} at 128, {long} at 256"
    for length in lengths:
        for mode in ("fwd", "fwd+bwd"):
            scores = 1 * HEADS * length * length * 4
            assert by_key[("xla", mode, length)]["temp_bytes"] >= scores, f"xla {mode} {length}"

    table = attention_bench.format_table(results)
    assert table.splitlines()[0] == f"matmul rate: {rate / 1e9:.1f} GFLOP/s"
    body = table_rows(table, skip=2)
    assert len(body) == len(rows)
    for cells, r in zip(body, rows, strict=True):
        assert cells == [
            r["impl"],
            r["mode"],
            str(r["length"]),
            f"{r['seconds']:.3f}",
            str(r["batch"]),
            f"{r['flops_per_second'] / 1e9:.1f}",
            f"{r['fraction_of_matmul']:.0%}",
            f"{r['speedup_vs_baseline']:.2f}x",
            f"{r['temp_bytes'] / 2**20:.0f}",
        ]

    workdir = attention_bench.write_results(results, tmp_path / "attention")
    assert written_results(workdir) == results
    assert_png(workdir / "figure.png")


def test_attention_bench_skips_rows_over_the_memory_budget():
    """budget=0: every row compiles, reports its temporaries and is skipped, saying why; no row
    has a time or a speedup (their baseline did not run either)."""
    results = attention_bench.run_benchmark(
        [128], ("xla", "blockwise"), heads=HEADS, head_dim=HEAD_DIM, repeats=1, budget=0
    )
    rows = results["rows"]
    assert len(rows) == 4 and results["setup"]["memory_budget_bytes"] == 0
    for r in rows:
        assert r["seconds"] is None and r["temp_bytes"] > 0, r
        assert r["skipped"] == f"needs {r['temp_bytes'] / 2**30:.1f} GiB of temporaries > budget"
        assert "speedup_vs_baseline" not in r and "flops_per_second" not in r, r
    lines = attention_bench.format_table(results).splitlines()[2:]
    assert len(lines) == len(rows)
    for line, r in zip(lines, rows, strict=True):
        assert line.split()[:3] == [r["impl"], r["mode"], "128"]
        assert line.endswith(" " + r["skipped"]), line


@pytest.mark.slow
def test_sparse_bench_values_follow_from_the_measurements(tmp_path):
    variants = ("token_native", "block64")
    results = sparse_bench.run_benchmark(
        [256], variants, k=32, heads=HEADS, head_dim=HEAD_DIM, repeats=1, selection_lengths=(256,)
    )
    rows = results["rows"]
    assert [(r["variant"], r["mode"], r["length"]) for r in rows] == [
        (variant, mode, 256) for variant in ("dense", *variants) for mode in ("fwd", "fwd+bwd")
    ]
    dense = {r["mode"]: r for r in rows if r["variant"] == "dense"}
    for r in rows:
        what = f"{r['variant']} {r['mode']}"
        assert r["seconds"] > 0 and r["temp_bytes"] > 0, what
        if r["variant"] == "dense":
            assert "vs_dense" not in r, what
            continue
        assert r["vs_dense"] == r["seconds"] / dense[r["mode"]]["seconds"], what
        # The stages are cumulative prefixes timed in the same run: their shares add up.
        parts = r["index_seconds"] + r["select_seconds"] + r["attention_seconds"]
        assert parts == pytest.approx(r["seconds"], rel=1e-9, abs=1e-12), what
    for variant in variants:
        fwd, bwd = (r for r in rows if r["variant"] == variant)
        # index and selection are measured once per variant and shared by both modes.
        assert (fwd["index_seconds"], fwd["select_seconds"]) == (
            bwd["index_seconds"],
            bwd["select_seconds"],
        )

    (selection,) = results["selection"]
    assert (selection["length"], selection["k"]) == (256, 32)
    for method in ("threshold", "native"):
        expected = selection["exact_seconds"] / selection[f"{method}_seconds"]
        assert selection[f"{method}_speedup"] == expected, method

    table = sparse_bench.format_table(results)
    lines = table.splitlines()
    body = table_rows("\n".join(lines[: 1 + len(rows)]), skip=1)
    assert len(body) == len(rows)
    for cells, r in zip(body, rows, strict=True):
        shares = (
            ["-", "-", "-"]
            if r["variant"] == "dense"
            else [
                f"{r[key] / r['seconds']:.0%}"
                for key in ("index_seconds", "select_seconds", "attention_seconds")
            ]
        )
        assert cells == [
            r["variant"],
            r["mode"],
            str(r["length"]),
            f"{r['seconds']:.2f}",
            f"{r.get('vs_dense', 1.0):.2f}",
            *shares,
            f"{r['temp_bytes'] / 2**20:.0f}",
        ]
    assert lines[1 + len(rows)] == (
        f"selection only, L=256 k=32: lax.top_k {selection['exact_seconds']:.2f} s, "
        f"threshold {selection['threshold_seconds']:.2f} s "
        f"({selection['threshold_speedup']:.1f}x faster), "
        f"native {selection['native_seconds']:.2f} s ({selection['native_speedup']:.1f}x faster)"
    )

    workdir = sparse_bench.write_results(results, tmp_path / "sparse")
    assert written_results(workdir) == results
    assert_png(workdir / "figure.png")
