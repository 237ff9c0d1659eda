"""Where attention goes while a model answers a needle-in-a-haystack question: attention dilution
and retrieval heads, from the captured attention probabilities of one teacher-forced pass.

    stats = needle_attention_stats(config.model, params, examples, pad_len=1024, batch_size=2)
    stats["needle_mass"]        # [layers, heads]: mean attention mass on the needle
    stats["retrieval_score"]    # [layers, heads]: Wu et al.'s retrieval score

The rows: for every answer token t of a NIAH example that is a digit of a value (the separators
", " between values are not copied from anywhere), the query position r = t - 1 that produces it,
the needle sentence [start, end) holding that value (`metadata["needles"]`), and the target
token tokens[t]. Per row and per (layer, head), from the attention probabilities A[r, :]:

  * needle mass: sum of A[r, s] over the needle's span s in [start, end);
  * entropy (nats): -sum_s A[r, s] log A[r, s] over the row; with uniform attention over the
    r + 1 keys a causal row sees, it is log(r + 1) (`uniform_entropy` is its mean over the rows:
    the ceiling to compare against);
  * retrieval hit (Wu et al., 2024, "Retrieval Head Mechanistically Explains Long-Context
    Factuality"): the head's most attended key s = argmax A[r, :] lies in the needle and holds
    the token being produced (tokens[s] == tokens[t]), i.e. the head is copying from the needle.
    A head's retrieval score is its fraction of hits over all rows; Wu et al. call heads with a
    score >= 0.1 retrieval heads.

Attention dilution is how needle mass falls (and entropy rises) with context length. The answer is
teacher-forced, so rows are scored whether or not the model would have produced the answer.
Capturing attention costs O(T^2) memory per layer and head ([layers, batch, heads, T, T] float32
inside the jitted pass; only the statistics come back), so lengths are for small models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.data.tasks import TaskExample
from longctx_jax.data.tasks.niah import ANSWER_SEPARATOR
from longctx_jax.eval.task_eval import padded_batch
from longctx_jax.model import DecoderLM, attention_maps


def answer_sources(example: TaskExample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows int32 [R], spans int32 [R, 2], targets int32 [R]) of a NIAH example (see the
    module docstring): per answer digit, the query row producing it, its needle's [start, end)
    and the digit's token."""
    if example.task != "niah":
        raise ValueError(f"example.task={example.task!r}: expected 'niah'")
    meta = example.metadata
    by_value = {needle["value"]: needle for needle in meta["needles"]}
    rows, spans, targets = [], [], []
    offset = example.prompt_len
    for value in meta["answer"].split(ANSWER_SEPARATOR):
        needle = by_value[value]
        for d in range(len(value)):
            t = offset + d
            rows.append(t - 1)
            spans.append((needle["start"], needle["end"]))
            targets.append(int(example.tokens[t]))
        offset += len(value) + len(ANSWER_SEPARATOR)
    return (
        np.asarray(rows, np.int32),
        np.asarray(spans, np.int32).reshape(-1, 2),
        np.asarray(targets, np.int32),
    )


def needle_row_stats(attn_LBNTS, tokens_BS, rows_BR, spans_BR2, targets_BR) -> dict:
    """Per (layer, batch, head, row) statistics of the attention rows `rows_BR`.

    attn_LBNTS: probabilities [L, B, N, T, S]; tokens_BS: the keys' tokens [B, S]; rows_BR: query
    positions [B, R]; spans_BR2: [start, end) of each row's needle; targets_BR: each row's
    produced token. Returns float32 `mass`, `entropy` (nats) and bool `hit` (argmax key in the
    needle holding the target token), each [L, B, N, R].
    """
    attn = jnp.asarray(attn_LBNTS, jnp.float32)
    rows = jnp.asarray(rows_BR)
    index = rows[None, :, None, :, None]  # [1, B, 1, R, 1]
    a_LBNRS = jnp.take_along_axis(attn, index, axis=3)
    s = jnp.arange(attn.shape[-1])
    spans = jnp.asarray(spans_BR2)
    in_span_BRS = (s >= spans[..., :1]) & (s < spans[..., 1:])
    mass = jnp.sum(jnp.where(in_span_BRS[None, :, None], a_LBNRS, 0.0), axis=-1)
    positive = a_LBNRS > 0
    plogp = jnp.where(positive, a_LBNRS * jnp.log(jnp.where(positive, a_LBNRS, 1.0)), 0.0)
    entropy = -jnp.sum(plogp, axis=-1)
    top_LBNR = jnp.argmax(a_LBNRS, axis=-1)
    b = jnp.arange(rows.shape[0])[None, :, None, None]
    r = jnp.arange(rows.shape[1])[None, None, None, :]
    top_in_span = in_span_BRS[b, r, top_LBNR]
    top_token = jnp.asarray(tokens_BS)[b, top_LBNR]
    hit = top_in_span & (top_token == jnp.asarray(targets_BR)[:, None, :])
    return dict(mass=mass, entropy=entropy, hit=hit)


