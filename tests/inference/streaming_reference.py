"""An independent float64 numpy model of a one-layer DecoderLM decoding through an evicting cache.

Written from the policy definitions (longctx_jax/inference/spec.py), importing nothing from the
inference package: per step, the chunk's queries attend over the kept tokens and the chunk
(causal), the policy's scores are updated from those attention probabilities (or key norms), and
the cache keeps `capacity` tokens (the highest scores; on a tie, the newer token). For "sinks"
the step's positions are ranks within the cache (StreamingLLM). Returns the logits of every
token and the write orders kept at the end.
"""

from __future__ import annotations

import flax.linen as nn
import numpy as np
from model.numpy_reference import _to_float64, rms_norm, rope, silu


def _layer(p, cfg, tokens):
    """(residual x [T, D], unrotated q [T, N, H], k [T, K, H], v [T, K, H]) of one row."""
    block = p["blocks_0"]
    x = p["embedding"]["embedding"][tokens]
    h = rms_norm(x, block["attention_norm"]["scale"], cfg.norm_eps)
    att = block["attention"]
    return (
        x,
        np.einsum("td,dnh->tnh", h, att["query"]),
        np.einsum("td,dkh->tkh", h, att["key"]),
        np.einsum("td,dkh->tkh", h, att["value"]),
    )


def _finish(p, cfg, x, out_NH):
    block = p["blocks_0"]
    x = x + np.einsum("nh,nhd->d", out_NH, block["attention"]["out"])
    h = rms_norm(x, block["mlp_norm"]["scale"], cfg.norm_eps)
    mlp = block["mlp"]
    x = x + (silu(h @ mlp["gate"]) * (h @ mlp["up"])) @ mlp["down"]
    x = rms_norm(x, p["final_norm"]["scale"], cfg.norm_eps)
    return x @ p["embedding"]["embedding"].T


def _rot(x_NH, position, base):
    return rope(x_NH[None, None], np.array([[position]], np.float64), base)[0, 0]


def stream(params, cfg, tokens, *, policy, capacity, sinks=0, recent=0, pool=7, prefill=1):
    """(logits [T, V], kept write orders sorted) of one row: a first chunk of `prefill` tokens,
    then one token per step."""
    p = _to_float64(nn.unbox(params)["params"])
    tokens = np.asarray(tokens)
    t_len = len(tokens)
    x, q, k, v = _layer(p, cfg, tokens)
    n, kh, h = q.shape[1], k.shape[1], k.shape[2]
    group, base = n // kh, cfg.position.rope_base
    kept, score = [], {}  # write orders; policy score per order
    logits = np.zeros((t_len, p["embedding"]["embedding"].shape[0]))
    steps = [list(range(prefill))] + [[i] for i in range(prefill, t_len)]
    for chunk in steps:
        length_after = chunk[-1] + 1
        entries = kept + chunk
        if policy == "sinks":
            start = max(sinks, chunk[0] - (capacity - sinks))
            pos = {o: (o if o < sinks else sinks + o - start) for o in entries}
        else:
            pos = {o: o for o in entries}
        received = np.zeros((len(chunk), len(entries)))  # summed over heads
        for qi, o_q in enumerate(chunk):
            out = np.zeros((n, h))
            for head in range(n):
                kv = head // group
                qr = _rot(q[o_q, head][None], pos[o_q], base)[0]
                visible = [e for e in entries if e <= o_q]
                keys = np.stack([_rot(k[e, kv][None], pos[e], base)[0] for e in visible])
                s = keys @ qr / np.sqrt(h)
                w = np.exp(s - s.max())
                w /= w.sum()
                out[head] = w @ v[visible, kv]
                for e, we in zip(visible, w, strict=True):
                    received[qi, entries.index(e)] += we
            logits[o_q] = _finish(p, cfg, x[o_q], out)
        if policy == "h2o":
            for j, e in enumerate(entries):
                score[e] = score.get(e, 0.0) + received[:, j].sum()
        elif policy == "tova":
            for j, e in enumerate(entries):
                score[e] = received[-1, j] / n
        elif policy == "knorm":
            for e in chunk:
                score[e] = -np.linalg.norm(k[e], axis=-1).mean()
        elif policy == "snapkv":
            if len(chunk) > 1:
                window = [i for i, o in enumerate(chunk) if o >= length_after - max(recent, 1)]
                observed = received[window].sum(0)
                half = pool // 2
                for j, e in enumerate(entries):
                    score[e] = observed[max(0, j - half) : j + half + 1].max()
            else:
                score[chunk[0]] = np.inf
        if len(entries) <= capacity:
            kept = entries
        elif policy == "window":
            kept = entries[-capacity:]
        elif policy == "sinks":
            kept = [e for e in entries if e < sinks] + entries[-(capacity - sinks) :]
        else:
            forced = [e for e in entries if e >= length_after - recent]
            rest = sorted((e for e in entries if e not in forced), key=lambda e: (-score[e], -e))[
                : capacity - len(forced)
            ]
            kept = sorted(forced + rest)
    return logits, sorted(kept)
