"""`longctx` command line.

longctx train --config configs/quickstart.py --workdir runs/x [--config.KEY=VALUE ...]
longctx bench attention [--lengths=1024,2048] [--impls=xla,blockwise] [--workdir=...]
longctx bench attention --impls=xla,cudnn,pallas_gpu --dtype=bfloat16 --batch=0   (on a GPU)
longctx bench ring [--lengths=...] [--devices=1,2,4,8] [--config=configs/quickstart.py]
longctx bench sparse [--lengths=16384,32768] [--top_k=1024] [--variants=block64] [--workdir=...]
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (runs/<name>).")
_LENGTHS = flags.DEFINE_list(
    "lengths", ["1024", "2048", "4096", "8192", "16384", "32768"], "bench: sequence lengths."
)
_IMPLS = flags.DEFINE_list(
    "impls", ["xla", "blockwise"], "bench: implementations; the first is the speedup baseline."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "bench: timed repetitions (best is kept).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "bench: head dimension.")
_HEADS = flags.DEFINE_integer("heads", 8, "bench: number of heads.")
_BATCH = flags.DEFINE_integer("batch", 1, "bench: batch size; 0 = 32768 tokens per measurement.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "bench: input dtype.")
_DEVICES = flags.DEFINE_list(
    "devices", ["1", "2", "4", "8"], "bench ring: devices on the sequence axis."
)
_MEMORY_LENGTHS = flags.DEFINE_list(
    "memory_lengths", [], "bench ring: further lengths, compiled for memory only (not timed)."
)

_TOP_K = flags.DEFINE_integer("top_k", 1024, "bench sparse: keys each query attends to.")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["token_native", "token_threshold", "token_topk", "block64"],
    "bench sparse: selection variants.",
)

COMMANDS = ("train", "ablate", "bench attention", "bench train", "bench ring", "bench sparse")


def train() -> None:
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("train needs --config=configs/<name>.py and --workdir=<dir>")
    config = _CONFIG.value
    if config.distributed.enabled:
        import jax

        jax.distributed.initialize(
            coordinator_address=config.distributed.coordinator_address,
            num_processes=config.distributed.num_processes,
            process_id=config.distributed.process_id,
        )
    from longctx_jax.train.loop import train as run_training

    last = _report_failures("train", lambda: run_training(config, _WORKDIR.value))
    if last:
        print(f"step metrics: loss {last['loss']:.4f}, {last['tokens_per_second']:.0f} tokens/s")


def ablate() -> None:
    import importlib

    if _CONFIG.value is None:
        raise app.UsageError("ablate needs --config=configs/ablations/<name>.py[:size]")
    ablation = _CONFIG.value
    experiment = importlib.import_module(f"experiments.{ablation.experiment}")
    _report_failures(
        "ablate", lambda: experiment.run(ablation, _WORKDIR.value or f"runs/{ablation.name}")
    )


def _report_failures(command: str, work):
    """Runs `work()`: SIGTERM (checkpoint saved) exits 0, an expected failure exits 1 with one
    line, not a traceback."""
    from longctx_jax.train.checkpointing import CheckpointError
    from longctx_jax.train.loop import NonFiniteLossError, Preempted

    try:
        return work()
    except Preempted as stop:
        print(f"longctx {command}: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(0)
    except (NonFiniteLossError, CheckpointError, ValueError) as error:
        print(f"longctx {command}: {error}", file=sys.stderr)
        sys.exit(1)


def bench_attention() -> None:
    from longctx_jax.eval.attention_bench import format_table, run_benchmark, write_results

    results = run_benchmark(
        [int(n) for n in _LENGTHS.value],
        tuple(_IMPLS.value),
        heads=_HEADS.value,
        head_dim=_HEAD_DIM.value,
        batch=_BATCH.value,
        dtype=_DTYPE.value,
        repeats=_REPEATS.value,
    )
    workdir = write_results(results, _WORKDIR.value or "runs/bench_attention")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


def bench_train() -> None:
    import json
    from pathlib import Path

    from longctx_jax.eval.train_bench import format_train_table, run_train_benchmark

    if _CONFIG.value is None:
        raise app.UsageError("bench train needs --config=configs/<name>.py")
    lengths = [int(n) for n in _LENGTHS.value]
    results = run_train_benchmark(
        _CONFIG.value, lengths, tuple(_IMPLS.value), repeats=_REPEATS.value
    )
    workdir = Path(_WORKDIR.value or "runs/bench_train")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(format_train_table(results))
    print(f"wrote {workdir / 'results.json'}")


def bench_ring() -> None:
    import os

    # On a CPU host the devices are simulated; the flag must be set before JAX starts a backend.
    devices = [int(n) for n in _DEVICES.value]
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(devices)}"
    )
    from longctx_jax.eval.ring_bench import (
        format_ring_table,
        run_ring_benchmark,
        write_ring_results,
    )

    results = run_ring_benchmark(
        [int(n) for n in _LENGTHS.value],
        devices,
        memory_lengths=[int(n) for n in _MEMORY_LENGTHS.value],
        config=_CONFIG.value,
        train_devices=max(devices),
        heads=_HEADS.value,
        head_dim=_HEAD_DIM.value,
        repeats=_REPEATS.value,
    )
    workdir = write_ring_results(results, _WORKDIR.value or "runs/bench_ring")
    print(format_ring_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


def bench_sparse() -> None:
    from longctx_jax.eval.sparse_bench import format_table, run_benchmark, write_results

    lengths = [int(n) for n in _LENGTHS.value] if _LENGTHS.present else [16384, 32768]
    results = run_benchmark(
        lengths,
        tuple(_VARIANTS.value),
        k=_TOP_K.value,
        heads=_HEADS.value,
        head_dim=_HEAD_DIM.value,
        repeats=_REPEATS.value,
    )
    workdir = write_results(results, _WORKDIR.value or "runs/bench_sparse")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)
    command = " ".join(argv[1:])
    if command == "train":
        train()
    elif command == "ablate":
        ablate()
    elif command == "bench attention":
        bench_attention()
    elif command == "bench train":
        bench_train()
    elif command == "bench ring":
        bench_ring()
    elif command == "bench sparse":
        bench_sparse()
    else:
        raise app.UsageError(f"unknown command {command!r}; expected one of {COMMANDS}")


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
