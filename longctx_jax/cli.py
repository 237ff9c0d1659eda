"""`longctx`: the command line. `longctx --help` lists the commands, `longctx COMMAND --help` one
command's flags. Commands live in the `COMMANDS` table (name -> function, one-line summary,
usage, flags): adding a command is one entry there.

Errors a user can fix (a bad flag, an unknown or invalid config field, a refused ablation
variant) print one line, `longctx COMMAND: what is wrong`, and exit 1; nothing is written first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import sys
import textwrap
from collections.abc import Callable
from glob import glob
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "config file: configs/<name>.py (a training config) or configs/ablations/<name>.py[:size]; "
    "then --config.KEY=VALUE overrides its fields",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (runs/<name>)")
_STEP = flags.DEFINE_integer("step", None, "the checkpoint step (default: the newest)")
_OVERRIDE = flags.DEFINE_multi_string(
    "override",
    [],
    "FIELD=VALUE, repeatable: set a training-config field in the baseline and every variant, "
    "e.g. --override=train.steps=5 --override=data.batch_size=2",
)
_OVERRIDE_DECLARED = flags.DEFINE_boolean(
    "override_declared",
    False,
    "let --override also set fields that variants declare in their `changes` (their values are "
    "replaced, so those variants no longer differ there: for smoke runs only)",
)
_DRY_RUN = flags.DEFINE_boolean(
    "dry_run",
    False,
    "check the ablation (overrides, configs, variants, runner) and print its plan; train nothing",
)
_LENGTHS = flags.DEFINE_list(
    "lengths", ["1024", "2048", "4096", "8192", "16384", "32768"], "sequence lengths"
)
_IMPLS = flags.DEFINE_list(
    "impls",
    ["xla", "blockwise"],
    "attention implementations; the first is the speedup baseline",
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repetitions (the best is kept)")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "head dimension")
_HEADS = flags.DEFINE_integer("heads", 8, "number of heads")
_BATCH = flags.DEFINE_integer("batch", 1, "batch size; 0 = 32768 tokens per measurement")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "input dtype")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4", "8"], "devices on the sequence axis")
_MEMORY_LENGTHS = flags.DEFINE_list(
    "memory_lengths", [], "further lengths, compiled for memory only (not timed)"
)
_TOP_K = flags.DEFINE_integer("top_k", 1024, "keys each query attends to")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["token_native", "token_threshold", "token_topk", "block64"],
    "selection variants",
)
_CHUNK_SIZES = flags.DEFINE_list("chunk_sizes", ["64"], "linear mixer chunk sizes")
_DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "int8", "int4"], "KV cache dtypes")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 8, "number of key/value heads")
_PROMPT = flags.DEFINE_string("prompt", None, "a prompt; its completion is printed")
_PROMPTS_FILE = flags.DEFINE_string(
    "prompts_file", None, 'a JSONL file of requests, one {"id": ..., "prompt": "..."} a line'
)
_OUT = flags.DEFINE_string(
    "out", None, 'the JSONL file written, one {"id": ..., "completion": "..."} per request'
)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None, "tokens generated per request")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, "sampling temperature; 0 = greedy (default: greedy, or 1 with top_k/top_p)"
)
_TOP_P = flags.DEFINE_float("top_p", None, "nucleus sampling: keep the most likely tokens up to p")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "requests generated together")
_STOP_TOKEN = flags.DEFINE_integer(
    "stop_token", None, "end a completion at this token (a byte: 10 = newline); not included"
)
_WAL = flags.DEFINE_string(
    "wal", None, "a write-ahead log directory: rerunning after SIGTERM or kill -9 resumes exactly"
)
_WAL_FSYNC_EVERY = flags.DEFINE_integer(
    "wal_fsync_every", 1, "fsync the WAL every N decode steps; 0 = only at preemption and exit"
)
_CACHE_POLICY = flags.DEFINE_string(
    "cache_policy", "full", "KV cache policy: full | window | sinks | h2o | tova | knorm | snapkv"
)
_CACHE_CAPACITY = flags.DEFINE_integer(
    "cache_capacity", None, "KV cache slots per request (default: prompt + new tokens)"
)
_CACHE_BITS = flags.DEFINE_integer(
    "cache_bits", None, "store the KV cache as 8-, 4- or 2-bit codes (default: full precision)"
)
_CACHE_SINKS = flags.DEFINE_integer("cache_sinks", 4, "first tokens kept by policy sinks")
_CACHE_RECENT = flags.DEFINE_integer(
    "cache_recent", 0, "latest tokens always kept by policies h2o and snapkv"
)

# The flags defined above: a command refuses those of them that are not in its table entry.
OWN_FLAGS = (
    "config",
    "workdir",
    "step",
    "override",
    "override_declared",
    "dry_run",
    "lengths",
    "impls",
    "repeats",
    "head_dim",
    "heads",
    "batch",
    "dtype",
    "devices",
    "memory_lengths",
    "top_k",
    "variants",
    "chunk_sizes",
    "dtypes",
    "kv_heads",
    "prompt",
    "prompts_file",
    "out",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "batch_size",
    "cache_policy",
    "cache_capacity",
    "cache_bits",
    "cache_sinks",
    "cache_recent",
)

# The training-config fields most runs change (all of them: base_config() in
# longctx_jax/config.py). (fields, what they are)
MAIN_CONFIG_FIELDS = (
    (("train.steps",), "steps to train to (a rerun with the same --workdir resumes)"),
    (("train.schedule_steps",), "learning-rate schedule length (default: train.steps)"),
    (("train.learning_rate", "train.warmup_steps"), "AdamW peak rate, linear warm-up, cosine"),
    (("train.checkpoint_every", "train.log_every"), "steps between checkpoints / metric lines"),
    (("train.seed",), "initialisation seed"),
    (("train.init_from",), "a run directory whose parameters start this run (fine-tuning)"),
    (("data.seq_len", "data.batch_size"), "tokens per row, rows per step (global)"),
    (("data.source", "data.folder_glob"), "stdlib (the Python standard library) | folder"),
    (
        ("model.num_layers", "model.embed_dim", "model.num_heads", "model.num_kv_heads"),
        "model size (also model.head_dim, model.mlp_dim)",
    ),
    (
        ("model.attention.impl",),
        "auto | reference | blockwise | xla | cudnn | pallas_tpu | pallas_gpu",
    ),
    (
        ("model.attention.kind",),
        "dense | sparse_topk (learned top-k: model.attention.sparse.*) | linear "
        "(gated linear attention: model.attention.linear.*)",
    ),
    (("model.position.kind",), "rope | alibi | nope"),
    (
        ("model.position.rope_kind",),
        "default | linear | ntk | dynamic | yarn | llama3 | longrope",
    ),
    (("mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.sequence"), "devices per mesh axis"),
    (("evals",), "evaluators: evals.<name> = ConfigDict(kind=..., every=..., ...)"),
)


@dataclasses.dataclass(frozen=True)
class Command:
    """One `longctx` command: `run()` does the work after the flags are parsed."""

    name: str
    run: Callable[[], None]
    summary: str
    usage: str
    flags: tuple[str, ...]
    details: str = ""
    flag_help: dict = dataclasses.field(default_factory=dict)  # per-command help of a flag
    config_fields: bool = False  # show MAIN_CONFIG_FIELDS in its help


# --- Environment --------------------------------------------------------------------------------


def _quiet_libtpu(environ=os.environ) -> None:
    """On a host without TPU chips, keep JAX from starting the libtpu that the [dev] extra installs
    (for ahead-of-time TPU compile tests): it prints "unexpected worker hostname" errors at every
    start. Must run before JAX is imported; a JAX_PLATFORMS the user set is kept."""
    if "JAX_PLATFORMS" in environ or "JAX_FORCE_TPU_INIT" in environ or _has_tpu_chips():
        return
    if importlib.util.find_spec("libtpu") is None:
        return  # nothing to quiet
    if os.path.exists("/dev/kfd"):
        return  # an AMD GPU: let JAX find its platform itself
    platforms = ["cpu"]
    if any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0")) and _cuda_plugin():
        platforms.insert(0, "cuda")
    environ["JAX_PLATFORMS"] = ",".join(platforms)


def _has_tpu_chips() -> bool:
    """A Google (vendor 0x1ae0) PCI device, as JAX's own TPU detection looks for."""
    for vendor in glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == "0x1ae0":
                return True
        except OSError:
            continue
    return False


