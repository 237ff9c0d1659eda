"""`longctx bench ring`: attention rows per (L, n, strategy, layout), longest trainable length."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from tiny_config import tiny_config  # noqa: E402

from longctx_jax.bench import ring as ring_bench  # noqa: E402
from longctx_jax.bench.ring import (  # noqa: E402
    fits,
    format_ring_table,
    run_ring_benchmark,
    write_ring_results,
)

B, N, K, H = 1, 2, 1, 8  # batch, query heads, key/value heads, head_dim of the benchmark
LAYOUT_NAMES = ("contiguous", "zigzag", "striped")


def tile_work_max_over_min(length: int, n: int, layout: str) -> float:
    """Causal work per device, max / min, written out: device d holds the positions of `layout`
    (contiguous: one block; zigzag: chunks d and 2n-1-d of 2n; striped: every n-th position from
    d), cut into 2 chunks; a (query chunk, key chunk) pair costs 1 if every query sees every key
    (min query position >= max key position), 0 if none does, 1/2 otherwise."""
    positions = np.arange(length)
    if layout == "contiguous":
        shards = positions.reshape(n, -1)
    elif layout == "zigzag":
        chunks = positions.reshape(2 * n, -1)
        shards = np.stack([np.concatenate([chunks[d], chunks[2 * n - 1 - d]]) for d in range(n)])
    else:
        shards = np.stack([positions[d::n] for d in range(n)])
    chunks = shards.reshape(2 * n, -1)
    work = np.zeros(n)
    for qi, q in enumerate(chunks):
        for kv in chunks:
            work[qi // 2] += 1.0 if q.min() >= kv.max() else 0.0 if q.max() < kv.min() else 0.5
    return work.max() / work.min()


def io_bytes_per_device(length: int, n: int) -> int:
    """Arguments (q, k, v, d_out, int32 positions) and outputs (dq, dk, dv) of one device."""
    q, kv = B * length * N * H * 4, B * length * K * H * 4
    return (2 * q + 2 * kv + B * length * 4 + q + 2 * kv) // n


@pytest.mark.slow
def test_ring_benchmark_rows_and_outputs(tmp_path):
    results = run_ring_benchmark(
        [256], (1, 4), memory_lengths=[512], heads=N, kv_heads=K, head_dim=H, repeats=1
    )
    rows = results["rows"]
    runs = [("single", 1)] + [(s, n) for n in (1, 4) for s in ("ring", "all_gather")]
    timed = [
        (s, n, 256, layout)
        for s, n in runs
        for layout in (("-",) if s == "single" else LAYOUT_NAMES)
    ]
    memory_only = [(s, n, 512, "-") for s, n in runs]
    assert [(r["strategy"], r["n"], r["length"], r["layout"]) for r in rows] == timed + memory_only

    single = {r["length"]: r for r in rows if r["strategy"] == "single"}
    for r in rows:
        what = f"{r['strategy']} n={r['n']} L={r['length']} {r['layout']}"
        base = single[r["length"]]
        assert r["temp_vs_single"] == r["temp_bytes"] / base["temp_bytes"], what
        if r["length"] == 512:
            assert r["seconds"] is None and "time_vs_single" not in r, what
        else:
            assert r["seconds"] > 0, what
            assert r["time_vs_single"] == r["seconds"] / base["seconds"], what
        # peak = arguments + outputs + temporaries (nothing donated); arguments and outputs are
        # known exactly per device (XLA adds a few bytes of tuple bookkeeping).
        extra = r["peak_bytes"] - r["temp_bytes"] - io_bytes_per_device(r["length"], r["n"])
        assert 0 <= extra < 1024, f"{what}: peak - temporaries - inputs/outputs = {extra}"
    assert single[256]["time_vs_single"] == 1.0 and single[256]["temp_vs_single"] == 1.0
    assert single[512]["temp_vs_single"] == 1.0

    temps = {(r["strategy"], r["n"], r["length"]): r["temp_bytes"] for r in rows}
    for s, n in runs:
        assert 0 < temps[(s, n, 256)] < temps[(s, n, 512)], f"{s} n={n}: temps not growing"
    for length in (256, 512):  # the point of the ring: per-device temporaries shrink with n
        assert temps[("ring", 4, length)] < temps[("ring", 1, length)], length
        assert temps[("ring", 4, length)] < temps[("single", 1, length)], length

    balance = results["causal_balance_max_over_min"]
    assert set(balance) == set(LAYOUT_NAMES)
    for layout in LAYOUT_NAMES:
        for n in (1, 4):
            expected = tile_work_max_over_min(16 * n, n, layout)
            assert balance[layout][str(n)] == pytest.approx(expected, rel=1e-12), (layout, n)
    assert balance["contiguous"]["4"] == pytest.approx(7.0)  # (4*3 + 2) / 2 tiles

    lines = format_ring_table(results).splitlines()
    body = [line.split() for line in lines[1 : 1 + len(rows)]]
    for cells, r in zip(body, rows, strict=True):
        assert cells == [
            r["strategy"],
            str(r["n"]),
            str(r["length"]),
            r["layout"],
            "-" if r["seconds"] is None else f"{r['seconds']:.3f}",
            f"{r['time_vs_single']:.2f}" if "time_vs_single" in r else "-",
            f"{r['temp_bytes'] / 2**20:.0f}",
            f"{r['peak_bytes'] / 2**20:.0f}",
            f"{r['temp_vs_single']:.2f}",
        ]
    assert lines[1 + len(rows)] == ""

    workdir = write_ring_results(results, tmp_path)
    written = json.loads((workdir / "results.json").read_text())
    written.pop("provenance", None)
    assert written == results
    assert (workdir / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


@pytest.mark.slow
def test_train_step_peak_grows_with_length():
    config = tiny_config()
    ok, peak_256 = fits(config, 256, 1, budget=2**40)
    assert ok and peak_256 > 0
    ok, peak_1024 = fits(config, 1024, 1, budget=peak_256)
    assert not ok and peak_1024 > peak_256
