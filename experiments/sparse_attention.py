"""Sparse attention at a fixed key budget: loss on the trailing part of sequences, and recall.

Trains the ablation's stages (dense pretraining, indexer warm-up, then dense / DSA / sliding
window / oracle sparse stages), then measures
  loss      sliding-window NLL by position on the validation split at the training length, for
            the warm-up checkpoint run dense and with each sparse selection (before the sparse
            stage) and for each sparse-stage variant (after it); `trailing_nll` averages the
            positions >= train_len / 2, where most keys lie outside a k-key budget;
  recall    the share of the dense attention mass held by the k keys each selector picks
            (indexer after warm-up and after the DSA stage, the k nearest keys, the oracle),
            measured on the warm-up model's dense attention, for each k in `recall_ks`.
  passkey   greedy exact match and teacher-forced digit accuracy of 5-digit passkeys in prompts
            that fill the training length, after the sparse stage.
Writes results.json, a table and figure.png.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.ablation import train_variants
from longctx_jax.attention.sparse import attention_mass_recall
from longctx_jax.data.pipeline import make_eval_batches
from longctx_jax.eval.passkey_eval import passkey_accuracy
from longctx_jax.eval.perplexity import perplexity_by_position
from longctx_jax.model import DecoderLM, attention_maps
from longctx_jax.model.sparse_block import index_score_maps
from longctx_jax.run import load_model

SPARSE = ("dsa", "window", "oracle")
RECALL_BATCHES = 2
PASSKEY = dict(depths=(0.1, 0.5, 0.9), num_examples=16, digits=5)


def trailing_nll(result: dict, start: int) -> float:
    """Mean NLL (nats) over scored targets at positions >= start, from `by_position`."""
    rows = result["by_position"]
    pairs = [
        (nll, n)
        for lo, nll, n in zip(rows["edges"][:-1], rows["nll"], rows["tokens"], strict=True)
        if lo >= start and n
    ]
    return sum(nll * n for nll, n in pairs) / sum(n for _, n in pairs)


def evaluate_loss(ablation, trained: dict) -> dict:
    """{row: perplexity_by_position result + trailing_nll} before and after the sparse stage."""
    train_len = ablation.baseline.data.seq_len
    warm_config, warm_dir = trained["warmup"]
    _, warm_params = load_model(warm_dir)
    rows = {"before: dense": (warm_config.model, warm_params)}
    for name in SPARSE:
        rows[f"before: {name}"] = (trained[name][0].model, warm_params)
    for name in ("dense",) + SPARSE:
        rows[f"after: {name}"] = (trained[name][0].model, load_model(trained[name][1])[1])
    out = {}
    for row, (model_config, params) in rows.items():
        print(f"== evaluating {row}")
        result = perplexity_by_position(
            model_config,
            params,
            ablation.baseline.data,
            eval_len=train_len,
            num_documents=ablation.eval_documents,
            max_doc_len=4 * train_len,
            buckets=8,
            progress=False,
        )
        result["trailing_nll"] = trailing_nll(result, train_len // 2)
        out[row] = result
    return out


def evaluate_passkey(ablation, trained: dict) -> dict:
    """{variant: passkey_accuracy result} after the sparse stage (prompt + answer = seq_len)."""
    length = ablation.baseline.data.seq_len - PASSKEY["digits"] + 1
    out = {}
    for name in ("dense",) + SPARSE:
        config, run_dir = trained[name]
        print(f"== passkey {name}")
        out[name] = passkey_accuracy(
            config.model, load_model(run_dir)[1], lengths=[length], progress=False, **PASSKEY
        )
    return out


def evaluate_recall(ablation, trained: dict) -> dict:
    """{ks, curves: {selector: [recall per k]}}: each indexer against its own model's dense
    attention (run dense, as in the warm-up); the k nearest keys and the oracle against the
    warm-up model's."""
    model = DecoderLM(trained["warmup"][0].model)
    batches = make_eval_batches(ablation.baseline.data, num_batches=RECALL_BATCHES)
    ks = list(ablation.recall_ks)
    models = {"warm-up": "warmup", "DSA stage": "dsa"}
    params = {name: load_model(trained[variant][1])[1] for name, variant in models.items()}
    sums = {}
    for batch in batches:
        kwargs = {key: jnp.asarray(batch[key]) for key in ("positions", "segment_ids")}
        for name in models:
            _, state = model.apply(
                {"params": params[name]},
                jnp.asarray(batch["tokens"]),
                capture_attention=True,
                mutable=["intermediates"],
                **kwargs,
            )
            scores, probs = index_score_maps(state), attention_maps(state)
            curves = {f"indexer after {name}": scores}
            if name == "warm-up":
                positions = kwargs["positions"]
                distance = (positions[:, :, None] - positions[:, None, :]).astype(jnp.float32)
                curves["sliding window"] = jnp.where(scores > -jnp.inf, -distance, -jnp.inf)
                curves["oracle"] = jnp.where(scores > -jnp.inf, probs.sum(2), -jnp.inf)
            for curve, selector_scores in curves.items():
                recall = layer_mean_recall(selector_scores, probs, ks) / len(batches)
                sums[curve] = sums.get(curve, 0.0) + recall
    return dict(ks=ks, curves={name: s.tolist() for name, s in sums.items()})


def layer_mean_recall(scores_LBTS, probs_LBNTS, ks) -> np.ndarray:
    """attention_mass_recall per k, averaged over layers."""
    per_layer = jax.vmap(lambda s, p: jnp.stack([attention_mass_recall(s, p, k) for k in ks]))(
        scores_LBTS, probs_LBNTS
    )
    return np.asarray(per_layer.mean(0))


def format_table(results) -> str:
    """Loss rows (overall and trailing NLL) and recall rows (one column per k)."""
    lines = [f"{'NLL (nats/byte), k=' + str(results['top_k']):<24}{'all':>8}{'trailing':>10}"]
    for row, r in results["loss"].items():
        lines.append(f"{row:<24}{r['nll']:>8.3f}{r['trailing_nll']:>10.3f}")
    lines.append("")
    lines.append(f"{'passkey (after)':<24}{'exact':>8}{'digits':>10}")
    for name, r in results.get("passkey", {}).items():
        exact, digits = np.mean(r["accuracy"]), np.mean(r["teacher_forced_digit_accuracy"])
        lines.append(f"{name:<24}{exact:>8.3f}{digits:>10.3f}")
    recall = results["recall"]
    lines.append("")
    lines.append(f"{'attention-mass recall':<24}" + "".join(f"{k:>7}" for k in recall["ks"]))
    for name, values in recall["curves"].items():
        lines.append(f"{name:<24}" + "".join(f"{v:>7.3f}" for v in values))
    return "\n".join(lines)


def run(ablation, workdir) -> dict:
    workdir = Path(workdir)
    trained = train_variants(ablation, workdir)
    results = dict(
        ablation=ablation.name,
        train_len=ablation.baseline.data.seq_len,
        top_k=ablation.top_k,
        loss=evaluate_loss(ablation, trained),
        recall=evaluate_recall(ablation, trained),
        passkey=evaluate_passkey(ablation, trained),
    )
    from longctx_jax.provenance import write_results

    write_results(workdir / "results.json", results, seeds=[ablation.baseline.train.seed])
    from longctx_jax.viz.sparse_ablation import plot_sparse_ablation

    plot_sparse_ablation(results, workdir / "figure.png")
    print(format_table(results))
    print(f"wrote {workdir / 'results.json'} and {workdir / 'figure.png'}")
    return results
