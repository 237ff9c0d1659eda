"""`longctx bench ring`: context-parallel attention and training, per device, vs devices and length.

Attention: causal GQA attention forward+backward through `context_parallel_attention` for each
number of devices n, length L and strategy, compiled once (the layout only changes the position
values, not the program); per-device temporaries and peak from XLA's compiled memory analysis,
best-of-n time per layout. n = 1 also runs plain single-device blockwise, the baseline. The
causal work balance of each layout (`causal_work_per_shard`) is reported alongside.

Training: the longest sequence a config's model (quickstart) can train with the sequence axis
over 1 device vs n devices: the compiled train step's per-device peak must fit a memory budget
(compiled, never run). Lengths are searched by doubling, then bisection.

On a CPU host the n devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count) and
share its cores, so memory per device is exact but times are not those of n real devices.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from longctx_jax import sharding
from longctx_jax.attention import AttentionMask, attention
from longctx_jax.attention.ring import (
    LAYOUTS,
    STRATEGIES,
    causal_work_per_shard,
    context_parallel_attention,
    reorder_for_context_parallel,
)
from longctx_jax.bench.attention import default_memory_budget, forward_backward
from longctx_jax.bench.cost import peak_bytes, temp_bytes, time_call
from longctx_jax.bench.table import format_rows, mib, write_bench
from longctx_jax.bench.train import compile_train_step

SINGLE = "single"  # the baseline: attention(impl="blockwise") on one device, no shard_map


def _fwd_bwd(strategy: str, mesh):
    """(q, k, v, d_out, positions) -> (dq, dk, dv) of causal attention for `strategy`."""

    def run(q, k, v, d_out, positions):
        mask = AttentionMask(causal=True, q_positions=positions, kv_positions=positions)
        if strategy == SINGLE:
            fn = lambda q, k, v: attention(q, k, v, mask=mask, impl="blockwise")  # noqa: E731
        else:

            def fn(q, k, v):
                return context_parallel_attention(q, k, v, mask=mask, mesh=mesh, strategy=strategy)

        return forward_backward(fn)(q, k, v, d_out)

    return run


def measure_attention(strategy, n, length, *, batch, heads, kv_heads, head_dim, repeats):
    """Rows for forward+backward on n devices at length L: one per layout (one for SINGLE);
    repeats=0 compiles only (memory, no time: one row, layout "-")."""
    mesh = Mesh(np.asarray(jax.devices()[:n]), ("sequence",))
    seq = NamedSharding(mesh, P(None, "sequence"))
    keys = jax.random.split(jax.random.key(length), 4)
    q_shape, kv_shape = (batch, length, heads, head_dim), (batch, length, kv_heads, head_dim)
    shapes = (q_shape, kv_shape, kv_shape, q_shape)
    q, k, v, d_out = (
        jax.device_put(jax.random.normal(key, s), seq) for key, s in zip(keys, shapes, strict=True)
    )
    tokens = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    compiled = jax.jit(_fwd_bwd(strategy, mesh)).lower(q, k, v, d_out, tokens).compile()
    memory = dict(temp_bytes=temp_bytes(compiled), peak_bytes=peak_bytes(compiled))
    if repeats == 0:
        return [dict(strategy=strategy, n=n, length=length, layout="-", seconds=None, **memory)]
    rows = []
    for layout in (None,) if strategy == SINGLE else LAYOUTS:
        positions = (
            tokens if layout is None else reorder_for_context_parallel(tokens, n, layout=layout)
        )
        positions = jax.device_put(positions, seq)
        seconds = time_call(compiled, q, k, v, d_out, positions, repeats=repeats)
        rows.append(dict(strategy=strategy, n=n, length=length, layout=layout or "-",
                         seconds=seconds, **memory))  # fmt: skip
    return rows


def fits(config, seq_len: int, sequence: int, budget: int) -> tuple[bool, int]:
    """(whether the train step's per-device peak fits `budget`, that peak) at seq_len."""
    config = config.copy_and_resolve_references()
    for axis in sharding.MESH_AXES:
        config.mesh[axis] = 1
    config.mesh.sequence = sequence
    compiled = compile_train_step(config, seq_len)[0]
    peak = peak_bytes(compiled)
    return peak <= budget, peak


def longest_trainable(config, sequence: int, budget: int, *, unit: int = 4096) -> dict:
    """The longest multiple of `unit` whose train step fits `budget` per device, by doubling
    then bisection; returns it with the peak there and at the first length that does not fit."""
    fit_len, fit_peak, fail_len, fail_peak = 0, None, unit, None
    while True:
        ok, peak = fits(config, fail_len, sequence, budget)
        if not ok:
            fail_peak = peak
            break
        fit_len, fit_peak, fail_len = fail_len, peak, 2 * fail_len
    while fail_len - fit_len > unit:
        mid = (fit_len + fail_len) // 2 // unit * unit
        ok, peak = fits(config, mid, sequence, budget)
        if ok:
            fit_len, fit_peak = mid, peak
        else:
            fail_len, fail_peak = mid, peak
    return dict(sequence=sequence, longest=fit_len, peak_bytes=fit_peak,
                next_length=fail_len, next_peak_bytes=fail_peak)  # fmt: skip


def run_ring_benchmark(
    lengths,
    devices=(1, 2, 4, 8),
    *,
    memory_lengths=(),
    config=None,
    train_devices=8,
    batch=1,
    heads=8,
    kv_heads=2,
    head_dim=64,
    repeats=3,
    budget=None,
):
    """Attention rows for every (L, n, strategy) (at `memory_lengths`: compiled only, memory
    rows) and, with `config`, the longest trainable sequence on 1 vs `train_devices` sequence
    devices; the dict written to results.json."""
    budget = default_memory_budget() if budget is None else budget
    if max(devices) > jax.device_count():
        raise ValueError(
            f"devices={tuple(devices)}: only {jax.device_count()} devices; on a CPU host set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=8"
        )
    runs = [(SINGLE, 1)] + [(s, n) for n in devices for s in STRATEGIES]
    grid = [(length, repeats, s, n) for length in lengths for s, n in runs]
    grid += [(length, 0, s, n) for length in memory_lengths for s, n in runs]
    rows = []
    for length, reps, strategy, n in tqdm(grid, desc="bench ring", unit="run"):
        size = dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
        rows += measure_attention(strategy, n, length, repeats=reps, **size)
    base = {r["length"]: r for r in rows if r["strategy"] == SINGLE}
    for r in rows:
        if r["seconds"] is not None:
            r["time_vs_single"] = r["seconds"] / base[r["length"]]["seconds"]
        r["temp_vs_single"] = r["temp_bytes"] / base[r["length"]]["temp_bytes"]
    balance = {
        layout: {str(n): _max_over_min(causal_work_per_shard(16 * n, n, layout)) for n in devices}
        for layout in LAYOUTS
    }
    train = None
    if config is not None:
        train = [
            longest_trainable(config, sequence, budget)
            for sequence in tqdm((1, train_devices), desc="longest trainable", unit="mesh")
        ]
    setup = dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim, causal=True,
                 dtype="float32", backend=jax.default_backend(), device=str(jax.devices()[0]),
                 device_count=jax.device_count(), memory_budget_bytes=budget)  # fmt: skip
    return dict(setup=setup, rows=rows, causal_balance_max_over_min=balance, train=train)


