"""`longctx bench train`: tokens/s and train-step memory of a config's model, per attention impl.

One process, one device, the trainer's own step (`build_run`: forward, backward, AdamW, donation,
stage freezing) on synthetic batches of the configured batch size at each sequence length.
Memory is XLA's compiled temporaries for the step (excluding parameters and optimizer state,
which do not depend on the attention impl); speed is best-of-n steps, reported with the ratio
to the first impl, timed in the same run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from longctx_jax import sharding
from longctx_jax.bench.cost import temp_bytes, time_call
from longctx_jax.bench.table import format_rows, mib, speedup
from longctx_jax.run import build_run


def synthetic_batch(batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Random bytes, one document per row, every target weighted."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (batch_size, seq_len + 1), dtype=np.int32)
    return dict(
        tokens=jnp.asarray(tokens[:, :-1]),
        targets=jnp.asarray(tokens[:, 1:]),
        weights=jnp.ones((batch_size, seq_len), jnp.float32),
        segment_ids=jnp.ones((batch_size, seq_len), jnp.int32),
        positions=jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch_size, seq_len)),
    )


def compile_train_step(config, seq_len: int):
    """(compiled train step, run, state, batch) for `config` at seq_len on the config's mesh.

    The step is the trainer's own (`build_run`: same donation, same stage freezing), lowered on
    a sharded state and a batch laid out by the logical rules (so `length` on `sequence` is
    context parallel).
    """
    config = config.copy_and_resolve_references()
    config.data.seq_len = seq_len
    run = build_run(config)
    state = run.init_state()
    batch = jax.device_put(synthetic_batch(config.data.batch_size, seq_len), run.batch_sharding)
    with run.scope():
        return run.step.lower(state, batch).compile(), run, state, batch


def measure_step(config, impl: str, seq_len: int, *, repeats: int, budget: int) -> dict:
    """One row: temporaries of the compiled step, and tokens/s unless they exceed `budget`."""
    config = config.copy_and_resolve_references()
    config.model.attention.impl = impl
    for axis in sharding.MESH_AXES:
        config.mesh[axis] = 1
    compiled, run, state, batch = compile_train_step(config, seq_len)
    temps = temp_bytes(compiled)
    row = dict(impl=impl, seq_len=seq_len, temp_bytes=temps, seconds=None)
    if temps is not None and temps > budget:
        row["skipped"] = f"needs {temps / 2**30:.1f} GiB of temporaries > budget"
        return row
    carried = [state]  # the step donates its state: each call feeds the next one's output

    def step():
        carried[0], metrics = compiled(carried[0], batch)
        return metrics

    seconds = time_call(step, repeats=repeats)
    tokens = config.data.batch_size * seq_len
    row.update(seconds=seconds, tokens_per_second=tokens / seconds)
    return row


def run_train_benchmark(config, lengths, impls, *, repeats=3, budget=None) -> dict:
    from longctx_jax.bench.attention import default_memory_budget

    budget = default_memory_budget() if budget is None else budget
    rows = [
        measure_step(config, impl, n, repeats=repeats, budget=budget)
        for n, impl in tqdm([(n, i) for n in lengths for i in impls], desc="bench train")
    ]
    base = {r["seq_len"]: r["seconds"] for r in rows if r["impl"] == impls[0]}
    for r in rows:
        if r["seconds"] and base.get(r["seq_len"]):
            r["speedup_vs_baseline"] = base[r["seq_len"]] / r["seconds"]
    return dict(baseline=impls[0], batch_size=config.data.batch_size, rows=rows)


def format_train_table(results) -> str:
    """Plain-text table of the results."""
    columns = [
        ("impl", 10, lambda r: r["impl"]),
        ("seq_len", 7, lambda r: r["seq_len"]),
        ("step s", 8, lambda r: f"{r['seconds']:.3f}"),
        ("tokens/s", 9, lambda r: f"{r['tokens_per_second']:.0f}"),
        ("speedup", 8, speedup),
        ("temp MiB", 9, mib),
    ]
    return format_rows(results["rows"], columns, key_columns=2)
