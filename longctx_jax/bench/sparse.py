"""`longctx bench sparse`: learned top-k sparse attention (indexer + selection + sparse attention)
against blockwise dense attention, per sequence length, forward and forward+backward.

Shapes follow DSA: MQA (one KV head shared by every query head, so one selection per token), a
small lightning indexer, k keys per query, causal. Index features are random inputs (their
projections are O(L) and left out). Every stage is timed on its own cumulative prefix in the
same run, so shares are differences: indexer = scoring alone (every score tile computed and
reduced; for block granularity the query blocks' anchors only, reduced to key-block maxima, as
the selection does), selection = (scoring + selection) - scoring, attention = total - (scoring +
selection). Block granularity attends with `block_sparse_attention` (one selection per block of
64 queries). Forward+backward differentiates the sparse attention (selection has no gradient;
the indexer's own loss is not included) against blockwise attention's forward+backward.
Memory is XLA's compiled temporaries of each whole computation.

Also measured: selection alone on a materialised [L, L] score matrix, `lax.top_k` against the
exact threshold selection and the native CPU selection (the "selection is the trap" comparison).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from tqdm import tqdm

from longctx_jax.attention import AttentionMask, attention
from longctx_jax.attention.sparse import (
    block_sparse_attention,
    select_from_features,
    select_topk,
    sparse_attention,
)
from longctx_jax.attention.sparse.indexer import score_tile
from longctx_jax.attention.sparse.select import key_widths
from longctx_jax.attention.sparse.stream import anchor_block_maxima
from longctx_jax.bench.cost import temp_bytes, time_call
from longctx_jax.bench.table import format_rows, mib, write_bench

VARIANTS = {
    "token_native": dict(granularity="token", method="native"),
    "token_threshold": dict(granularity="token", method="threshold"),
    "token_topk": dict(granularity="token", method="exact"),
    "block64": dict(granularity="block", method="exact", block_size=64),
}
MODES = ("fwd", "fwd+bwd")
SELECTION_METHODS = ("exact", "threshold", "native")  # exact = lax.top_k, the baseline
CAUSAL = AttentionMask(causal=True)


def bench_inputs(length, *, heads, head_dim, index_heads, index_dim, seed=0):
    """q [1, L, N, H], k, v [1, L, 1, H], d_out, index features q_idx, k_idx, w (float32)."""
    keys = jax.random.split(jax.random.key(seed), 7)
    normal = lambda key, shape: jax.random.normal(key, shape, jnp.float32)  # noqa: E731
    return dict(
        q=normal(keys[0], (1, length, heads, head_dim)),
        k=normal(keys[1], (1, length, 1, head_dim)),
        v=normal(keys[2], (1, length, 1, head_dim)),
        d_out=normal(keys[3], (1, length, heads, head_dim)),
        q_idx=normal(keys[4], (1, length, index_heads, index_dim)),
        k_idx=normal(keys[5], (1, length, index_dim)),
        w=normal(keys[6], (1, length, index_heads)) / (index_heads * index_dim) ** 0.5,
    )


def index_only(q_idx, k_idx, w, *, block_q: int = 32):
    """Every causal index score tile that `select_from_features` computes for token granularity
    (the same key prefixes per query block), reduced to its row max: scoring's cost alone."""
    b, t, j, i = q_idx.shape
    n = t // block_q
    q_blk = q_idx.reshape(b, n, block_q, j, i).swapaxes(0, 1)
    w_blk = w.reshape(b, n, block_q, j).swapaxes(0, 1)
    starts = jnp.arange(n) * block_q

    def one(args, width):
        start, q_b, w_b = args
        rows = start + jnp.arange(block_q)
        ok = jnp.arange(width)[None, :] <= rows[:, None]
        return jnp.where(ok, score_tile(q_b, k_idx[:, :width], w_b), -jnp.inf).max(-1)

    parts = [
        lax.map(lambda a, w=width: one(a, w), (starts[lo:hi], q_blk[lo:hi], w_blk[lo:hi]))
        for lo, hi, width in key_widths(CAUSAL, t, t, block_q)
    ]
    return jnp.concatenate(parts)


def stage_functions(variant: str, k: int):
    """{stage: fn(inputs) -> output} for the cumulative stages of one variant."""
    options = VARIANTS[variant]
    block_size = options.get("block_size")

    def select(x):
        return select_from_features(x["q_idx"], x["k_idx"], x["w"], k, mask=CAUSAL, **options)

    def attend(q, k, v, indices, valid):
        if block_size:
            return block_sparse_attention(
                q, k, v, indices, block_size=block_size, mask=CAUSAL, valid=valid
            )
        return sparse_attention(q, k, v, indices, mask=CAUSAL, valid=valid)

    def total(x):
        return attend(x["q"], x["k"], x["v"], *select(x))

    def total_bwd(x):
        selection = select(x)
        _, pullback = jax.vjp(lambda q, k, v: attend(q, k, v, *selection), x["q"], x["k"], x["v"])
        return pullback(x["d_out"])

    def index(x):
        if block_size:
            return anchor_block_maxima(
                x["q_idx"], x["k_idx"], x["w"], mask=CAUSAL, block_size=block_size
            )
        return index_only(x["q_idx"], x["k_idx"], x["w"])

    return {"index": index, "index+select": select, "fwd": total, "fwd+bwd": total_bwd}