def _cuda_plugin() -> bool:
    try:
        return any(
            importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None for v in (12, 13)
        )
    except ModuleNotFoundError:
        return False


# --- Commands -----------------------------------------------------------------------------------


def train_command() -> None:
    config = _required_config("train", "configs/<name>.py")
    workdir = _required(_WORKDIR, "train")
    from longctx_jax.config import check_fields, validate_config, validate_distributed_config

    _one_line("train", lambda: check_fields(config))
    _one_line("train", lambda: validate_distributed_config(config.distributed))
    if config.distributed.enabled:
        import jax

        # Before anything starts a JAX backend (validation does: RoPE frequencies are arrays).
        if config.distributed.coordinator_address:
            jax.distributed.initialize(
                coordinator_address=config.distributed.coordinator_address,
                num_processes=config.distributed.num_processes,
                process_id=config.distributed.process_id,
            )
        else:
            jax.distributed.initialize()  # detected: TPU pods, SLURM, ...
    _one_line("train", lambda: validate_config(config))
    from longctx_jax.train.loop import train as run_training

    last = _report_failures("train", lambda: run_training(config, workdir))
    if last:
        print(f"step metrics: loss {last['loss']:.4f}, {last['tokens_per_second']:.0f} tokens/s")


def ablate_command() -> None:
    from longctx_jax import ablation as ablations

    ablation = _required_config("ablate", "configs/ablations/<name>.py[:size]")
    config_file = FLAGS["config"].config_filename.split(":", 1)[0]
    overrides = _one_line("ablate", lambda: ablations.parse_overrides(_OVERRIDE.value))

    def prepare():
        shrunk = ablations.apply_overrides(
            ablation, overrides, override_declared=_OVERRIDE_DECLARED.value
        )
        try:
            variants = ablations.validate_ablation(shrunk)
        except ValueError as error:
            if any(re.match(r"-{1,2}config\.baseline\.", arg) for arg in sys.argv):
                raise ValueError(
                    f"{error} (--config.baseline.* changes the baseline only; "
                    "--override=FIELD=VALUE changes the baseline and every variant)"
                ) from None
            raise
        return shrunk, variants, ablations.runner_path(shrunk, config_file)

    ablation, variants, runner_file = _one_line("ablate", prepare)
    runner = _one_line("ablate", lambda: ablations.load_runner(runner_file))
    workdir = _WORKDIR.value or _default_ablation_workdir(ablation.name, overrides)
    if overrides and not _WORKDIR.value:
        print(f"longctx ablate: with --override the default workdir is {workdir}")
    if _DRY_RUN.value:
        _print_plan(ablation, variants, runner_file, workdir, overrides)
        return
    _report_failures("ablate", lambda: runner.run(ablation, workdir))


