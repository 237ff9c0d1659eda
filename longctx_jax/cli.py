"""`longctx` command line: `longctx bench attention [--lengths=...] [--workdir=...]`."""

from __future__ import annotations

from absl import app, flags, logging

_LENGTHS = flags.DEFINE_list(
    "lengths", ["1024", "2048", "4096", "8192", "16384", "32768"], "Sequence lengths to measure."
)
_IMPLS = flags.DEFINE_list(
    "impls", ["xla", "blockwise"], "Implementations; the first is the baseline for speedups."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default runs/bench_<what>).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions per measurement (best is kept).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_HEADS = flags.DEFINE_integer("heads", 8, "Number of heads.")

COMMANDS = {"bench": ("attention",)}


def bench_attention() -> None:
    from longctx_jax.eval.attention_bench import format_table, run_benchmark, write_results

    results = run_benchmark(
        [int(n) for n in _LENGTHS.value],
        tuple(_IMPLS.value),
        heads=_HEADS.value,
        head_dim=_HEAD_DIM.value,
        repeats=_REPEATS.value,
    )
    workdir = write_results(results, _WORKDIR.value or "runs/bench_attention")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")


def main(argv) -> None:
    logging.set_verbosity(logging.WARNING)
    args = argv[1:]
    if len(args) != 2 or args[0] not in COMMANDS or args[1] not in COMMANDS[args[0]]:
        usage = ", ".join(f"{c} {s}" for c, subs in COMMANDS.items() for s in subs)
        raise app.UsageError(f"unknown command {' '.join(args)!r}; expected one of: {usage}")
    bench_attention()


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
