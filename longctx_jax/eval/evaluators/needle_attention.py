"""`kind="needle_attention"`: attention dilution and retrieval heads on NIAH examples
(`longctx_jax.eval.needle_attention`, captured attention probabilities of one teacher-forced pass).

Examples are the niah evaluator's (`make_niah_example(seed, length, depth, index=i, ...)`, all
depths of a length in passes of [batch_size, length]); the statistics are over the query rows that
produce the answer's value digits.

Fields: the niah evaluator's example fields (lengths (() = data.seq_len), depths, num_examples
per cell, variant, haystack, num_keys, num_values, num_queries, distractor_similarity,
key_length, value_digits, seed, batch_size, rope_kind), max_length (the longest length allowed:
capture holds [layers, batch, heads, T, T] float32), head_threshold (retrieval score at which a
head counts as a retrieval head; 0.1 as Wu et al.). Models with model.attention.kind other than
"dense" are refused (no attention probabilities to capture).

Scalars, per length L: needle_mass@L (attention mass on the needle, mean over layers, heads and
rows), needle_mass_max_head@L (the largest per-head mean), entropy@L (nats, mean) and
uniform_entropy@L (mean log(visible keys): the entropy of uniform attention); over all lengths:
top_head_score (the largest retrieval score of a (layer, head)) and num_retrieval_heads (heads
with score >= head_threshold). Details: per length the [layers][heads] grids needle_mass,
entropy and retrieval_score; over all lengths retrieval_score and the heads ranked.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from tqdm import tqdm

from longctx_jax.eval.evaluators.niah import (
    NIAH_FIELDS,
    check_model,
    eval_lengths,
    model_for_length,
    niah_examples,
    validate_niah_fields,
)
from longctx_jax.eval.evaluators.perplexity import _check_lengths
from longctx_jax.eval.needle_attention import needle_attention_fn, needle_attention_stats
from longctx_jax.eval.registry import register
from longctx_jax.eval.task_eval import check_fraction_field, check_int_field


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            lengths=(),
            depths=(0.0, 0.5, 1.0),
            num_examples=4,
            **NIAH_FIELDS,
            seed=0,
            batch_size=2,
            rope_kind="default",
            max_length=2048,
            head_threshold=0.1,
        )
    )


def validate(prefix, cfg, data_config) -> None:
    _check_lengths(prefix, cfg.lengths)
    check_int_field(prefix, cfg, "max_length", 1)
    check_fraction_field(prefix, cfg, "head_threshold")
    lengths = cfg.lengths or ((data_config.seq_len,) if data_config is not None else ())
    too_long = [n for n in lengths if n > cfg.max_length]
    if too_long:
        given = f"{tuple(cfg.lengths)!r}" if cfg.lengths else f"() (data.seq_len={too_long[0]})"
        raise ValueError(
            f"{prefix}.lengths={given}: expected lengths <= {prefix}.max_length={cfg.max_length}"
            f" ({too_long} exceed it); attention capture holds [layers, batch, heads, T, T] "
            "float32 probabilities, so evaluate shorter lengths (or raise max_length if memory "
            "allows)"
        )
    validate_niah_fields(prefix, cfg, data_config)


@register("needle_attention", defaults=defaults, validate=validate)
def needle_attention(cfg, model_config, params, data_config, *, progress=True):
    check_model("needle_attention", cfg, model_config)
    lengths, depths = eval_lengths(cfg, data_config), list(cfg.depths)
    too_long = [n for n in lengths if n > cfg.max_length]
    if too_long:  # validate_evals says so first; this guards direct calls
        raise ValueError(f"needle_attention evaluator lengths {too_long} > max_length")
    per_length = len(depths) * cfg.num_examples
    total = len(lengths) * math.ceil(per_length / cfg.batch_size)
    bar = tqdm(total=total, desc="needle_attention", unit="batch", disable=not progress)
    scalars, by_length = {}, {}
    hits, rows = 0.0, 0
    try:
        for length in lengths:
            model = model_for_length("needle_attention", cfg, model_config, data_config, length)
            examples = [e for depth in depths for e in niah_examples(cfg, length, depth)]
            stats = needle_attention_stats(
                needle_attention_fn(model),
                params,
                examples,
                pad_len=length,
                batch_size=cfg.batch_size,
                on_batch=lambda: bar.update(1),
            )
            mass = stats["needle_mass"]
            scalars[f"needle_mass@{length}"] = float(mass.mean())
            scalars[f"needle_mass_max_head@{length}"] = float(mass.max())
            scalars[f"entropy@{length}"] = float(stats["entropy"].mean())
            scalars[f"uniform_entropy@{length}"] = float(stats["uniform_entropy"])
            by_length[str(length)] = dict(
                needle_mass=mass.tolist(),
                entropy=stats["entropy"].tolist(),
                retrieval_score=stats["retrieval_score"].tolist(),
                uniform_entropy=float(stats["uniform_entropy"]),
                rows=stats["rows"],
            )
            hits = hits + stats["retrieval_score"] * stats["rows"]
            rows += stats["rows"]
    finally:
        bar.close()
    score = hits / rows
    scalars["top_head_score"] = float(score.max())
    scalars["num_retrieval_heads"] = float((score >= cfg.head_threshold).sum())
    ranked = sorted(np.ndindex(score.shape), key=lambda lh: -score[lh])
    details = {
        "lengths": lengths,
        "depths": [float(x) for x in depths],
        "num_examples": cfg.num_examples,
        "seed": cfg.seed,
        "rope_kind": cfg.rope_kind,
        "head_threshold": float(cfg.head_threshold),
        "by_length": by_length,
        "retrieval_score": score.tolist(),
        "top_heads": [
            dict(layer=int(layer), head=int(head), score=float(score[layer, head]))
            for layer, head in ranked[:10]
        ],
    }
    return scalars, details