def _default_ablation_workdir(name: str, overrides: dict) -> str:
    """runs/<name>, or for overridden runs runs/<name>-override-<hash>: an overridden (smoke) run
    must never resume, or be resumed by, the real one."""
    if not overrides:
        return f"runs/{name}"
    text = repr((sorted(overrides.items()), _OVERRIDE_DECLARED.value))
    return f"runs/{name}-override-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _print_plan(ablation, variants: dict, runner_file, workdir: str, overrides: dict) -> None:
    from longctx_jax.ablation import start_order

    print(f"ablation {ablation.name}: {len(variants)} variants, checked")
    print(f"  runner   {Path(runner_file).resolve()}")
    print(f"  workdir  {workdir}")
    if overrides:
        print(
            "  overrides (baseline and every variant): "
            + ", ".join(f"{k}={v}" for k, v in overrides.items())
        )
    width = max(len(name) for name in variants)
    for name in start_order(variants):
        config, changes = variants[name]
        start = config.train.init_from
        text = ", ".join(f"{k}={b!r}" for k, (_, b) in changes.items()) or "the baseline"
        origin = f"from {start}: " if start.startswith("@") else ""
        print(f"  {name:<{width}}  {origin}{text}")


# --config.evals.NAME.FIELD=VALUE arguments of `longctx eval`, taken out of argv before absl
# parses it (the run's config comes from RUN/config.json, not from a --config file).
_EVAL_OVERRIDES: list[str] = []


def eval_command() -> None:
    workdir = _required(_WORKDIR, "eval")
    from longctx_jax.eval.checkpoint_eval import evaluate_checkpoint, format_eval_table
    from longctx_jax.eval.registry import apply_overrides
    from longctx_jax.run import read_run_config

    config = _one_line("eval", lambda: read_run_config(workdir))
    evals = _one_line("eval", lambda: apply_overrides(config.get("evals", {}), _EVAL_OVERRIDES))
    step, results = _report_failures(
        "eval", lambda: evaluate_checkpoint(workdir, _STEP.value, evals=evals)
    )
    print(f"{workdir} step {step}")
    print(format_eval_table(results))
    print(f"wrote {Path(workdir) / 'eval' / f'{step}.json'}")


