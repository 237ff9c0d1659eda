"""`longctx bench decode` end to end at toy sizes: the bytes each step reads (the input arrays'
sizes, and for the cache the formula per dtype), every rate derived from the measured time, the
ratios to bfloat16 at the same length, the printed table, and results.json and figure.png."""

import json

import pytest

from longctx_jax.bench import decode as decode_bench

SHAPE = dict(batch=2, heads=4, kv_heads=2, head_dim=32)


def test_decode_bench_values_follow_from_the_measurements(tmp_path):
    lengths, dtypes = [128, 300], ("bfloat16", "int8", "int4")
    results = decode_bench.run_benchmark(lengths, dtypes, **SHAPE, repeats=1, roof_bytes=2**22)
    setup, rows = results["setup"], results["rows"]
    assert [(r["length"], r["dtype"]) for r in rows] == [(n, d) for n in lengths for d in dtypes]
    roof = setup["roof_gb_per_second"] * 1e9
    assert roof > 0 and setup["path"] == "xla (jnp)"
    b, k, h = SHAPE["batch"], SHAPE["kv_heads"], SHAPE["head_dim"]
    base = {r["length"]: r for r in rows if r["dtype"] == "bfloat16"}
    for r in rows:
        inputs = decode_bench.cache_inputs(r["length"], r["dtype"], **SHAPE)
        nbytes = sum(x.nbytes for x in inputs.values())
        assert r["bytes_per_token"] == nbytes / b
        bits = {"bfloat16": 16, "int8": 8, "int4": 4}[r["dtype"]]
        cache = 2 * b * r["length"] * k * h * bits // 8
        scales = 0 if bits == 16 else 2 * b * r["length"] * k * 4
        assert inputs["keys"].nbytes + inputs["values"].nbytes == cache
        assert sum(x.nbytes for n, x in inputs.items() if n.endswith("_scale")) == scales
        assert r["seconds"] > 0
        assert r["tokens_per_second"] == pytest.approx(b / r["seconds"])
        assert r["gb_per_second"] == pytest.approx(nbytes / r["seconds"] / 1e9)
        assert r["fraction_of_roof"] == pytest.approx(nbytes / r["seconds"] / roof)
        assert 0 < r["fraction_of_roof"]
        ratio = r["tokens_per_second"] / base[r["length"]]["tokens_per_second"]
        assert r["vs_bfloat16"] == pytest.approx(ratio)

    table = decode_bench.format_table(results).splitlines()
    assert table[0].split() == [
        "dtype", "L", "ms", "tokens/s", "MiB/token", "GB/s", "of", "roof", "vs", "bf16"
    ]  # fmt: skip
    for line, r in zip(table[1 : 1 + len(rows)], rows, strict=True):
        assert line.split() == [
            r["dtype"],
            str(r["length"]),
            f"{r['seconds'] * 1e3:.3f}",
            f"{r['tokens_per_second']:.0f}",
            f"{r['bytes_per_token'] / 2**20:.2f}",
            f"{r['gb_per_second']:.1f}",
            f"{r['fraction_of_roof']:.2f}",
            f"{r['vs_bfloat16']:.2f}x",
        ]
    assert table[-1].endswith(f"{setup['roof_gb_per_second']:.1f} GB/s")

    workdir = decode_bench.write_results(results, tmp_path / "decode")
    written = json.loads((workdir / "results.json").read_text())
    assert "jax_version" in json.dumps(written.pop("provenance"))
    assert written == results
    data = (workdir / "figure.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_bad_dtypes_are_refused():
    with pytest.raises(ValueError, match=r"dtypes \['fp8'\]"):
        decode_bench.run_benchmark([128], ("int8", "fp8"))
