"""The preemption-bias experiment (configs/ablations/preemption_bias.py): what interrupted
generation does to output lengths under each recovery strategy, and what it costs.

A small byte LM is trained on the standard library; `requests` prompts are `prompt_len` bytes of
held-out code ending mid-line, and a completion ends at the newline (`stop_token` 10) or after
`max_new_tokens`. Decoding runs through the engine (longctx_jax/inference/engine.py), which asks
`should_stop()` after every decode step; here it says yes with probability `hazard` (λ), so a
request needing ℓ tokens survives an attempt with probability (1 − λ)^(ℓ−1) ≈ e^(−λℓ). After a
preemption the run is restarted until every request is done:

  uninterrupted  never preempted: the reference.
  regenerate     unfinished requests start over with fresh sampling noise (a new seed per
                 attempt): what a stack does that neither logs tokens nor is deterministic.
  same_seed      start over with the same noise: a deterministic, batch-invariant stack.
  wal            resume from the write-ahead log and the caches saved at preemption.
  wal_rebuild    the WAL, but the caches are lost at every preemption (a fatal error):
                 re-prefilled from the log's tokens.

Finished requests are kept by every strategy. Measured per hazard, strategy and seed (the seed
drives both sampling and the preemption draws; the model is trained once): every request's
output length (tokens generated, the stop token included), the mean, a two-sample
Kolmogorov-Smirnov test against the uninterrupted lengths of the same seed, the fraction of
completions identical to the uninterrupted ones, tokens decoded (sampled, wasted ones included),
prompt tokens prefilled (again at every restart) and tokens replayed (fed again to rebuild
caches). The closed form for `regenerate`: the
uninterrupted length histogram p(ℓ) reweighted by the survival (1 − λ)^(ℓ−1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from scipy import stats

from longctx_jax.ablation import train_variants
from longctx_jax.data import sources
from longctx_jax.inference.engine import MemoryLog, decode_requests
from longctx_jax.inference.sampling import Sampling
from longctx_jax.inference.wal import WriteAheadLog
from longctx_jax.provenance import format_mean_ci, mean_ci, write_results
from longctx_jax.run import load_model

STRATEGIES = ("uninterrupted", "regenerate", "same_seed", "wal", "wal_rebuild")
NEWLINE = 10


def make_prompts(data_config, count: int, prompt_len: int, seed: int = 0) -> list[np.ndarray]:
    """`count` prompts of `prompt_len` bytes from the validation split, each ending inside a line
    (its last byte is not a newline), at random documents and positions."""
    documents = sources.document_source(data_config, "validation")
    rng = np.random.default_rng(seed)
    prompts = []
    while len(prompts) < count:
        document = np.asarray(documents[int(rng.integers(len(documents)))])
        if document.size <= prompt_len + 1:
            continue
        end = int(rng.integers(prompt_len, document.size))
        if document[end - 1] != NEWLINE and document[end] != NEWLINE:
            prompts.append(document[end - prompt_len : end].astype(np.int32))
    return prompts


def decode_with(strategy, model, prompts, *, hazard, seed, options, wal_dir) -> dict:
    """Decodes every prompt under `strategy` (module docstring) until all are done: output
    lengths, completions, tokens decoded, prefilled and replayed, and the number of
    preemptions."""
    model_config, params = model
    n = len(prompts)
    draws = np.random.default_rng([seed, round(hazard * 1e6), STRATEGIES.index(strategy)])
    should_stop = None if strategy == "uninterrupted" else (lambda: draws.random() < hazard)
    memory = MemoryLog.empty(n)
    decoded = prefilled = replayed = preemptions = 0
    if strategy.startswith("wal"):
        shutil.rmtree(wal_dir, ignore_errors=True)
    while True:
        call_seed = seed * 100_003 + (preemptions if strategy == "regenerate" else 0)
        log = memory
        if strategy.startswith("wal"):  # opened afresh after every preemption: a restart
            fingerprint = dict(hazard=hazard, seed=seed, strategy=strategy)
            log = WriteAheadLog.open(wal_dir, fingerprint, num_requests=n, vocab_size=256)
        outcome = decode_requests(
            model_config,
            params,
            prompts,
            log=log,
            seed=call_seed,
            should_stop=should_stop,
            **options,
        )
        if log is not memory:
            log.close()
        decoded += outcome.decoded
        prefilled += outcome.prefilled
        replayed += outcome.replayed
        if not outcome.preempted:
            break
        preemptions += 1
        if strategy in ("regenerate", "same_seed"):  # unfinished requests lose their tokens
            for i in range(n):
                if i not in memory.finished:
                    memory.tokens[i] = []
        if strategy == "wal_rebuild":
            shutil.rmtree(Path(wal_dir) / "cache", ignore_errors=True)
    if strategy.startswith("wal"):
        shutil.rmtree(wal_dir)
    return dict(
        tokens=log.tokens,
        lengths=[len(t) for t in log.tokens],
        decoded=decoded,
        prefilled=prefilled,
        replayed=replayed,
        preemptions=preemptions,
    )


def survival_weighted(lengths, hazard: float, max_length: int) -> np.ndarray:
    """The closed-form length distribution of `regenerate`: the histogram of `lengths` (ℓ = 1 ..
    max_length) times the survival (1 − λ)^(ℓ−1), normalised; index ℓ − 1."""
    counts = np.bincount(np.asarray(lengths) - 1, minlength=max_length).astype(np.float64)
    weights = counts * (1.0 - hazard) ** np.arange(max_length)
    return weights / weights.sum()


def summarize(ablation, measured) -> dict:
    """{"hazards": {λ: {strategy: {mean_length, ks_pvalue, tokens_decoded, ...}}}}: means with
    95% CIs over seeds; `ks_pvalue` from the seeds' lengths pooled (per-seed values beside)."""
    seeds = list(ablation.seeds)
    max_length = ablation.decode.max_new_tokens
    out = {}
    for hazard in ablation.hazards:
        reference = [measured["uninterrupted", hazard, s] for s in seeds]
        pooled_reference = np.concatenate([r["lengths"] for r in reference])
        per_strategy = {}
        for strategy in STRATEGIES:
            runs = [measured[strategy, hazard, s] for s in seeds]
            pooled = np.concatenate([r["lengths"] for r in runs])
            per_seed_ks = [
                float(stats.ks_2samp(r["lengths"], ref["lengths"]).pvalue)
                for r, ref in zip(runs, reference, strict=True)
            ]
            identical = [
                float(np.mean([a == b for a, b in zip(r["tokens"], ref["tokens"], strict=True)]))
                for r, ref in zip(runs, reference, strict=True)
            ]
            per_strategy[strategy] = dict(
                mean_length=mean_ci([np.mean(r["lengths"]) for r in runs]),
                ks_pvalue=float(stats.ks_2samp(pooled, pooled_reference).pvalue),
                ks_pvalue_per_seed=per_seed_ks,
                tokens_decoded=mean_ci([r["decoded"] for r in runs]),
                tokens_prefilled=mean_ci([r["prefilled"] for r in runs]),
                tokens_replayed=mean_ci([r["replayed"] for r in runs]),
                tokens_processed=mean_ci(
                    [r["decoded"] + r["prefilled"] + r["replayed"] for r in runs]
                ),
                preemptions=mean_ci([r["preemptions"] for r in runs]),
                identical_fraction=mean_ci(identical),
                histogram=np.bincount(pooled - 1, minlength=max_length).tolist(),
            )
        predicted = survival_weighted(pooled_reference, hazard, max_length)
        per_strategy["regenerate"]["predicted_histogram"] = predicted.tolist()
        per_strategy["regenerate"]["predicted_mean_length"] = float(
            np.dot(predicted, np.arange(1, max_length + 1))
        )
        out[repr(hazard)] = per_strategy
    return out