def generate_command() -> None:
    workdir = _required(_WORKDIR, "generate")
    max_new_tokens = _required(_MAX_NEW_TOKENS, "generate")
    if (_PROMPT.value is None) == (_PROMPTS_FILE.value is None):
        raise app.UsageError("needs one of --prompt=TEXT or --prompts_file=IN.jsonl")
    if _PROMPTS_FILE.value is not None and _OUT.value is None:
        raise app.UsageError("--prompts_file needs --out=OUT.jsonl")
    if _PROMPT.value is not None and _OUT.value is not None:
        raise app.UsageError("--out goes with --prompts_file (--prompt prints its completion)")
    if _WAL.value is not None and _PROMPTS_FILE.value is None:
        raise app.UsageError("--wal goes with --prompts_file")
    from longctx_jax.train import preemption

    # Without a WAL there is nothing to save: SIGTERM / Ctrl-C stop at once (OUT appears only
    # when complete). With one, the engine saves the running batch and exits 0.
    stopped = preemption.requested()
    if _WAL.value is None:
        preemption.uninstall()
    if stopped:
        _exit("longctx generate", f"stopped by {stopped}; nothing written")
    from longctx_jax.inference import requests
    from longctx_jax.inference.spec import CacheSpec

    top_k = _TOP_K.value if _TOP_K.present else None
    sampling = _one_line(
        "generate", lambda: requests.sampling_from(_TEMPERATURE.value, top_k, _TOP_P.value)
    )
    cache = CacheSpec(
        capacity=_CACHE_CAPACITY.value,
        policy=_CACHE_POLICY.value,
        sinks=_CACHE_SINKS.value,
        recent=_CACHE_RECENT.value,
        bits=_CACHE_BITS.value,
    )
    _one_line("generate", cache.validate)
    options = dict(
        max_new_tokens=max_new_tokens,
        step=_STEP.value,
        sampling=sampling,
        cache=cache,
        seed=_SEED.value,
        stop_token=_STOP_TOKEN.value,
    )
    if _PROMPT.value is not None:
        print(
            _one_line("generate", lambda: requests.generate_text(workdir, _PROMPT.value, **options))
        )
        return
    try:
        count = _one_line(
            "generate",
            lambda: requests.generate_file(
                workdir,
                _PROMPTS_FILE.value,
                _OUT.value,
                batch_size=_BATCH_SIZE.value,
                wal=_WAL.value,
                wal_fsync_every=_WAL_FSYNC_EVERY.value or None,
                should_stop=preemption.requested,
                progress=True,
                **options,
            ),
        )
    except requests.Preempted as stop:
        print(f"longctx generate: {stop}", file=sys.stderr)
        sys.exit(0)
    print(f"wrote {_OUT.value}: {count} completions of up to {max_new_tokens} tokens")


