"""`longctx bench linear`: the linear mixer (gated linear attention, chunked scan) against
blockwise softmax attention, per sequence length, forward and forward+backward.

Both mix the same q, k, v [1, L, heads, head_dim] (float32, causal; no projections, which the
two share): blockwise attention (`attention(impl="blockwise")`) and `chunked_linear_attention`
with L2-normalised q, k and log-decays drawn around the model's initial timescales, once per
chunk size. Forward+backward is one `jax.vjp` pullback (to q, k, v, and the log-decays for the
mixer). Each row: best-of-n seconds, XLA's compiled temporaries, and the ratio of both to
blockwise attention's at the same length and mode (measured in the same run). Also reported: the
mixer's recurrent state per layer (fixed) beside a float32 KV cache of L tokens (grows with L).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from longctx_jax.attention import AttentionMask, attention
from longctx_jax.bench.cost import temp_bytes, time_call
from longctx_jax.bench.table import format_rows, mib, write_bench
from longctx_jax.model.linear_mixer import chunked_linear_attention, timescale_bias_init

MODES = ("fwd", "fwd+bwd")
CAUSAL = AttentionMask(causal=True)
BASELINE = "blockwise"


def bench_inputs(length, *, heads, head_dim, seed=0):
    """q, k, v, d_out [1, L, N, H] ~ normal and log_decay [1, L, N] (float32): the heads'
    initial timescales 16..4096 (the config defaults), perturbed per token."""
    keys = jax.random.split(jax.random.key(seed), 5)
    shape = (1, length, heads, head_dim)
    q, k, v, d_out = (jax.random.normal(key, shape, jnp.float32) for key in keys[:4])
    bias = timescale_bias_init(16.0, 4096.0)(None, (heads,))
    gate = bias + 0.5 * jax.random.normal(keys[4], (1, length, heads), jnp.float32)
    return dict(q=q, k=k, v=v, d_out=d_out, log_decay=-jax.nn.softplus(gate))


def _unit(x):
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


def mixer_functions(chunk_size: int | None):
    """{mode: fn(inputs)}: blockwise attention for chunk_size None, else the linear mixer."""
    if chunk_size is None:
        names = ("q", "k", "v")

        def mix(q, k, v):
            return attention(q, k, v, mask=CAUSAL, impl="blockwise")
    else:
        names = ("q", "k", "v", "log_decay")

        def mix(q, k, v, log_decay):
            return chunked_linear_attention(_unit(q), _unit(k), v, log_decay, chunk_size=chunk_size)

    def fwd(x):
        return mix(*(x[name] for name in names))

    def fwd_bwd(x):
        _, pullback = jax.vjp(mix, *(x[name] for name in names))
        return pullback(x["d_out"])

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def timed(fn, inputs, repeats):
    """(best seconds, compiled temporaries in bytes) of fn(inputs)."""
    compiled = jax.jit(fn).lower(inputs).compile()
    return time_call(compiled, inputs, repeats=repeats), temp_bytes(compiled)


def run_benchmark(lengths, chunk_sizes=(64,), *, heads=4, head_dim=64, repeats=2):
    """Measures blockwise attention and the linear mixer at every (length, mode, chunk size)."""
    bad = [c for c in chunk_sizes if not isinstance(c, int) or isinstance(c, bool) or c < 1]
    if bad:
        raise ValueError(f"chunk_sizes {bad}: expected positive integers")
    rows = []
    grid = [(length, c) for length in lengths for c in (None, *chunk_sizes)]
    for length, chunk in tqdm(grid, desc="bench linear", unit="run"):
        x = bench_inputs(length, heads=heads, head_dim=head_dim)
        for mode, fn in mixer_functions(chunk).items():
            seconds, temps = timed(fn, x, repeats)
            rows.append(
                dict(
                    mixer=BASELINE if chunk is None else "linear",
                    chunk_size=chunk,
                    mode=mode,
                    length=length,
                    seconds=seconds,
                    temp_bytes=temps,
                )
            )
    _add_ratios(rows)
    state_bytes = heads * head_dim * head_dim * 4
    setup = dict(
        batch=1,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        causal=True,
        dtype="float32",
        baseline=BASELINE,
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        cpu_count=os.cpu_count(),
        state_bytes_per_layer=state_bytes,
        kv_cache_bytes_per_layer={
            str(length): 2 * length * heads * head_dim * 4 for length in lengths
        },
    )
    return dict(setup=setup, rows=rows)


def _add_ratios(rows):
    """time_vs_blockwise and temp_vs_blockwise: the row's over blockwise attention's, same
    (mode, length); exactly 1 for the baseline rows."""
    base = {(r["mode"], r["length"]): r for r in rows if r["mixer"] == BASELINE}
    for r in rows:
        b = base[(r["mode"], r["length"])]
        r["time_vs_blockwise"] = r["seconds"] / b["seconds"]
        if r["temp_bytes"] is not None and b["temp_bytes"]:
            r["temp_vs_blockwise"] = r["temp_bytes"] / b["temp_bytes"]


def row_name(row) -> str:
    return row["mixer"] if row["chunk_size"] is None else f"linear C={row['chunk_size']}"


def format_table(results) -> str:
    """Plain-text table of the results, then the state vs KV cache sizes."""

    def ratio(key):
        return lambda r: "-" if key not in r else f"{r[key]:.2f}"

    columns = [
        ("mixer", 14, row_name),
        ("mode", 8, lambda r: r["mode"]),
        ("L", 6, lambda r: r["length"]),
        ("time s", 8, lambda r: f"{r['seconds']:.3f}"),
        ("vs blockwise", 12, ratio("time_vs_blockwise")),
        ("temp MiB", 9, mib),
        ("temp vs bw", 10, ratio("temp_vs_blockwise")),
    ]
    setup = results["setup"]
    cache = ", ".join(
        f"L={length}: {n / 2**20:.0f} MiB"
        for length, n in setup["kv_cache_bytes_per_layer"].items()
    )
    return (
        format_rows(results["rows"], columns, key_columns=3)
        + f"\nstate per layer and sequence: {setup['state_bytes_per_layer'] / 2**10:.0f} KiB "
        + f"(fixed); a float32 KV cache: {cache}"
    )


def write_results(results, workdir) -> Path:
    """Writes results.json (with provenance) and figure.png under workdir; returns the workdir."""
    from longctx_jax.viz.linear_bench import plot_linear_bench

    return write_bench(results, workdir, plot_linear_bench)