def format_table(results) -> str:
    lines = [
        f"{'hazard':>8} {'strategy':<14}{'mean length':>14}{'KS p':>10}{'identical':>13}"
        f"{'decoded':>18}{'prefilled':>16}{'replayed':>16}"
    ]
    for hazard, per_strategy in results["hazards"].items():
        for strategy, r in per_strategy.items():
            predicted = r.get("predicted_mean_length")
            lines.append(
                f"{hazard:>8} {strategy:<14}{format_mean_ci(r['mean_length']):>14}"
                f"{r['ks_pvalue']:>10.2g}{format_mean_ci(r['identical_fraction']):>13}"
                f"{_count(r['tokens_decoded']):>18}{_count(r['tokens_prefilled']):>16}"
                f"{_count(r['tokens_replayed']):>16}"
                + ("" if predicted is None else f"   (closed form: {predicted:.2f})")
            )
    return "\n".join(lines)


def _count(ci) -> str:
    """A token count's mean ± half its 95% interval, in whole tokens."""
    if ci["ci_low"] is None:
        return f"{ci['mean']:.0f}"
    return f"{ci['mean']:.0f}±{(ci['ci_high'] - ci['ci_low']) / 2:.0f}"


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    ((_, run_dir),) = train_variants(ablation, workdir).values()
    model = load_model(run_dir)
    d = ablation.decode
    prompts = make_prompts(ablation.baseline.data, d.requests, d.prompt_len)
    options = dict(
        max_new_tokens=d.max_new_tokens,
        stop_token=NEWLINE,
        sampling=Sampling(d.temperature),
        batch_size=d.batch_size,
    )
    measured = {}
    for hazard in ablation.hazards:
        for seed in ablation.seeds:
            for strategy in STRATEGIES:
                if strategy == "uninterrupted" and hazard != ablation.hazards[0]:
                    measured[strategy, hazard, seed] = measured[strategy, ablation.hazards[0], seed]
                    continue
                result = decode_with(
                    strategy,
                    model,
                    prompts,
                    hazard=hazard,
                    seed=seed,
                    options=options,
                    wal_dir=workdir / "wal",
                )
                measured[strategy, hazard, seed] = result
                print(
                    f"λ={hazard} seed {seed} {strategy:<14} mean length "
                    f"{np.mean(result['lengths']):6.2f}  decoded {result['decoded']:7d}  "
                    f"prefilled {result['prefilled']:6d}  replayed {result['replayed']:6d}  "
                    f"preemptions {result['preemptions']}"
                )
    results = dict(
        ablation=ablation.name,
        requests=d.requests,
        prompt_len=d.prompt_len,
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        batch_size=d.batch_size,
        stop_token=NEWLINE,
        hazards=summarize(ablation, measured),
    )
    write_results(workdir / "results.json", results, seeds=list(ablation.seeds))
    from longctx_jax.viz.preemption_bias import plot_preemption_bias

    plot_preemption_bias(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
