"""`longctx bench linear` end to end at toy lengths: the rows measured, the ratios against
blockwise attention derived from them, the state and KV-cache sizes from their formulas, the
printed table, and results.json (with provenance) and figure.png as written."""

import json

import pytest

from longctx_jax.bench import linear as linear_bench

HEADS, HEAD_DIM = 2, 8


@pytest.mark.slow
def test_linear_bench_values_follow_from_the_measurements(tmp_path):
    lengths, chunks = [64, 100], (16,)  # 100: a padded last chunk
    results = linear_bench.run_benchmark(lengths, chunks, heads=HEADS, head_dim=HEAD_DIM, repeats=1)
    setup, rows = results["setup"], results["rows"]
    assert [(r["length"], r["mixer"], r["chunk_size"], r["mode"]) for r in rows] == [
        (length, mixer, chunk, mode)
        for length in lengths
        for mixer, chunk in (("blockwise", None), ("linear", 16))
        for mode in ("fwd", "fwd+bwd")
    ]
    base = {(r["mode"], r["length"]): r for r in rows if r["mixer"] == "blockwise"}
    for r in rows:
        b = base[(r["mode"], r["length"])]
        assert r["seconds"] > 0 and r["temp_bytes"] > 0, r
        assert r["time_vs_blockwise"] == r["seconds"] / b["seconds"], r
        assert r["temp_vs_blockwise"] == r["temp_bytes"] / b["temp_bytes"], r
    assert setup["state_bytes_per_layer"] == HEADS * HEAD_DIM * HEAD_DIM * 4
    assert setup["kv_cache_bytes_per_layer"] == {
        str(length): 2 * length * HEADS * HEAD_DIM * 4 for length in lengths
    }

    table = linear_bench.format_table(results).splitlines()
    body = [line.split() for line in table[1 : 1 + len(rows)]]
    for cells, r in zip(body, rows, strict=True):
        name = ["blockwise"] if r["chunk_size"] is None else ["linear", f"C={r['chunk_size']}"]
        assert cells == [
            *name,
            r["mode"],
            str(r["length"]),
            f"{r['seconds']:.3f}",
            f"{r['time_vs_blockwise']:.2f}",
            f"{r['temp_bytes'] / 2**20:.0f}",
            f"{r['temp_vs_blockwise']:.2f}",
        ]
    assert table[-1].startswith("state per layer and sequence: 0 KiB (fixed)")

    workdir = linear_bench.write_results(results, tmp_path / "linear")
    written = json.loads((workdir / "results.json").read_text())
    assert "jax_version" in json.dumps(written.pop("provenance"))
    assert written == results
    data = (workdir / "figure.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_bad_chunk_sizes_are_refused():
    with pytest.raises(ValueError, match=r"chunk_sizes \[0\]"):
        linear_bench.run_benchmark([64], (0,))