def dense_functions():
    def fwd(x):
        return attention(x["q"], x["k"], x["v"], mask=CAUSAL, impl="blockwise")

    def fwd_bwd(x):
        attend = lambda q, k, v: attention(q, k, v, mask=CAUSAL, impl="blockwise")  # noqa: E731
        _, pullback = jax.vjp(attend, x["q"], x["k"], x["v"])
        return pullback(x["d_out"])

    return {"fwd": fwd, "fwd+bwd": fwd_bwd}


def timed(fn, inputs, repeats):
    """(best seconds, compiled temporaries in bytes) of fn(inputs)."""
    compiled = jax.jit(fn).lower(inputs).compile()
    return time_call(compiled, inputs, repeats=repeats), temp_bytes(compiled)


def run_benchmark(
    lengths,
    variants=tuple(VARIANTS),
    *,
    k=1024,
    heads=8,
    head_dim=64,
    index_heads=4,
    index_dim=32,
    repeats=2,
    selection_lengths=(16384,),
):
    """Measures every (length, variant, mode) and the selection-only comparison."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants {unknown}: expected names from {tuple(VARIANTS)}")
    rows, selection = [], []
    for length in tqdm(lengths, desc="bench sparse", unit="length"):
        x = bench_inputs(
            length, heads=heads, head_dim=head_dim, index_heads=index_heads, index_dim=index_dim
        )
        dense = {mode: timed(fn, x, repeats) for mode, fn in dense_functions().items()}
        for mode, (seconds, temps) in dense.items():
            rows.append(
                dict(variant="dense", mode=mode, length=length, seconds=seconds, temp_bytes=temps)
            )
        for variant in variants:
            stages = {
                name: timed(fn, x, repeats) for name, fn in stage_functions(variant, k).items()
            }
            index_s, select_s = stages["index"][0], stages["index+select"][0]
            for mode in MODES:
                seconds, temps = stages[mode]
                rows.append(
                    dict(
                        variant=variant,
                        mode=mode,
                        length=length,
                        seconds=seconds,
                        temp_bytes=temps,
                        index_seconds=index_s,
                        select_seconds=select_s - index_s,
                        attention_seconds=seconds - select_s,
                        vs_dense=seconds / dense[mode][0],
                    )
                )
        if length in selection_lengths:
            selection.append(selection_only(x, k, repeats))
    setup = dict(
        k=k,
        heads=heads,
        kv_heads=1,
        head_dim=head_dim,
        index_heads=index_heads,
        index_dim=index_dim,
        causal=True,
        dtype="float32",
        backend=jax.default_backend(),
        device=str(jax.devices()[0]),
        cpu_count=os.cpu_count(),
    )
    return dict(setup=setup, rows=rows, selection=selection)


def selection_only(x, k, repeats):
    """lax.top_k vs the threshold and native selections over the same materialised causal
    [L, L] index scores."""
    q_idx, k_idx, w = x["q_idx"], x["k_idx"], x["w"]
    length = q_idx.shape[1]
    scores = jax.jit(lambda: index_only_scores(q_idx, k_idx, w))()
    out = dict(length=length, k=k)
    for method in SELECTION_METHODS:
        compiled = jax.jit(lambda s, m=method: select_topk(s, k, method=m)).lower(scores).compile()
        out[f"{method}_seconds"] = time_call(compiled, scores, repeats=repeats)
        out[f"{method}_temp_bytes"] = temp_bytes(compiled)
    for method in SELECTION_METHODS[1:]:
        out[f"{method}_speedup"] = out["exact_seconds"] / out[f"{method}_seconds"]
    return out


def index_only_scores(q_idx, k_idx, w):
    """The whole causal score matrix [1, L, L] (only for the selection-only comparison)."""
    t = q_idx.shape[1]
    ok = jnp.tril(jnp.ones((t, t), bool))[None]
    return jnp.where(ok, score_tile(q_idx, k_idx, w), -jnp.inf)


def format_table(results) -> str:
    def share(key):
        """A column showing one stage's share of the row's time ("-" for dense rows)."""
        return lambda r: "-" if key not in r else f"{r[key] / r['seconds']:.0%}"

    columns = [
        ("variant", 15, lambda r: r["variant"]),
        ("mode", 8, lambda r: r["mode"]),
        ("L", 6, lambda r: r["length"]),
        ("time s", 8, lambda r: f"{r['seconds']:.2f}"),
        ("vs dense", 8, lambda r: f"{r['vs_dense']:.2f}" if "vs_dense" in r else "1.00"),
        ("index", 6, share("index_seconds")),
        ("select", 6, share("select_seconds")),
        ("attend", 6, share("attention_seconds")),
        ("temp MiB", 9, mib),
    ]
    lines = [format_rows(results["rows"], columns, key_columns=3)]
    for s in results["selection"]:
        lines.append(
            f"selection only, L={s['length']} k={s['k']}: lax.top_k {s['exact_seconds']:.2f} s, "
            + ", ".join(
                f"{m} {s[f'{m}_seconds']:.2f} s ({s[f'{m}_speedup']:.1f}x faster)"
                for m in SELECTION_METHODS[1:]
            )
        )
    return "\n".join(lines)


def write_results(results, workdir) -> Path:
    """Writes results.json and figure.png under workdir; returns the workdir."""
    from longctx_jax.viz.sparse_bench import plot_sparse_bench

    return write_bench(results, workdir, plot_sparse_bench)