def _max_over_min(work) -> float:
    return float(np.max(work) / np.min(work))


def format_ring_table(results) -> str:
    """Plain-text tables: attention rows, layout balance, longest trainable sequence."""
    columns = [
        ("strategy", 10, lambda r: r["strategy"]),
        ("n", 2, lambda r: r["n"]),
        ("L", 6, lambda r: r["length"]),
        ("layout", 10, lambda r: r["layout"]),
        ("time s", 8, lambda r: "-" if r["seconds"] is None else f"{r['seconds']:.3f}"),
        ("x single", 8, lambda r: f"{r['time_vs_single']:.2f}" if "time_vs_single" in r else "-"),
        ("temp MiB", 9, mib),
        ("peak MiB", 9, lambda r: f"{r['peak_bytes'] / 2**20:.0f}"),
        ("x single", 8, lambda r: f"{r['temp_vs_single']:.2f}"),
    ]
    lines = [format_rows(results["rows"], columns, key_columns=4), ""]
    lines.append("causal work per device, max/min (n: ratio):")
    for layout, by_n in results["causal_balance_max_over_min"].items():
        lines.append(f"  {layout:>10}  " + "  ".join(f"{n}: {v:.2f}" for n, v in by_n.items()))
    for row in results["train"] or []:
        lines.append(
            f"sequence={row['sequence']}: longest trainable {row['longest']} tokens "
            f"(peak {row['peak_bytes'] / 2**30:.2f} GiB/device; {row['next_length']} needs "
            f"{row['next_peak_bytes'] / 2**30:.2f} GiB)"
        )
    return "\n".join(lines)


def write_ring_results(results, workdir) -> Path:
    """Writes results.json and figure.png under workdir; returns the workdir."""
    from longctx_jax.viz.bench import plot_ring_bench

    return write_bench(results, workdir, plot_ring_bench)
