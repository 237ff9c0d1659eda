"""`longctx eval`: a run's checkpoint through the evaluators its config declares.

    step, results = evaluate_checkpoint("runs/x")             # newest checkpoint, config.evals
    step, results = evaluate_checkpoint("runs/x", step=200, evals=other_evals)

Writes WORKDIR/eval/<step>.json (with provenance) and returns the evaluators' results; the
trainer writes the same file for the evaluations it runs.
"""

from __future__ import annotations

from pathlib import Path

from longctx_jax.eval import registry
from longctx_jax.provenance import write_results
from longctx_jax.run import load_model, read_run_config
from longctx_jax.train.checkpointing import checkpoint_steps


def evaluate_checkpoint(workdir, step=None, *, evals=None, progress=True):
    """(step, {name: {"kind", "scalars", "details"}}) for checkpoint `step` (default newest)."""
    config = read_run_config(workdir)
    evals = config.get("evals", {}) if evals is None else evals
    registry.validate_evals(evals, config.data)
    if not evals:
        raise ValueError(
            f"workdir={str(workdir)!r}: its config declares no evaluators (config.evals is "
            "empty); pass some, e.g. --config.evals.ppl.kind=perplexity"
        )
    if step is None:
        steps = checkpoint_steps(workdir)
        if not steps:
            raise ValueError(f"workdir={str(workdir)!r} holds no checkpoint")
        step = steps[-1]
    model_config, params = load_model(workdir, step)
    results = registry.run_evals(
        evals, list(evals), model_config, params, config.data, progress=progress
    )
    write_results(Path(workdir) / "eval" / f"{step}.json", dict(step=step, evals=results))
    return step, results


def format_eval_table(results: dict) -> str:
    """One line per (evaluator, metric)."""
    lines = [f"{'evaluator':<16} {'metric':<24} {'value':>12}"]
    for name, result in results.items():
        for metric, value in result["scalars"].items():
            lines.append(f"{name:<16} {metric:<24} {value:>12.4f}")
    return "\n".join(lines)
