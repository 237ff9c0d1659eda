"""The lightning indexer (DeepSeek-V3.2 DSA): a cheap per-query score over every visible key.

    I[t, s] = sum_j w[t, j] * relu(q_idx[t, j] . k_idx[s])

A few index heads j of small dimension read the hidden state; every token has one index key
shared by all heads (normalised, so its scale is learned once); the first `rope_dim` dimensions
of queries and keys are rotated by RoPE in the half-split layout (DeepSeek's indexer layout);
the per-head weights w come from a linear map with no activation. Scores are float32 and -inf
wherever the `AttentionMask` hides the key.

The rotation follows the model's position scheme, as DeepSeek-V3.2's reference indexer reuses
its MLA's YaRN-scaled frequencies: `rope_kind`, `rope_base` and `rope_scaling` (Hugging Face
`rope_parameters` names, as pairs) give `rope_frequencies(rope_dim, ...)` at the input's length,
i.e. the model's scheme evaluated for a rotary head of `rope_dim` dimensions. Its cos/sin scale
(YaRN's mscale, LongRoPE's factor) is not applied: DeepSeek puts mscale in the main attention's
softmax scale, never in the indexer. The layout stays half-split whatever the model's layout
(DeepSeek's MLA is interleaved, its indexer not). `rope_dim = 0` rotates nothing (NoPE).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from longctx_jax.attention.logits import tile_visible
from longctx_jax.attention.mask import AttentionMask
from longctx_jax.positions import apply_rope, rope_frequencies


class LightningIndexer(nn.Module):
    """Hidden state [B, T, D] -> (q_idx [B, T, J, I], k_idx [B, T, I], w [B, T, J]).

    `w` already carries the 1 / sqrt(J * I) scale, so `index_scores` is a plain weighted sum.
    """

    num_heads: int = 4
    head_dim: int = 32
    rope_dim: int = 16
    rope_base: float = 10000.0
    rope_kind: str = "default"
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs for rope_frequencies
    init_std: float = 0.02
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BTD, positions_BT, seq_len: int | None = None):
        """`seq_len` (default T) is the length RoPE's length-dependent kinds are evaluated at."""
        j, i, r = self.num_heads, self.head_dim, self.rope_dim
        if r % 2 or not 0 <= r <= i:
            raise ValueError(f"rope_dim={r}: expected an even number in [0, head_dim={i}]")
        d = x_BTD.shape[-1]

        def param(name, shape, names, init):
            w = self.param(name, nn.with_logical_partitioning(init, names), shape, self.param_dtype)
            return w.astype(self.dtype)

        normal = nn.initializers.normal(stddev=self.init_std)
        wq_DJI = param("query", (d, j, i), ("embed", None, None), normal)
        wk_DI = param("key", (d, i), ("embed", None), normal)
        ww_DJ = param("weights", (d, j), ("embed", None), normal)
        norm_scale = param("key_norm_scale", (i,), (None,), nn.initializers.ones)
        norm_bias = param("key_norm_bias", (i,), (None,), nn.initializers.zeros)

        x = x_BTD.astype(self.dtype)
        q_BTJI = jnp.einsum("btd,dji->btji", x, wq_DJI)
        k_BTI = _layer_norm(
            jnp.einsum("btd,di->bti", x, wk_DI), norm_scale, norm_bias, self.norm_eps
        )
        w_BTJ = jnp.einsum("btd,dj->btj", x, ww_DJ).astype(jnp.float32) * (j * i) ** -0.5
        if r:
            inv_freq, _ = rope_frequencies(  # the cos/sin scale stays off (module docstring)
                r,
                base=self.rope_base,
                kind=self.rope_kind,
                seq_len=x_BTD.shape[1] if seq_len is None else seq_len,
                **dict(self.rope_scaling),
            )
            q_BTJI = apply_rope(q_BTJI, positions_BT, inv_freq, layout="half")
            k_BTI = apply_rope(k_BTI[:, :, None], positions_BT, inv_freq, layout="half")[:, :, 0]
        return q_BTJI, k_BTI.astype(self.dtype), w_BTJ


def index_scores(q_BTJI, k_BSI, w_BTJ, mask: AttentionMask | None = None) -> jax.Array:
    """Scores I [B, T, S] float32 for every (query, key) pair; -inf where the mask hides the key."""
    _check_features(q_BTJI, k_BSI, w_BTJ)
    b, t, _, _ = q_BTJI.shape
    s = k_BSI.shape[1]
    mask = AttentionMask() if mask is None else mask
    mask.validate(b, t, s)
    m = mask.resolved(b, t, s)
    ok_BTS = tile_visible(
        m.causal, m.window, m.q_positions, m.kv_positions, m.q_segment_ids, m.kv_segment_ids
    )[:, 0, 0]
    return jnp.where(ok_BTS, score_tile(q_BTJI, k_BSI, w_BTJ), -jnp.inf)


def scores_at(q_BTJI, k_BSI, w_BTJ, indices_BTn, valid_BTn) -> jax.Array:
    """Scores [B, T, n] float32 of the selected keys only (-inf where not valid): O(T * n) memory,
    for the indexer's loss in the sparse stage without the [T, S] matrix."""
    _check_features(q_BTJI, k_BSI, w_BTJ)
    k_sel = jnp.take_along_axis(k_BSI[:, None], indices_BTn[..., None], axis=2)  # [B, T, n, I]
    dots = jnp.einsum("btji,btni->btjn", q_BTJI, k_sel, preferred_element_type=jnp.float32)
    scores = jnp.einsum("btjn,btj->btn", jax.nn.relu(dots), w_BTJ.astype(jnp.float32))
    return jnp.where(valid_BTn, scores, -jnp.inf)


def score_tile(q_BTJI, k_BSI, w_BTJ) -> jax.Array:
    """Unmasked sum_j w[t, j] * relu(q[t, j] . k[s]) for one tile, float32 [B, T, S]."""
    dots_BTJS = jnp.einsum("btji,bsi->btjs", q_BTJI, k_BSI, preferred_element_type=jnp.float32)
    return jnp.einsum("btjs,btj->bts", jax.nn.relu(dots_BTJS), w_BTJ.astype(jnp.float32))


def _layer_norm(x, scale, bias, eps):
    """LayerNorm in float32 over the last axis."""
    x = x.astype(jnp.float32)
    x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps)
    return x * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def _check_features(q_BTJI, k_BSI, w_BTJ) -> None:
    shapes = tuple(tuple(getattr(x, "shape", ())) for x in (q_BTJI, k_BSI, w_BTJ))
    (qs, ks, ws) = shapes
    if len(qs) != 4 or len(ks) != 3 or len(ws) != 3:
        raise ValueError(
            f"index features q {qs}, k {ks}, w {ws}: expected q [batch, q_len, heads, dim], "
            "k [batch, kv_len, dim], w [batch, q_len, heads]"
        )
    if ks[0] != qs[0] or ks[2] != qs[3] or ws != qs[:3]:
        raise ValueError(
            f"index features q {qs}, k {ks}, w {ws}: expected matching batch, dim and heads"
        )
