"""`longctx eval`: a run's checkpoint through the evaluators its config declares.

    step, results = evaluate_checkpoint("runs/x")             # newest checkpoint, config.evals
    step, results = evaluate_checkpoint("runs/x", step=200, evals=other_evals)

Writes WORKDIR/eval/<step>.json (with provenance; `write_eval_results`, which the trainer uses
too) and returns the evaluators' results.
"""

from __future__ import annotations

import json
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
    write_eval_results(workdir, step, results)
    return step, results


def write_eval_results(workdir, step: int, results: dict) -> Path:
    """WORKDIR/eval/<step>.json: `results` merged over what earlier evaluations of that step
    wrote (an evaluator of the same name is replaced, others are kept), with provenance."""
    path = Path(workdir) / "eval" / f"{step}.json"
    evals = json.loads(path.read_text()).get("evals", {}) if path.exists() else {}
    write_results(path, dict(step=step, evals=evals | results))
    return path


def format_eval_table(results: dict) -> str:
    """One line per (evaluator, metric)."""
    lines = [f"{'evaluator':<16} {'metric':<24} {'value':>12}"]
    for name, result in results.items():
        for metric, value in result["scalars"].items():
            lines.append(f"{name:<16} {metric:<24} {value:>12.4f}")
    return "\n".join(lines)
