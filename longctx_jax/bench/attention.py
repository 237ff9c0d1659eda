"""`longctx bench attention`: time and memory of attention implementations vs sequence length.

For each length and implementation, forward and forward+backward are compiled once, their XLA
temporaries read from the compiled memory analysis, and their best-of-n wall time measured. The
machine's float32 matmul rate is measured in the same run, so each implementation's useful
attention FLOP/s is reported as a fraction of what this machine can do at all. The dense XLA
baseline is skipped (and says so) at lengths whose temporaries exceed the memory budget.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from longctx_jax.attention import AttentionMask, attention
from longctx_jax.bench.cost import attention_flops, matmul_flops_per_second, temp_bytes, time_call
from longctx_jax.bench.table import format_rows, mib, speedup, write_bench

MODES = ("fwd", "fwd+bwd")
TOKENS = 32768  # tokens per measurement when batch=0 (batch = TOKENS // length)


def attention_fn(impl: str, causal: bool):
    """q, k, v -> output for `impl`: "xla" is jax.nn.dot_product_attention, else attention().

    "xla" is JAX's dense attention with the mask given as `is_causal` (no mask arrays), the
    baseline; every other name goes through `attention()` (so "cudnn" is NVIDIA's kernel).
    """
    if impl == "xla":
        return lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla"
        )
    mask = AttentionMask(causal=causal)
    return lambda q, k, v: attention(q, k, v, mask=mask, impl=impl)


def forward_backward(fn):
    """q, k, v, d_out -> (dq, dk, dv): one forward and one backward pass."""

    def run(q, k, v, d_out):
        _, pullback = jax.vjp(fn, q, k, v)
        return pullback(d_out)

    return run


def default_memory_budget() -> int:
    """Half of the device's memory (host memory on CPU): the most a baseline may ask for."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def measure(impl, mode, length, *, batch, heads, head_dim, causal, dtype, budget, repeats):
    """One row of the results table; `batch` 0 means enough rows for `TOKENS` tokens."""
    batch = batch or max(1, TOKENS // length)
    keys = jax.random.split(jax.random.key(length), 4)
    shape = (batch, length, heads, head_dim)
    q, k, v, d_out = (jax.random.normal(key, shape, dtype) for key in keys)
    fn = attention_fn(impl, causal)
    args = (q, k, v) if mode == "fwd" else (q, k, v, d_out)
    fn = fn if mode == "fwd" else forward_backward(fn)
    row = dict(impl=impl, mode=mode, length=length, batch=batch, temp_bytes=None, seconds=None)
    try:
        compiled = jax.jit(fn).lower(*args).compile()
    except jax.errors.JaxRuntimeError as error:  # e.g. a GPU autotuner out of memory
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        row["skipped"] = "out of memory while compiling"
        return row
    temps = row["temp_bytes"] = temp_bytes(compiled)
    if temps is not None and temps > budget:
        row["skipped"] = f"needs {temps / 2**30:.1f} GiB of temporaries > budget"
        return row
    seconds = time_call(compiled, *args, repeats=repeats)
    flops = attention_flops(
        batch, length, length, heads, head_dim, causal=causal, backward=mode == "fwd+bwd"
    )
    row.update(seconds=seconds, flops_per_second=flops / seconds)
    return row


def run_benchmark(
    lengths,
    impls=("xla", "blockwise"),
    *,
    batch=1,
    heads=8,
    head_dim=64,
    causal=True,
    dtype=jnp.float32,
    budget=None,
    repeats=3,
):
    """Measures every (impl, mode, length); returns the results dict written to results.json."""
    budget = default_memory_budget() if budget is None else budget
    on_accelerator = jax.default_backend() != "cpu"
    matmul_rate = matmul_flops_per_second(size=8192 if on_accelerator else 2048, dtype=dtype)
    rows = []
    grid = [(length, impl, mode) for length in lengths for impl in impls for mode in MODES]
    for length, impl, mode in tqdm(grid, desc="bench attention", unit="run"):
        row = measure(
            impl,
            mode,
            length,
            batch=batch,
            heads=heads,
            head_dim=head_dim,
            causal=causal,
            dtype=dtype,
            budget=budget,
            repeats=repeats,
        )
        if row["seconds"] is not None:
            row["fraction_of_matmul"] = row["flops_per_second"] / matmul_rate
        rows.append(row)
    _add_speedups(rows, baseline=impls[0])
    setup = dict(
        batch=batch,
        heads=heads,
        head_dim=head_dim,
        causal=causal,
        dtype=jnp.dtype(dtype).name,
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        memory_budget_bytes=budget,
        matmul_flops_per_second=matmul_rate,
        baseline=impls[0],
    )
    return dict(setup=setup, rows=rows)


def _add_speedups(rows, baseline):
    """speedup = baseline seconds / seconds, for rows whose baseline ran at the same length."""
    base = {(r["mode"], r["length"]): r["seconds"] for r in rows if r["impl"] == baseline}
    for r in rows:
        b = base.get((r["mode"], r["length"]))
        if b is not None and r["seconds"] is not None:
            r["speedup_vs_baseline"] = b / r["seconds"]


def format_table(results) -> str:
    """Plain-text table of the results."""
    rate = results["setup"]["matmul_flops_per_second"]
    columns = [
        ("impl", 10, lambda r: r["impl"]),
        ("mode", 8, lambda r: r["mode"]),
        ("L", 6, lambda r: r["length"]),
        ("time s", 9, lambda r: f"{r['seconds']:.3f}"),
        ("B", 3, lambda r: r.get("batch", "")),
        ("GFLOP/s", 8, lambda r: f"{r['flops_per_second'] / 1e9:.1f}"),
        ("of mm", 6, lambda r: f"{r['fraction_of_matmul']:.0%}"),
        ("speedup", 8, speedup),
        ("temp MiB", 9, mib),
    ]
    table = format_rows(results["rows"], columns, key_columns=3)
    return f"matmul rate: {rate / 1e9:.1f} GFLOP/s\n{table}"


def write_results(results, workdir) -> Path:
    """Writes results.json and figure.png under workdir; returns the workdir."""
    from longctx_jax.viz.bench import plot_attention_bench

    return write_bench(results, workdir, plot_attention_bench)
