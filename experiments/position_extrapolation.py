"""Position extrapolation: perplexity vs evaluation length for each position scheme.

Trains the ablation's variants (RoPE, ALiBi, NoPE at the training length; PI and YaRN fine-tunes
at 2x from the RoPE checkpoint), then measures sliding-window perplexity on the validation split
at 1x..8x the training length, adding eval-time PI, NTK, dynamic NTK and YaRN to the RoPE model
(same weights, rescaled frequencies). Writes results.json, a table and figure.png.
"""

from __future__ import annotations

from pathlib import Path

from longctx_jax.ablation import train_variants
from longctx_jax.eval.perplexity import perplexity_by_position, with_eval_rope
from longctx_jax.run import load_model

EVAL_NAMES = {
    "linear": "rope+PI (eval)",
    "ntk": "rope+NTK (eval)",
    "dynamic": "rope+dynamic NTK (eval)",
    "yarn": "rope+YaRN (eval)",
}


def evaluate(ablation, trained: dict) -> dict:
    """{curve name: [result per eval length]} for trained variants and eval-time RoPE kinds.

    Every length scores the same targets (the first `eval_doc_bytes` bytes of the first
    `eval_documents` validation documents long enough for the longest length); only the context
    each target gets, and the positions the model sees, change with the length.
    """
    train_len = ablation.baseline.data.seq_len
    lengths = [train_len * m for m in ablation.eval_multiples]
    same_text = dict(
        num_documents=ablation.eval_documents,
        min_doc_len=max(lengths) + 1,
        max_doc_len=max(ablation.eval_doc_bytes, max(lengths) + 1),
    )
    data_config = ablation.baseline.data
    curves = {}
    for name, (config, run_dir) in trained.items():
        _, params = load_model(run_dir)
        models = {name: lambda n, c=config.model: c}
        if name == "rope":
            for kind in ablation.eval_rope_kinds:
                models[EVAL_NAMES[kind]] = lambda n, c=config.model, k=kind: with_eval_rope(
                    c, k, train_len, n
                )
        for curve, model_for_length in models.items():
            print(f"== evaluating {curve}")
            curves[curve] = [
                perplexity_by_position(
                    model_for_length(n), params, data_config, eval_len=n, **same_text
                )
                for n in lengths
            ]
    return dict(train_len=train_len, lengths=lengths, curves=curves)


def format_table(results) -> str:
    lengths = results["lengths"]
    header = f"{'perplexity (bytes)':<26}" + "".join(f"{n:>9}" for n in lengths)
    lines = [header]
    for curve, rows in results["curves"].items():
        lines.append(f"{curve:<26}" + "".join(f"{r['perplexity']:>9.3f}" for r in rows))
    return "\n".join(lines)


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir)
    results = evaluate(ablation, trained)
    results["ablation"] = ablation.name
    from longctx_jax.provenance import write_results

    write_results(workdir / "results.json", results, seeds=[ablation.baseline.train.seed])
    from longctx_jax.viz.curves import plot_perplexity_vs_length

    plot_perplexity_vs_length(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
