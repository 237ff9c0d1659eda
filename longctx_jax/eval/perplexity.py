"""Perplexity by position: sliding-window evaluation on the validation split, at any length.

    result = perplexity_by_position(config.model, params, config.data, eval_len=4 * train_len)
    result["perplexity"], result["by_position"]["nll"]

Windows, per document (documents are never concatenated):
  A validation document of N bytes has M = N - 1 next-token targets (input j = byte j predicts
  target j = byte j + 1). Only documents with M >= eval_len are evaluated (the others are counted
  in `skipped_documents`), so every window is eval_len tokens of one document. Windows:

      window 0:  inputs [0, eval_len)                        scores window positions [0, eval_len)
      window k:  ends at e_k = min(e_{k-1} + stride, M),     scores window positions
                 inputs [e_k - eval_len, e_k)                [eval_len - (e_k - e_{k-1}), eval_len)

  so each target of a document is scored exactly once; a target scored at window position p was
  predicted from the p + 1 tokens before it in its window (itself included), and every target
  scored outside window 0 has p >= eval_len - stride. The last window is aligned with the end of
  the document (it may advance by less than `stride`, and then scores fewer tokens). With
  stride == eval_len, windows are disjoint chunks that each score all their tokens, and
  `by_position` is the classic "loss vs position" curve; with stride < eval_len (default
  eval_len // 2) positions below eval_len - stride are scored only in each document's first
  window (their counts say so).

Positions passed to the model are 0..eval_len - 1 in every window (segment_ids: one document per
row), whatever the training length: a model trained at length L evaluated at eval_len > L sees
positions it never saw. That extrapolation is the point of the measurement.

Eval-time context extension (PI, NTK, dynamic NTK, YaRN, Llama 3 applied to a model trained with
plain RoPE) and STRING's shifted distances change only the model config, never the parameters:
`with_eval_rope` returns it.

`by_position`: the mean NLL (nats) of scored targets per bucket of window position. `buckets`
is a number n of equal-width buckets (edges round(i * eval_len / n), default 16) or an explicit
increasing list of edges from 0 to eval_len. Linear buckets, because the question is "what
happens past the training length", and at eval_len = k * L the bucket edges then fall on
multiples of L when 16 is a multiple of k.

Tokens are bytes, so bits per byte = nll / ln 2.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from longctx_jax.data.config import validate_data_config
from longctx_jax.data.sources import document_source
from longctx_jax.model import DecoderLM, freeze_model_config

# logits_fn(params, tokens int32 [B, T], positions int32 [B, T]) -> logits [B, T, vocab]; traced
# under jax.jit by the evaluations (tests inject fakes with the same signature).
LogitsFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

DEFAULT_BUCKETS = 16
EVAL_ROPE_KINDS = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "string")


def model_logits_fn(model_config) -> LogitsFn:
    """The `DecoderLM` forward as a LogitsFn: (params, tokens, positions) -> float32 logits."""
    model = DecoderLM(model_config)

    def logits_fn(params, tokens_BT, positions_BT):
        return model.apply({"params": params}, tokens_BT, positions=positions_BT)

    return logits_fn


def with_eval_rope(model_config, kind: str, train_len: int, eval_len: int, **scaling):
    """A copy of a plain-RoPE model config with eval-time RoPE scaling `kind` for eval_len.

    The parameters stay the same; only the rotation frequencies (YaRN: also a cos/sin scale;
    STRING: the far relative distances) change. factor = max(1, eval_len / train_len) (rope
    factors must be >= 1: at eval_len <= train_len every kind but "string" is plain RoPE, bit for
    bit). Per kind, the `rope_scaling` fields set:

      default  none (plain RoPE extrapolation: the baseline).
      linear   factor (position interpolation: every frequency / factor, i.e. positions / factor).
      ntk      factor (static NTK-aware: base * factor ** (d / (d - 2))).
      dynamic  factor=1.0, max_position_embeddings=train_len: frequencies of NTK with scale
               T / train_len, where T is the length of the forward pass (the model computes them at
               trace time from T). Note: a sliding-window or passkey evaluation runs one pass of
               T = eval_len, so there dynamic equals `ntk` at factor eval_len / train_len; the two
               differ in token-by-token generation (growing T), not in these evaluations.
      yarn     factor, original_max_position_embeddings=train_len (beta_fast 32, beta_slow 1,
               attention factor 0.1 ln(factor) + 1: the Hugging Face defaults).
      llama3   factor, original_max_position_embeddings=train_len, low_freq_factor=1.0,
               high_freq_factor=4.0 (Llama 3.1's values).
      string   no rope_scaling: position.string_shift = train_len // 3 and string_window =
               max(1, min(128, train_len // 8)) (STRING, An et al. 2024: distances d >= shift
               are read at d - shift + window; the paper's S = N / 3, W = 128), at every
               eval_len, since STRING helps within the training length too.

    `**scaling` overrides or adds `rope_scaling` fields (Hugging Face names, e.g. beta_fast=16.0);
    for "string" it takes `shift=` and `window=` instead.
    The input must be a `position.kind="rope"`, `rope_kind="default"` config without STRING (what
    these schemes extend); the result has the input's type (ConfigDict or FrozenConfigDict) and is
    validated.
    """
    if kind not in EVAL_ROPE_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {EVAL_ROPE_KINDS}")
    for name, value in (("train_len", train_len), ("eval_len", eval_len)):
        _check_positive_int(name, value)
    frozen_input = isinstance(model_config, ml_collections.FrozenConfigDict)
    # as_configdict() can hand back the ConfigDict the frozen one was built from: copy it too.
    cfg = copy.deepcopy(model_config.as_configdict() if frozen_input else model_config)
    position = cfg.position
    if position.kind != "rope" or position.rope_kind != "default" or position.string_shift:
        raise ValueError(
            f"model_config.position (kind={position.kind!r}, rope_kind={position.rope_kind!r}, "
            f"string_shift={position.string_shift!r}): expected kind='rope', "
            "rope_kind='default', string_shift=0 (eval-time scaling extends a model trained with "
            "plain RoPE)"
        )
    if kind == "string":
        string = {"shift": train_len // 3, "window": max(1, min(128, train_len // 8))}
        unknown = sorted(set(scaling) - set(string))
        if unknown:
            raise ValueError(
                f"kind='string': unexpected arguments {unknown}; expected shift=, window="
            )
        string |= scaling
        position.string_shift, position.string_window = string["shift"], string["window"]
    else:
        _set_rope_scaling(cfg, kind, train_len, eval_len, scaling)
    frozen = freeze_model_config(cfg)  # validates: rope_frequencies must accept the fields
    return frozen if frozen_input else cfg


def _set_rope_scaling(cfg, kind: str, train_len: int, eval_len: int, scaling: dict) -> None:
    """Sets cfg.position's rope_kind and rope_scaling fields for `with_eval_rope`'s `kind`."""
    factor = max(1.0, eval_len / train_len)
    fields = {
        "default": {},
        "linear": {"factor": factor},
        "ntk": {"factor": factor},
        "dynamic": {"factor": 1.0, "max_position_embeddings": train_len},
        "yarn": {"factor": factor, "original_max_position_embeddings": train_len},
        "llama3": {
            "factor": factor,
            "original_max_position_embeddings": train_len,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        },
    }[kind] | scaling
    rope_scaling = cfg.position.rope_scaling
    keep = {"partial_rotary_factor"}  # a property of the trained model, not of the scaling
    for name in rope_scaling.keys():
        if name not in keep:
            rope_scaling[name] = None
    for name, value in fields.items():
        if name not in rope_scaling:
            raise ValueError(
                f"{name}={value!r}: not a model.position.rope_scaling field "
                f"(expected one of {sorted(rope_scaling.keys())})"
            )
        rope_scaling[name] = value
    cfg.position.rope_kind = kind


def sliding_windows(num_targets: int, eval_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, first_scored) of each window over a document with `num_targets` targets.

    The window feeds inputs [start, start + eval_len) and scores window positions
    [first_scored, eval_len); see the module docstring. [] if num_targets < eval_len.
    """
    if num_targets < eval_len:
        return []
    windows = [(0, 0)]
    end = eval_len  # targets [0, end) are scored
    while end < num_targets:
        new_end = min(end + stride, num_targets)
        start = new_end - eval_len
        windows.append((start, end - start))
        end = new_end
    return windows


def bucket_edges(eval_len: int, buckets) -> np.ndarray:
    """Increasing int edges [0, ..., eval_len] of the position buckets (see module docstring)."""
    if isinstance(buckets, Integral) and not isinstance(buckets, bool):
        if not 1 <= buckets <= eval_len:
            raise ValueError(
                f"buckets={buckets!r}: expected an integer in [1, eval_len={eval_len}]"
            )
        return np.asarray([round(i * eval_len / buckets) for i in range(buckets + 1)], np.int64)
    if not isinstance(buckets, Sequence) or isinstance(buckets, str):
        raise ValueError(f"buckets={buckets!r}: expected an int or a sequence of edges")
    edges = np.asarray(buckets)
    ok = (
        edges.ndim == 1
        and edges.size >= 2
        and np.issubdtype(edges.dtype, np.integer)
        and edges[0] == 0
        and edges[-1] == eval_len
        and np.all(np.diff(edges) > 0)
    )
    if not ok:
        raise ValueError(
            f"buckets={list(buckets)!r}: expected strictly increasing integers from 0 to "
            f"eval_len={eval_len}"
        )
    return edges.astype(np.int64)


def nll_fn(logits_fn: LogitsFn):
    """jit((params, tokens, positions, targets) -> per-token NLL float32 [B, T]); one compile
    per input shape."""

    def per_token_nll(params, tokens_BT, positions_BT, targets_BT):
        logits_BTV = logits_fn(params, tokens_BT, positions_BT).astype(jnp.float32)
        log_z = jax.nn.logsumexp(logits_BTV, axis=-1)
        picked = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
        return log_z - picked

    return jax.jit(per_token_nll)


def perplexity_by_position(
    model_config,
    params,
    data_config,
    *,
    eval_len: int,
    stride: int | None = None,
    num_windows: int | None = None,
    num_documents: int | None = None,
    min_doc_len: int | None = None,
    max_doc_len: int | None = None,
    batch_size: int = 8,
    buckets=DEFAULT_BUCKETS,
    logits_fn: LogitsFn | None = None,
    progress: bool = True,
) -> dict:
    """Sliding-window NLL of the validation split at window length `eval_len`, by position.

    Args:
      model_config: the `model` config (e.g. from `with_eval_rope`); unused if `logits_fn` given.
      params: the model parameters (`load_params`).
      data_config: the `data` config; its corpus and `validation_fraction` choose the documents.
      eval_len: window length (model positions 0..eval_len - 1).
      stride: new targets per window after the first (default eval_len // 2, at least 1).
      num_windows: evaluate only the first `num_windows` windows (documents in path order, windows
        in order; deterministic); None: all.
      num_documents: evaluate only the first `num_documents` usable documents (path order).
      min_doc_len: use only documents with at least this many bytes (default and minimum
        eval_len + 1). To compare lengths on the same text, pass the longest eval_len + 1 at
        every length (with `max_doc_len` and `num_documents` fixed): every length then scores
        exactly the same targets, and only their context differs.
      max_doc_len: read only the first `max_doc_len` bytes of each document (None: all).
      batch_size: windows per forward pass (the last batch is padded with unscored rows).
      buckets: number of equal-width position buckets, or explicit edges (module docstring).
      logits_fn: LogitsFn to evaluate instead of `DecoderLM(model_config)` (must be traceable).
      progress: show a tqdm bar.

    Returns a JSON-able dict: eval_len, stride, nll (mean nats per scored target), perplexity,
    bits_per_byte, tokens (scored targets), num_windows, num_documents (evaluated),
    skipped_documents (documents read, before any `num_windows` cap was reached, that are
    shorter than eval_len + 1 bytes), and by_position = {edges [n + 1], nll [n] (None for an
    empty bucket), tokens [n]}. The forward pass is jitted once per call (one input shape).
    """
    _check_positive_int("eval_len", eval_len)
    stride = max(1, eval_len // 2) if stride is None else stride
    _check_positive_int("stride", stride)
    if stride > eval_len:
        raise ValueError(f"stride={stride!r}: expected an integer in [1, eval_len={eval_len}]")
    if num_windows is not None:
        _check_positive_int("num_windows", num_windows)
    _check_positive_int("batch_size", batch_size)
    edges = bucket_edges(eval_len, buckets)
    validate_data_config(data_config)

    source = document_source(data_config, "validation")
    min_len = eval_len + 1 if min_doc_len is None else max(min_doc_len, eval_len + 1)
    if max_doc_len is not None and max_doc_len < min_len:
        raise ValueError(f"max_doc_len={max_doc_len!r}: expected >= {min_len} (min_doc_len)")
    plan, skipped, longest, used = [], 0, 0, 0  # plan: (document index, start, first_scored)
    for index in range(len(source)):
        if num_windows is not None and len(plan) >= num_windows:
            break
        if num_documents is not None and used >= num_documents:
            break
        length = len(source[index])
        longest = max(longest, length)
        if length < min_len:
            skipped += 1
            continue
        length = length if max_doc_len is None else min(length, max_doc_len)
        used += 1
        plan.extend(
            (index, start, first) for start, first in sliding_windows(length - 1, eval_len, stride)
        )
    if num_windows is not None:
        plan = plan[:num_windows]
    if not plan:
        raise ValueError(
            f"eval_len={eval_len}: no validation document has eval_len + 1 = {eval_len + 1} "
            f"bytes (the longest has {longest}); lower eval_len or use a corpus of longer documents"
        )

    forward = nll_fn(model_logits_fn(model_config) if logits_fn is None else logits_fn)
    positions = np.broadcast_to(np.arange(eval_len, dtype=np.int32), (batch_size, eval_len))
    bucket_of = np.searchsorted(edges, np.arange(eval_len), side="right") - 1
    num_buckets = len(edges) - 1
    bucket_sum = np.zeros(num_buckets, np.float64)
    bucket_count = np.zeros(num_buckets, np.int64)

    def accumulate(nll_BT, weights_BT):
        nll_BT = np.asarray(nll_BT, np.float64)
        per_position_sum = (nll_BT * weights_BT).sum(axis=0)
        np.add.at(bucket_sum, bucket_of, per_position_sum)
        np.add.at(bucket_count, bucket_of, weights_BT.sum(axis=0).astype(np.int64))

    cache = {}  # the document being read (windows of a document are consecutive)
    num_batches = math.ceil(len(plan) / batch_size)
    pending = None
    bar = tqdm(total=num_batches, desc=f"perplexity@{eval_len}", unit="batch", disable=not progress)
    try:
        for first in range(0, len(plan), batch_size):
            tokens = np.zeros((batch_size, eval_len), np.int32)
            targets = np.zeros((batch_size, eval_len), np.int32)
            weights = np.zeros((batch_size, eval_len), np.float64)
            for row, (index, start, first_scored) in enumerate(plan[first : first + batch_size]):
                if index not in cache:
                    cache.clear()
                    cache[index] = np.asarray(source[index][:max_doc_len], np.int32)
                doc = cache[index]
                tokens[row] = doc[start : start + eval_len]
                targets[row] = doc[start + 1 : start + eval_len + 1]
                weights[row, first_scored:] = 1.0
            result = forward(params, tokens, positions, targets)  # dispatched asynchronously
            if pending is not None:
                accumulate(*pending)
                bar.update(1)
            pending = (result, weights)
        accumulate(*pending)
        bar.update(1)
    finally:
        bar.close()

    total = int(bucket_count.sum())
    nll = float(bucket_sum.sum() / total)
    return {
        "eval_len": eval_len,
        "stride": stride,
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_byte": nll / math.log(2),
        "tokens": total,
        "num_windows": len(plan),
        "num_documents": len({index for index, _, _ in plan}),
        "skipped_documents": skipped,
        "by_position": {
            "edges": edges.tolist(),
            "nll": [
                float(s / c) if c else None for s, c in zip(bucket_sum, bucket_count, strict=True)
            ],
            "tokens": bucket_count.tolist(),
        },
    }


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
