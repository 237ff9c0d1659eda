"""An independent float64 numpy forward pass of DecoderLM (nothing imported from the model).

    embed -> L x [x += out(attn(rope(q), rope(k), v)) of rmsnorm(x); x += swiglu(rmsnorm(x))]
          -> rmsnorm -> tied head (embedding transposed) or untied head

Attention is causal on positions, within a document (segment), with GQA (query head n reads
key/value head n // (num_heads // num_kv_heads)), scaled by 1 / sqrt(head_dim); RoPE is the
default kind, "half" layout (feature i pairs with i + head_dim / 2). Used by
test_model_numpy_forward.py and by the notebook test (for the attention maps it prints).
"""

from __future__ import annotations

import numpy as np


def check_supported(cfg) -> None:
    """ValueError unless `cfg` (a model config) is one this reference computes."""
    unsupported = {
        "position.kind": (cfg.position.kind, "rope"),
        "position.rope_kind": (cfg.position.rope_kind, "default"),
        "position.layout": (cfg.position.layout, "half"),
        "attention.kind": (cfg.attention.kind, "dense"),
        "attention.logits_soft_cap": (cfg.attention.logits_soft_cap, None),
    }
    bad = {name: got for name, (got, want) in unsupported.items() if got != want}
    if bad:
        raise ValueError(f"the numpy reference does not implement {bad}")


def rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def rope(x_BTNH, positions_BT, base):
    h = x_BTNH.shape[-1]
    inv_freq = 1.0 / base ** (np.arange(0, h, 2) / h)  # [h / 2]
    angle = positions_BT[:, :, None, None] * inv_freq  # [B, T, 1, h / 2]
    x1, x2 = x_BTNH[..., : h // 2], x_BTNH[..., h // 2 :]
    return np.concatenate(
        [x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1
    )


def causal_gqa_attention(q_BTNH, k_BTKH, v_BTKH, positions_BT, segments_BT):
    """(output [B, T, N, H], probabilities [B, N, T, T], 0 where a key is hidden)."""
    b, t, n, h = q_BTNH.shape
    group = n // k_BTKH.shape[2]
    visible = (positions_BT[:, None, :] <= positions_BT[:, :, None]) & (
        segments_BT[:, None, :] == segments_BT[:, :, None]
    )  # [B, query, key]
    out = np.zeros_like(q_BTNH)
    probs = np.zeros((b, n, t, t))
    for head in range(n):
        kv = head // group
        logits = np.einsum("bth,bsh->bts", q_BTNH[:, :, head], k_BTKH[:, :, kv]) / np.sqrt(h)
        logits = np.where(visible, logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        probs[:, head] = p
        out[:, :, head] = np.einsum("bts,bsh->bth", p, v_BTKH[:, :, kv])
    return out, probs


def silu(x):
    return x / (1.0 + np.exp(-x))


def reference_forward(params, cfg, tokens, positions=None, segments=None):
    """(logits [B, T, vocab], attention probabilities [layers, B, N, T, T]), float64.

    `params` is DecoderLM's parameter tree (unboxed); positions default to arange per row and
    segments to one document per row.
    """
    check_supported(cfg)
    p = _to_float64(params)
    tokens = np.asarray(tokens)
    b, t = tokens.shape
    positions = np.broadcast_to(np.arange(t), (b, t)) if positions is None else positions
    segments = np.zeros((b, t), np.int64) if segments is None else segments
    positions, segments = np.asarray(positions), np.asarray(segments)
    eps, base = cfg.norm_eps, cfg.position.rope_base
    x = p["embedding"]["embedding"][tokens]
    maps = []
    for layer in range(cfg.num_layers):
        block = p[f"blocks_{layer}"]
        att = block["attention"]
        h = rms_norm(x, block["attention_norm"]["scale"], eps)
        q = rope(np.einsum("btd,dnh->btnh", h, att["query"]), positions, base)
        k = rope(np.einsum("btd,dkh->btkh", h, att["key"]), positions, base)
        v = np.einsum("btd,dkh->btkh", h, att["value"])
        out, probs = causal_gqa_attention(q, k, v, positions, segments)
        maps.append(probs)
        x = x + np.einsum("btnh,nhd->btd", out, att["out"])
        mlp = block["mlp"]
        h = rms_norm(x, block["mlp_norm"]["scale"], eps)
        x = x + (silu(h @ mlp["gate"]) * (h @ mlp["up"])) @ mlp["down"]
    x = rms_norm(x, p["final_norm"]["scale"], eps)
    head = p["embedding"]["embedding"].T if cfg.tie_embeddings else p["head"]
    return x @ head, np.stack(maps)


def reference_logits(params, cfg, tokens, positions=None, segments=None):
    return reference_forward(params, cfg, tokens, positions, segments)[0]


def _to_float64(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {key: _to_float64(value) for key, value in tree.items()}
    return np.asarray(tree, np.float64)