def bench_attention() -> None:
    from longctx_jax.bench.attention import format_table, run_benchmark, write_results

    results = run_benchmark(
        _ints(_LENGTHS),
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
    from longctx_jax.bench.train import format_train_table, run_train_benchmark
    from longctx_jax.provenance import write_results

    config = _required_config("bench train", "configs/<name>.py")
    _one_line("bench train", lambda: _validate(config))
    results = _report_failures(
        "bench train",
        lambda: run_train_benchmark(
            config, _ints(_LENGTHS), tuple(_IMPLS.value), repeats=_REPEATS.value
        ),
    )
    workdir = Path(_WORKDIR.value or "runs/bench_train")
    write_results(workdir / "results.json", results)
    print(format_train_table(results))
    print(f"wrote {workdir / 'results.json'}")


def bench_ring() -> None:
    # On a CPU host the devices are simulated; the flag must be set before JAX starts a backend.
    devices = _ints(_DEVICES)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(devices)}"
    )
    from longctx_jax.bench.ring import (
        format_ring_table,
        run_ring_benchmark,
        write_ring_results,
    )

    results = run_ring_benchmark(
        _ints(_LENGTHS),
        devices,
        memory_lengths=_ints(_MEMORY_LENGTHS),
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
    from longctx_jax.bench.sparse import format_table, run_benchmark, write_results

    lengths = _ints(_LENGTHS) if _LENGTHS.present else [16384, 32768]
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


def bench_linear() -> None:
    from longctx_jax.bench.linear import format_table, run_benchmark, write_results

    lengths = _ints(_LENGTHS) if _LENGTHS.present else [4096, 8192, 16384, 32768]
    results = run_benchmark(
        lengths,
        tuple(_ints(_CHUNK_SIZES)),
        heads=_HEADS.value if _HEADS.present else 4,
        head_dim=_HEAD_DIM.value,
        repeats=_REPEATS.value,
    )
    workdir = write_results(results, _WORKDIR.value or "runs/bench_linear")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


def bench_decode() -> None:
    from longctx_jax.bench.decode import (
        DTYPES,
        LENGTHS,
        format_table,
        run_benchmark,
        write_results,
    )

    lengths = _ints(_LENGTHS) if _LENGTHS.present else list(LENGTHS)
    dtypes = tuple(_DTYPES.value) if _DTYPES.present else DTYPES
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise app.UsageError(f"--dtypes={','.join(dtypes)}: expected some of {','.join(DTYPES)}")
    results = _one_line(
        "bench decode",
        lambda: run_benchmark(
            lengths,
            dtypes,
            batch=_BATCH.value,
            heads=_HEADS.value if _HEADS.present else 32,
            kv_heads=_KV_HEADS.value,
            head_dim=_HEAD_DIM.value if _HEAD_DIM.present else 128,
            repeats=_REPEATS.value,
        ),
    )
    workdir = write_results(results, _WORKDIR.value or "runs/bench_decode")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


COMMANDS = {
    command.name: command
    for command in (
        Command(
            "train",
            train_command,
            "train a model; rerunning with the same --workdir resumes",
            "longctx train --config configs/<name>.py --workdir DIR [--config.KEY=VALUE ...]",
            ("config", "workdir"),
            details=(
                "Writes DIR/metrics.jsonl (one line per logged step), config.json, TensorBoard\n"
                "events and checkpoints. The config is validated before anything is written.\n"
                "SIGTERM saves a checkpoint and exits 0; the same command resumes to train.steps."
            ),
            flag_help={
                "config": "training config file (configs/*.py); --config.KEY=VALUE overrides",
                "workdir": "the run directory (created; resumed if it has checkpoints)",
            },
            config_fields=True,
        ),
        Command(
            "ablate",
            ablate_command,
            "train an ablation's variants, then evaluate and plot them with its runner",
            "longctx ablate --config configs/ablations/<name>.py[:size] [--workdir DIR]\n"
            "               [--override FIELD=VALUE ...] [--override_declared] [--dry_run]",
            ("config", "workdir", "override", "override_declared", "dry_run"),
            details=(
                "Each variant may differ from the baseline only in the fields it declares.\n"
                "--override=FIELD=VALUE shrinks the whole ablation (e.g. for a smoke run):\n"
                "it sets FIELD in the baseline and every variant before the variants are\n"
                "checked. A FIELD that some variant declares is refused (the override would\n"
                "erase the difference it studies) unless --override_declared. With overrides\n"
                "the default workdir is runs/<name>-override-<hash>, never runs/<name>.\n"
                "Example: longctx ablate --config configs/ablations/sparse_attention.py:demo \\\n"
                "           --override=train.steps=2 --override_declared --dry_run"
            ),
            flag_help={
                "config": "ablation config file (configs/ablations/*.py, :demo or :full)",
                "workdir": "output folder (default: runs/<ablation name>)",
            },
            config_fields=True,
        ),
        Command(
            "eval",
            eval_command,
            "evaluate a run's checkpoint with its config.evals; writes RUN/eval/<step>.json",
            "longctx eval --workdir RUN [--step N] [--config.evals.NAME.FIELD=VALUE ...]",
            ("workdir", "step", "config"),
            flag_help={
                "workdir": "the run directory to evaluate",
                "config": "--config.evals.NAME.FIELD=VALUE changes the run's evaluators",
            },
        ),
        Command(
            "generate",
            generate_command,
            "complete a prompt, or a JSONL file of prompts, with a run's checkpoint",
            "longctx generate --workdir RUN (--prompt TEXT | --prompts_file IN.jsonl --out "
            "OUT.jsonl)\n"
            "                 --max_new_tokens N [--temperature T --top_k K --top_p P --seed S]\n"
            "                 [--cache_policy P --cache_capacity C --cache_bits B]\n"
            "                 [--stop_token T] [--wal DIR --wal_fsync_every N]",
            (
                "workdir",
                "step",
                "prompt",
                "prompts_file",
                "out",
                "max_new_tokens",
                "stop_token",
                "wal",
                "wal_fsync_every",
                "temperature",
                "top_k",
                "top_p",
                "seed",
                "batch_size",
                "cache_policy",
                "cache_capacity",
                "cache_bits",
                "cache_sinks",
                "cache_recent",
            ),
            details=(
                "Text is byte-level (the run's vocabulary). Greedy unless --temperature,\n"
                "--top_k or --top_p is given. A request's sampled tokens depend on --seed and\n"
                "its line in IN.jsonl only, not on --batch_size or its neighbours. OUT.jsonl\n"
                "keeps the input's order and is written only once every request is done.\n"
                "With --wal DIR every token is logged before the next is decoded; SIGTERM\n"
                "saves the running batch's KV caches and exits 0, and rerunning the same\n"
                "command (after SIGTERM or kill -9) writes exactly the uninterrupted output\n"
                "(longctx_jax/inference/engine.py, wal.py).\n"
                "Cache policies and storage: longctx_jax/inference/spec.py."
            ),
            flag_help={
                "workdir": "the run directory whose checkpoint generates",
                "top_k": "sample from the k most likely tokens only (default: all)",
            },
        ),
        Command(
            "bench attention",
            bench_attention,
            "attention forward/backward time and memory per implementation and length",
            "longctx bench attention [--lengths=...] [--impls=xla,blockwise] [--workdir=DIR]",
            ("lengths", "impls", "repeats", "heads", "head_dim", "batch", "dtype", "workdir"),
            details="On a GPU: --impls=xla,cudnn,pallas_gpu --dtype=bfloat16 --batch=0",
            flag_help={"workdir": "output folder (default: runs/bench_attention)"},
        ),
        Command(
            "bench train",
            bench_train,
            "train-step time and memory per sequence length and attention implementation",
            "longctx bench train --config configs/<name>.py [--lengths=...] [--impls=...]",
            ("config", "lengths", "impls", "repeats", "workdir"),
            flag_help={
                "config": "training config file (configs/*.py); --config.KEY=VALUE overrides",
                "workdir": "output folder (default: runs/bench_train)",
            },
        ),
        Command(
            "bench ring",
            bench_ring,
            "context-parallel attention over 1..N devices (simulated on a CPU)",
            "longctx bench ring [--lengths=...] [--devices=1,2,4,8] [--config=configs/<name>.py]",
            (
                "lengths",
                "devices",
                "memory_lengths",
                "config",
                "heads",
                "head_dim",
                "repeats",
                "workdir",
            ),
            flag_help={
                "config": "a training config whose train step is also measured (optional)",
                "workdir": "output folder (default: runs/bench_ring)",
            },
        ),
        Command(
            "bench sparse",
            bench_sparse,
            "top-k sparse attention against dense, per selection variant",
            "longctx bench sparse [--lengths=16384,32768] [--top_k=1024] [--variants=...]",
            ("lengths", "top_k", "variants", "heads", "head_dim", "repeats", "workdir"),
            flag_help={
                "lengths": "sequence lengths (default here: 16384,32768)",
                "workdir": "output folder (default: runs/bench_sparse)",
            },
        ),
        Command(
            "bench linear",
            bench_linear,
            "linear mixer (gated linear attention) against blockwise attention, per length",
            "longctx bench linear [--lengths=4096,8192,16384,32768] [--chunk_sizes=64]",
            ("lengths", "chunk_sizes", "heads", "head_dim", "repeats", "workdir"),
            flag_help={
                "lengths": "sequence lengths (default here: 4096,8192,16384,32768)",
                "heads": "number of heads (default here: 4)",
                "workdir": "output folder (default: runs/bench_linear)",
            },
        ),
        Command(
            "bench decode",
            bench_decode,
            "one decode step over a KV cache stored as bfloat16, int8 or int4, per length",
            "longctx bench decode [--lengths=1024,...,65536] [--dtypes=bfloat16,int8,int4]",
            ("lengths", "dtypes", "batch", "heads", "kv_heads", "head_dim", "repeats", "workdir"),
            flag_help={
                "lengths": "KV cache lengths (default here: 1024,4096,16384,32768,65536)",
                "batch": "sequences decoded per step",
                "heads": "number of query heads (default here: 32)",
                "head_dim": "head dimension (default here: 128)",
                "workdir": "output folder (default: runs/bench_decode)",
            },
        ),
    )
}


# --- Help ---------------------------------------------------------------------------------------


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("longctx-jax")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main_help() -> str:
    width = max(len(name) for name in COMMANDS) + 2
    lines = [
        "longctx: long-context language-model research in JAX",
        "",
        "usage: longctx COMMAND [flags]",
        "       longctx COMMAND --help     that command's flags",
        "       longctx --version",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{c.summary}" for name, c in COMMANDS.items()]
    lines += ["", "usage of each command:"]
    for command in COMMANDS.values():
        lines += ["  " + line for line in command.usage.splitlines()]
    lines += ["", *_config_fields_help()]
    return "\n".join(lines)


def command_help(command: Command) -> str:
    lines = [f"longctx {command.name}: {command.summary}", "", "usage: " + command.usage]
    if command.details:
        lines += ["", *command.details.splitlines()]
    lines += ["", "flags:"]
    for name in command.flags:
        flag = FLAGS[name]
        text = " ".join(command.flag_help.get(name, flag.help).split())
        text = text.split("; repeat this option", 1)[0]  # absl's note on multi flags
        if isinstance(flag.default, list):
            default = ",".join(flag.default)
        elif flag.default is None or name == "config":
            default = ""
        else:
            default = str(flag.default).lower() if flag.boolean else str(flag.default)
        if default and "default" not in text:
            text += f" (default: {default})"
        lines += textwrap.wrap(
            text, width=100, initial_indent=f"  --{name:<19} ", subsequent_indent=" " * 24
        )
    if command.config_fields:
        lines += ["", *_config_fields_help()]
    return "\n".join(lines)


def _config_fields_help() -> list[str]:
    lines = [
        "main config fields (--config.KEY=VALUE; all of them: base_config() in "
        "longctx_jax/config.py):"
    ]
    for fields, text in MAIN_CONFIG_FIELDS:
        section = fields[0].rpartition(".")[0]
        if len(fields) > 1 and all(f.rpartition(".")[0] == section for f in fields):
            name = f"{section}.{{{','.join(f.rpartition('.')[2] for f in fields)}}}"
        else:
            name = ", ".join(fields)
        lines.append(f"  {name:<34} {text}" if len(name) < 35 else f"  {name}\n  {'':<34} {text}")
    return lines


def _find_command(args: list[str]) -> tuple[Command | None, list[str]]:
    """The command named by the words (non-flag arguments) of a raw command line, and the words.
    A flag given as `--name value` takes its value with it."""
    words, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--":
            break
        elif arg.startswith("-"):
            name = arg.lstrip("-").split("=", 1)[0]
            takes_value = name in FLAGS and not FLAGS[name].boolean or name.startswith("config.")
            skip = "=" not in arg and takes_value
        else:
            words.append(arg)
    for n in (2, 1):
        if " ".join(words[:n]) in COMMANDS:
            return COMMANDS[" ".join(words[:n])], words
    return None, words


# --- Flags, errors, dispatch --------------------------------------------------------------------


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one line instead of absl's and ml_collections' tracebacks for
    an unknown flag, an unknown config field or a bad value."""
    command = _find_command(argv[1:])[0]
    prefix = f"longctx {command.name}" if command else "longctx"
    try:
        return FLAGS(argv)
    except flags.UnrecognizedFlagError as error:
        from longctx_jax.checks import closest

        close = closest(error.flagname, command.flags if command else OWN_FLAGS)
        hint = f"did you mean --{close}?" if close else "see --help"
        _exit(prefix, f"--{error.flagname}: unknown flag; {hint}")
    except flags.Error as error:
        message = str(error)
        if "Error whilst parsing config file" in message:
            # The config file's get_config raised: its last line is the error.
            last = message.strip().splitlines()[-1].strip()
            message = "--config: " + re.sub(r"^\w+(Error|Exception): ", "", last)
        _exit(prefix, " ".join(message.split()))
    except (AttributeError, KeyError):
        unknown = _unknown_override(argv)
        if unknown is None:
            raise
        _exit(prefix, unknown)
    except OSError as error:
        _exit(prefix, f"--config: cannot load the config file ({' '.join(str(error).split())})")


def _unknown_override(argv: list[str]) -> str | None:
    """For a failed parse: "--config.train.stpes: unknown config field; did you mean
    train.steps?" for the first --config.KEY whose KEY the config file lacks."""
    from longctx_jax.checks import unknown_field
    from longctx_jax.config import field_names, suggest_field

    path = None
    for i, arg in enumerate(argv):
        if re.match(r"^-{1,2}config=", arg):
            path = arg.split("=", 1)[1]
        elif re.match(r"^-{1,2}config$", arg) and i + 1 < len(argv):
            path = argv[i + 1]
    if path is None:
        return None
    config = FLAGS["config"].parser.parse(path)  # the config file, loaded again
    names = set(field_names(config, free_form=True))  # the file's own evaluators included
    for arg in argv:
        match = re.match(r"^-{1,2}(?:no)?config\.([^=]+)", arg)
        if match and match.group(1) not in names:
            key = match.group(1)
            return str(unknown_field(f"--config.{key}", suggest_field(key, names)))
    return None


def _exit(prefix: str, message: str):
    print(f"{prefix}: {message}", file=sys.stderr)
    sys.exit(1)


def _one_line(command: str, work):
    """Runs `work()`; a ValueError (a bad config or flag value) exits 1 with one line."""
    try:
        return work()
    except ValueError as error:
        _exit(f"longctx {command}", " ".join(str(error).split()))


def _report_failures(command: str, work):
    """Runs `work()`: SIGTERM (checkpoint saved) exits 0, an expected failure exits 1 with one
    line, not a traceback."""
    from longctx_jax.train.checkpointing import CheckpointError
    from longctx_jax.train.loop import NonFiniteLossError, Preempted
    from longctx_jax.train.rundir import RunLockedError

    try:
        return work()
    except Preempted as stop:
        print(f"longctx {command}: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(0)
    except (NonFiniteLossError, CheckpointError, RunLockedError, ValueError) as error:
        _exit(f"longctx {command}", str(error))


def _required_config(command: str, what: str):
    if _CONFIG.value is None:
        raise app.UsageError(f"needs --config={what}")
    path = FLAGS["config"].config_filename.split(":", 1)[0]
    if not Path(path).is_file():
        raise app.UsageError(f"--config={path}: no such file")
    try:
        _CONFIG.value.keys()
    except OSError as error:  # ml_collections defers a missing file's error to first use
        raise app.UsageError(f"--config: cannot load {' '.join(str(error).split())}") from None
    return _CONFIG.value


def _required(flag, command: str):
    if flag.value is None:
        raise app.UsageError(f"needs --{flag.name}")
    return flag.value


def _validate(config) -> None:
    from longctx_jax.config import validate_config

    validate_config(config)


def _ints(flag) -> list[int]:
    try:
        return [int(n) for n in flag.value]
    except ValueError:
        raise app.UsageError(f"--{flag.name}={','.join(flag.value)}: expected integers") from None


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    words = argv[1:]
    command = COMMANDS.get(" ".join(words))
    try:
        if command is None:
            raise app.UsageError(_unknown_command(words))
        stray = [n for n in OWN_FLAGS if FLAGS[n].present and n not in command.flags]
        if stray:
            raise app.UsageError(
                f"--{stray[0]} is not a flag of this command; its flags: "
                + " ".join(f"--{n}" for n in command.flags)
            )
        command.run()
    except app.UsageError as error:
        name = f"longctx {command.name}" if command else "longctx"
        _exit(name, f"{error} (see `{name} --help`)")


def _unknown_command(words: list[str]) -> str:
    if not words:
        return "no command given; commands: " + ", ".join(COMMANDS)
    if words[0] == "bench":
        subcommands = [name.split()[1] for name in COMMANDS if name.startswith("bench ")]
        given = f"unknown command {' '.join(words)!r}" if words[1:] else "bench needs a subcommand"
        return f"{given}; expected bench {' | '.join(subcommands)}"
    from longctx_jax.checks import closest

    close = closest(" ".join(words), COMMANDS)
    hint = f"; did you mean {close}?" if close else ""
    return f"unknown command {' '.join(words)!r}{hint}; commands: {', '.join(COMMANDS)}"


def _print(text: str) -> None:
    """print, quiet when the reader stops early (`longctx --help | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    if "--version" in args:
        print(f"longctx {version()}")
        return
    if args[:1] == ["help"] or any(a in ("-h", "--help", "--helpshort", "-?") for a in args):
        command, words = _find_command(args[1:] if args[:1] == ["help"] else args)
        if command is not None:
            _print(command_help(command))
        elif words[:1] == ["bench"]:
            _print(
                "\n\n".join(command_help(c) for n, c in COMMANDS.items() if n.startswith("bench"))
            )
        else:
            _print(main_help())
        return
    from longctx_jax.train import preemption

    preemption.install()  # SIGTERM / SIGINT from here on: the trainer checkpoints and stops
    if _find_command(args)[0] is COMMANDS["eval"]:
        _EVAL_OVERRIDES.extend(a for a in argv if re.match(r"^-{1,2}config\.evals\.", a))
        argv = [a for a in argv if a not in _EVAL_OVERRIDES]
    _quiet_libtpu()
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