def needle_attention_fn(model_config):
    """jit((params, tokens [B, T], positions [B, T], rows [B, R], spans [B, R, 2], targets
    [B, R]) -> `needle_row_stats`) of `DecoderLM(model_config)` with captured attention."""
    kind = model_config.attention.get("kind", "dense")
    if kind != "dense":
        raise ValueError(
            f"model.attention.kind={kind!r}: attention capture (the attention probabilities "
            "every query puts on every key) is only available for 'dense' attention"
        )
    model = DecoderLM(model_config)

    def stats(params, tokens_BT, positions_BT, rows_BR, spans_BR2, targets_BR):
        _, state = model.apply(
            {"params": params},
            tokens_BT,
            positions=positions_BT,
            capture_attention=True,
            mutable=["intermediates"],
        )
        attn_LBNTT = attention_maps(state)
        return needle_row_stats(attn_LBNTT, tokens_BT, rows_BR, spans_BR2, targets_BR)

    return jax.jit(stats)


def needle_attention_stats(
    stats_fn, params, examples, *, pad_len: int, batch_size: int, on_batch=None
) -> dict:
    """Sums over `examples` (NIAH TaskExamples) of the per-row statistics, per (layer, head).

    `stats_fn`: a `needle_attention_fn`. Batches have the fixed shape [batch_size, pad_len] (a
    short last batch is filled with copies of its first example, not counted). Returns numpy
    float64: needle_mass, entropy, retrieval_score [layers, heads] (means over all rows),
    uniform_entropy (mean log(r + 1) over the rows) and rows (their count).
    """
    if not examples:
        raise ValueError("examples: none given; expected at least one NIAH TaskExample")
    sources = [answer_sources(e) for e in examples]
    width = max(len(rows) for rows, _, _ in sources)
    totals = None
    count = 0
    uniform = 0.0
    for first in range(0, len(examples), batch_size):
        chunk = list(range(first, min(first + batch_size, len(examples))))
        padded = chunk + [chunk[0]] * (batch_size - len(chunk))
        tokens, positions = padded_batch([examples[i].tokens[:-1] for i in padded], pad_len)
        rows = np.zeros((batch_size, width), np.int32)
        spans = np.zeros((batch_size, width, 2), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        valid = np.zeros((batch_size, width), bool)
        for b, i in enumerate(padded):
            n = len(sources[i][0])
            rows[b, :n], spans[b, :n], targets[b, :n] = sources[i]
            valid[b, :n] = b < len(chunk)
        out = jax.device_get(stats_fn(params, tokens, positions, rows, spans, targets))
        sums = {
            name: np.einsum("lbnr,br->ln", np.asarray(value, np.float64), valid.astype(np.float64))
            for name, value in out.items()
        }
        totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
        count += int(valid.sum())
        uniform += float(np.log(rows[valid] + 1.0).sum())
        if on_batch is not None:
            on_batch()
    return dict(
        needle_mass=totals["mass"] / count,
        entropy=totals["entropy"] / count,
        retrieval_score=totals["hit"] / count,
        uniform_entropy=uniform / count,
        rows=count,
    )
