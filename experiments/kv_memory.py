"""KV-cache memory: MQAR accuracy against real cache bytes, per policy x quantisation, for MHA /
GQA / MQA models and the linear mixer, over seeds (configs/ablations/kv_memory.py).

Every trained model is scored on the same MQAR examples (`eval_pairs` pairs, the evaluator's
seed 0, never trained on) by the teacher-forced task scorer (eval/task_eval.py) with logits from
`inference.generate.cache_logits_fn`: the pairs are one prefill chunk, every later token one
decode step through the cache. Rows: model, policy, bits, key_quant, capacity, payload bytes
per sequence (from the allocated arrays, inference/layout.py), per-seed accuracy, mean, 95% CI.
Writes results.json, a table and figure.png (accuracy vs bytes, log x).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from longctx_jax.ablation import train_variants
from longctx_jax.eval.evaluators.mqar import defaults as mqar_defaults
from longctx_jax.eval.evaluators.mqar import mqar_examples
from longctx_jax.eval.task_eval import greedy_predictions_fn, score_task_examples
from longctx_jax.inference.generate import cache_logits_fn
from longctx_jax.inference.layout import allocate, cache_bytes
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.provenance import mean_ci, write_results
from longctx_jax.run import load_model

QUANTISATIONS = {  # name -> CacheSpec fields (KIVI: token groups of 4, a 4-token fp window)
    "bf16": dict(dtype="bfloat16"),
    "int8": dict(bits=8),
    "int4": dict(bits=4),
    "int4_kivi": dict(bits=4, key_quant="channel", group_size=4, residual=4),
    "int2": dict(bits=2),
    "int2_kivi": dict(bits=2, key_quant="channel", group_size=4, residual=4),
}
POLICY_OPTIONS = dict(sinks=dict(sinks=4), h2o=dict(recent=2), snapkv=dict(recent=2, pool=3))


def cases(ablation, model: str) -> list[tuple[str, CacheSpec]]:
    """(label, spec) of every cache this model is evaluated with."""
    if model == "linear":
        return [("state", CacheSpec())]
    out = [("full", CacheSpec())]
    if model == "mha":
        for policy in ablation.policies:
            for capacity in ablation.capacities:
                options = POLICY_OPTIONS.get(policy, {})
                out.append((policy, CacheSpec(policy=policy, capacity=capacity, **options)))
        out += [(name, CacheSpec(**QUANTISATIONS[name])) for name in ablation.quantisations]
    elif "int4_kivi" in ablation.quantisations:
        out.append(("int4_kivi", CacheSpec(**QUANTISATIONS["int4_kivi"])))
    return out


def examples(ablation):
    cfg = mqar_defaults()
    cfg.update(num_examples=ablation.eval_examples, batch_size=32, **dict(ablation.mqar_task))
    length = ablation.baseline.data.seq_len
    return cfg, mqar_examples(cfg, length, ablation.eval_pairs), length


def evaluate(ablation, trained: dict) -> list[dict]:
    cfg, rows_in, length = examples(ablation)
    context = 2 * ablation.eval_pairs  # the key-value pairs: one prefill chunk
    results = []
    for model in ablation.variants:
        accuracy: dict[str, list[float]] = {}
        specs = cases(ablation, model)
        predicts = {}  # one compiled scorer per cache, shared by the seeds
        for seed in ablation.seeds:
            _, run_dir = trained[(model, seed)]
            model_config, params = load_model(run_dir)
            for label, spec in specs:
                print(f"== {model} seed {seed}: {label} capacity {spec.capacity}")
                key = _key(label, spec)
                if key not in predicts:
                    predicts[key] = greedy_predictions_fn(
                        cache_logits_fn(model_config, spec, chunk_size=(context, 1))
                    )
                predict = predicts[key]
                scores = score_task_examples(
                    predict, params, rows_in, pad_len=length, batch_size=cfg.batch_size
                )
                hits = sum(sum(s.spans) for s in scores) / sum(len(s.spans) for s in scores)
                accuracy.setdefault(_key(label, spec), []).append(hits)
        for label, spec in specs:
            values = accuracy[_key(label, spec)]
            stats = mean_ci(values)
            used = cache_bytes(allocate(model_config, 1, spec, length))
            results.append(
                dict(
                    model=model,
                    policy=spec.policy if label != "state" else "state",
                    label=label,
                    bits=spec.bits,
                    key_quant=spec.key_quant if spec.bits else None,
                    capacity=used["capacity"],
                    payload_bytes=used["payload"],
                    accuracy_per_seed=values,
                    accuracy_mean=stats["mean"],
                    accuracy_ci95=[stats["ci_low"], stats["ci_high"]],
                )
            )
    return results


def _key(label, spec) -> str:
    return f"{label}@{spec.capacity}"


def format_table(rows) -> str:
    lines = [f"{'model':<7}{'cache':<11}{'slots':>6}{'bytes':>9}  accuracy (95% CI)"]
    for r in rows:
        low, high = r["accuracy_ci95"]
        interval = "" if low is None else f" [{low:.2f}, {high:.2f}]"
        slots = "-" if r["capacity"] is None else r["capacity"]
        lines.append(
            f"{r['model']:<7}{r['label']:<11}{slots:>6}{r['payload_bytes']:>9}  "
            f"{r['accuracy_mean']:.3f}{interval}"
        )
    return "\n".join(lines)


def run(ablation: ml_collections.ConfigDict, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir, seeds=ablation.seeds)
    rows = evaluate(ablation, trained)
    results = dict(
        ablation=ablation.name,
        seeds=list(ablation.seeds),
        eval_pairs=ablation.eval_pairs,
        seq_len=ablation.baseline.data.seq_len,
        rows=rows,
    )
    write_results(workdir / "results.json", results, seeds=list(ablation.seeds))
    from longctx_jax.viz.kv_memory import plot_kv_memory

    plot_kv_memory(results, workdir / "figure.png")
    print(format_table(rows))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
