"""`longctx bench decode`: one decode step's attention over a KV cache, per cache length and dtype.

Decode reads the whole cache to emit one token per sequence, so its speed is set by memory
bandwidth, and a cache of fewer bytes is a faster one. Each row times one step (T = 1 new token
per sequence; defaults: batch 1, 32 query heads sharing 8 kv heads, head_dim 128, a Llama-3-8B
layer) of `decode_attention(backend="auto")` -- the Pallas kernel on TPU and GPU, the dequantise-
then-attend jnp path on CPU -- over a full cache of L tokens stored as bfloat16, or as symmetric
per-token int8 / int4 codes (quantize.py) with float32 scales. Reported: tokens/s, the bytes one
token's step must read (every input array: the cache, its scales, positions and segment ids, the
query), the GB/s that implies, and that as a fraction of this machine's memory bandwidth measured
in the same run (a large array summed: the read-only roof a decode step could reach); and each
dtype's tokens/s over bfloat16's at the same length (the ratio the smaller cache buys).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from tqdm import tqdm

from longctx_jax.bench.cost import time_call
from longctx_jax.bench.table import format_rows, write_bench
from longctx_jax.inference.quantize import quantize
from pallas_kernels.decode_attention import decode_attention

DTYPES = ("bfloat16", "int8", "int4")
LENGTHS = (1024, 4096, 16384, 32768, 65536)
BITS = dict(bfloat16=None, int8=8, int4=4)
BASELINE = "bfloat16"
# What backend="auto" runs, by jax.default_backend().
PATHS = dict(tpu="Pallas TPU kernel", gpu="Pallas GPU kernel", cpu="xla (jnp)")


def cache_inputs(length, dtype, *, batch, heads, kv_heads, head_dim, seed=0):
    """decode_attention's array arguments for one step over a full cache of `length` tokens:
    q [B, 1, N, H] bfloat16 at the last position; keys / values bfloat16 or packed codes with
    their per-token scales."""
    if dtype not in BITS:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, 1, heads, head_dim), jnp.bfloat16)
    shape = (batch, length, kv_heads, head_dim)
    k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys[1:])
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    inputs = dict(
        q=q,
        q_positions=positions[:, -1:],
        kv_positions=positions,
        q_segment_ids=jnp.zeros((batch, 1), jnp.int32),
        kv_segment_ids=jnp.zeros((batch, length), jnp.int32),
    )
    bits = BITS[dtype]
    if bits is None:
        return inputs | dict(keys=k, values=v)
    qk, qv = (quantize(x, bits, symmetric=True) for x in (k, v))
    return inputs | dict(keys=qk.codes, values=qv.codes, key_scale=qk.scale, value_scale=qv.scale)


def bytes_read(inputs) -> int:
    """Bytes of every array a step reads (the cache and its scales dominate)."""
    return sum(x.size * x.dtype.itemsize for x in inputs.values())


def memory_bandwidth(nbytes: int = 2**28, repeats: int = 5) -> float:
    """This machine's read bandwidth, bytes/s: the best time to sum a float32 array of `nbytes`."""
    x = jnp.ones((nbytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum).lower(x).compile()
    return nbytes / time_call(total, x, repeats=repeats)


def run_benchmark(
    lengths=LENGTHS,
    dtypes=DTYPES,
    *,
    batch=1,
    heads=32,
    kv_heads=8,
    head_dim=128,
    repeats=3,
    roof_bytes=2**28,
):
    """Times one decode step at every (length, dtype); returns {"setup", "rows"}."""
    bad = [d for d in dtypes if d not in BITS]
    if bad:
        raise ValueError(f"dtypes {bad}: expected a subset of {DTYPES}")
    roof = memory_bandwidth(roof_bytes)
    shape = dict(batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    rows = []
    for length, dtype in tqdm([(n, d) for n in lengths for d in dtypes], desc="bench decode"):
        x = cache_inputs(length, dtype, **shape)
        step = jax.jit(functools.partial(_step, bits=BITS[dtype], scale=head_dim**-0.5))
        seconds = time_call(step.lower(x).compile(), x, repeats=repeats)
        nbytes = bytes_read(x)
        rows.append(
            dict(
                dtype=dtype,
                length=length,
                seconds=seconds,
                tokens_per_second=batch / seconds,
                bytes_per_token=nbytes / batch,
                gb_per_second=nbytes / seconds / 1e9,
                fraction_of_roof=nbytes / seconds / roof,
            )
        )
    base = {r["length"]: r for r in rows if r["dtype"] == BASELINE}
    for r in rows:
        if r["length"] in base:
            r["vs_bfloat16"] = r["tokens_per_second"] / base[r["length"]]["tokens_per_second"]
    setup = dict(
        **shape,
        new_tokens=1,
        query_dtype="bfloat16",
        quantization="symmetric, per token (group = head_dim)",
        path=PATHS.get(jax.default_backend(), "xla (jnp)"),
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        cpu_count=os.cpu_count(),
        roof_gb_per_second=roof / 1e9,
        roof_bytes=roof_bytes,
    )
    return dict(setup=setup, rows=rows)


def _step(inputs, *, bits, scale):
    x = dict(inputs)
    return decode_attention(x.pop("q"), x.pop("keys"), x.pop("values"), **x, bits=bits, scale=scale)


def format_table(results) -> str:
    """Plain-text table, then the roof it is measured against."""

    def ratio(row):
        return "-" if "vs_bfloat16" not in row else f"{row['vs_bfloat16']:.2f}x"

    columns = [
        ("dtype", 8, lambda r: r["dtype"]),
        ("L", 6, lambda r: r["length"]),
        ("ms", 8, lambda r: f"{r['seconds'] * 1e3:.3f}"),
        ("tokens/s", 9, lambda r: f"{r['tokens_per_second']:.0f}"),
        ("MiB/token", 9, lambda r: f"{r['bytes_per_token'] / 2**20:.2f}"),
        ("GB/s", 7, lambda r: f"{r['gb_per_second']:.1f}"),
        ("of roof", 7, lambda r: f"{r['fraction_of_roof']:.2f}"),
        ("vs bf16", 7, ratio),
    ]
    s = results["setup"]
    return (
        format_rows(results["rows"], columns, key_columns=2)
        + f"\n{s['path']} on {s['device']}; B={s['batch']}, {s['heads']} heads / "
        + f"{s['kv_heads']} kv heads x {s['head_dim']}, 1 new token; roof (sum of "
        + f"{s['roof_bytes'] / 2**20:.0f} MiB): {s['roof_gb_per_second']:.1f} GB/s"
    )


def plot_decode_bench(results, path) -> None:
    """Two log-x panels: tokens/s per dtype, and achieved GB/s beside the measured roof."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tok, ax_bw) = plt.subplots(1, 2, figsize=(10, 4.0))
    for i, dtype in enumerate(dict.fromkeys(r["dtype"] for r in results["rows"])):
        line = [r for r in results["rows"] if r["dtype"] == dtype]
        lengths = [r["length"] for r in line]
        style = dict(marker="o", color=f"C{i}", label=dtype)
        ax_tok.plot(lengths, [r["tokens_per_second"] for r in line], **style)
        ax_bw.plot(lengths, [r["gb_per_second"] for r in line], **style)
    setup = results["setup"]
    roof = setup["roof_gb_per_second"]
    ax_bw.axhline(roof, color="k", linestyle=":")
    ax_bw.annotate(
        f"measured roof {roof:.1f} GB/s",
        (0.02, roof),
        xycoords=("axes fraction", "data"),
        xytext=(0, -12),
        textcoords="offset points",
        fontsize=8,
    )
    for ax, label in ((ax_tok, "tokens / s"), (ax_bw, "achieved GB/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("cache length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_tok.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"one decode step, B={setup['batch']}, {setup['heads']}/{setup['kv_heads']} heads x "
        f"{setup['head_dim']}: {setup['path']} on {setup['backend']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(results, workdir) -> Path:
    """Writes results.json (with provenance) and figure.png under workdir; returns the workdir."""
    return write_bench(results, workdir, plot_decode_bench)
