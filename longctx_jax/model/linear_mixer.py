"""Attention kind `linear`: gated linear attention, a sequence mixer with a fixed-size state.

Per key/value head k (query heads of a GQA group read their group's state), with q, k L2-normalised:

    S_t = a_t * S_{t-1} + k_t^T v_t        S: [head_dim, head_dim], float32
    o_t = q_t S_t = sum_{s <= t} (q_t . k_s) * (a_{s+1} ... a_t) * v_s
    out_t = RMSNorm_per_head(o_t) * norm_scale

The decay a_t = exp(g_t) in (0, 1) is data-dependent, one scalar per key/value head and token
(Mamba2 / SSD's scalar decay, GLA with one gate per head):

    g_t = -softplus(x_t . w_k + b_k)

with b_k initialised so that head k starts with g = -1 / tau_k, tau_k log-spaced over the heads
from `attention.linear.timescale_min` to `timescale_max` (long memory at init); w_k ~
normal(init_std).

Choices, and why:
  * Feature map: q and k are L2-normalised per head (no softmax scale), so |q . k| <= 1 and each
    update k^T v adds at most |v| to the state: the state stays bounded by ~tau |v| whatever the
    sequence length, and q . k can be negative (unlike elu + 1 or other positive maps, which
    only add and blur). No denominator (q . sum k) is needed because of the output norm.
  * Output RMSNorm per head (GLA's group norm, RetNet): the state's magnitude grows with the
    timescale (up to ~tau |v|); normalising each head's output makes the layer's output scale
    independent of it, so one learning rate fits every head.
  * Positions: the recurrence runs in array order, so `positions` do not enter the mixer; with
    position.kind "rope" q and k are rotated first (norm-preserving, so q_t . k_s depends on
    t - s as in RoFormer's linear attention), with "nope" they are not (the usual GLA / Mamba2
    setting: the decay is the only position signal). ALiBi is refused (model/linear_config.py).
    With packed rows, pass `segment_ids`: the state resets where the segment id changes.
  * Not supported: `capture_attention` (there are no attention probabilities to sow) and context
    parallelism (a mesh sharding `length`); both raise ValueError.

`chunked_linear_attention` is the computation: the sequence is cut into chunks of C tokens;
within a chunk, a masked [C, C] product with cumulative log-decays (exp(G_i - G_j), G the
inclusive cumulative sum of g inside the chunk and document); across chunks, a `lax.scan` over
the per-chunk states. Work O(T * C * head_dim) per head, memory O(T * C + T / C * state), all
in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax.model.layers import normal_init

STATE_DTYPE = jnp.float32


def state_bytes_per_layer(model_config) -> int:
    """Bytes of one layer's recurrent state for one sequence: num_kv_heads x head_dim x head_dim
    float32 (the fixed-size counterpart of a layer's KV cache, which grows with the length)."""
    h = model_config.head_dim
    return model_config.num_kv_heads * h * h * jnp.dtype(STATE_DTYPE).itemsize


def document_index(segment_ids_BT, batch: int, length: int) -> jax.Array:
    """int32 [B, T]: how many times the segment id changed up to t (0 for the row's first
    document); the state resets at every change. None: one document per row."""
    if segment_ids_BT is None:
        return jnp.zeros((batch, length), jnp.int32)
    changes = (segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]).astype(jnp.int32)
    return jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.cumsum(changes, axis=1)], 1)


def _check_inputs(q, k, v, log_decay, segment_ids, chunk_size) -> None:
    shapes = {name: tuple(getattr(x, "shape", ())) for name, x in dict(q=q, k=k, v=v).items()}
    if any(len(s) != 4 for s in shapes.values()):
        raise ValueError(f"q, k, v have shapes {shapes}: expected [batch, len, heads, head_dim]")
    (b, t, n, hk), (kb, kt, kh, khk), (vb, vt, vh, _) = shapes["q"], shapes["k"], shapes["v"]
    if (kb, kt, khk) != (b, t, hk) or (vb, vt, vh) != (b, t, kh) or n % kh:
        raise ValueError(
            f"q, k, v have shapes {shapes}: expected q [B, T, N, H], k [B, T, K, H], "
            "v [B, T, K, H_v] with N % K == 0"
        )
    if tuple(getattr(log_decay, "shape", ())) != (b, t, kh):
        raise ValueError(
            f"log_decay has shape {getattr(log_decay, 'shape', None)}: expected [B, T, K] = "
            f"{(b, t, kh)}"
        )
    if segment_ids is not None and tuple(getattr(segment_ids, "shape", ())) != (b, t):
        raise ValueError(
            f"segment_ids has shape {getattr(segment_ids, 'shape', None)}: expected {(b, t)}"
        )
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive integer")


def chunked_linear_attention(
    q_BTNH,
    k_BTKH,
    v_BTKV,
    log_decay_BTK,
    *,
    segment_ids_BT=None,
    chunk_size: int = 64,
    return_state: bool = False,
    initial_state=None,
):
    """o_t = q_t S_t with S_t = exp(g_t) S_{t-1} + k_t^T v_t, S reset where segment ids change.

    q [B, T, N, H], k [B, T, K, H], v [B, T, K, V] (query head n reads state n // (N // K)),
    log_decay g [B, T, K] <= 0 (finite). Returns o float32 [B, T, N, V] and, with
    `return_state`, also the state after the last token, float32 [B, K, H, V] (float64 for
    float64 inputs). No feature map or normalisation here (the layer applies them). T need not
    be a multiple of chunk_size. `initial_state` [B, K, H, V] (default zeros) is the state before
    the first token, read by the tokens of the row's first document (a KV-cache decode step).
    """
    _check_inputs(q_BTNH, k_BTKH, v_BTKV, log_decay_BTK, segment_ids_BT, chunk_size)
    b, t, n, hk = q_BTNH.shape
    kh, hv = k_BTKH.shape[2], v_BTKV.shape[3]
    c = chunk_size
    nc = -(-t // c)
    pad = nc * c - t
    f32 = jnp.promote_types(jnp.float32, q_BTNH.dtype)  # float32, or float64 when given
    doc_BT = document_index(segment_ids_BT, b, t)
    q, k, v, g = (x.astype(f32) for x in (q_BTNH, k_BTKH, v_BTKV, log_decay_BTK))
    if pad:  # zeros after the end: no effect on earlier outputs or on the final state
        q, k, v, g = (
            jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in (q, k, v, g)
        )
        doc_BT = jnp.pad(doc_BT, [(0, 0), (0, pad)], mode="edge")
    q_BCIKGH = q.reshape(b, nc, c, kh, n // kh, hk)
    k_BCJKH = k.reshape(b, nc, c, kh, hk)
    v_BCJKV = v.reshape(b, nc, c, kh, hv)
    doc_BCI = doc_BT.reshape(b, nc, c)
    # j <= i in the same document, within a chunk.
    visible_BCIJ = (doc_BCI[..., :, None] == doc_BCI[..., None, :]) & jnp.tril(
        jnp.ones((c, c), bool)
    )
    # G_i: the inclusive cumulative log-decay from the start of i's chunk or document, as a
    # masked sum, so that no other document's g enters it (a cumsum over the chunk would cancel
    # them only up to rounding, and leak a tiny gradient across documents).
    cum_BCIK = jnp.einsum(
        "bcij,bcjk->bcik",
        visible_BCIJ.astype(f32),
        g.reshape(b, nc, c, kh),
        precision=jax.lax.Precision.HIGHEST,
    )

    # Within a chunk: (q_i . k_j) exp(G_i - G_j) v_j for j <= i in the same document.
    visible = visible_BCIJ[..., None]
    diff_BCIJK = cum_BCIK[:, :, :, None, :] - cum_BCIK[:, :, None, :, :]
    decay_BCIJK = jnp.where(visible, jnp.exp(jnp.where(visible, diff_BCIJK, 0.0)), 0.0)
    scores_BCIJKG = jnp.einsum("bcikgh,bcjkh->bcijkg", q_BCIKGH, k_BCJKH)
    intra = jnp.einsum("bcijkg,bcijk,bcjkv->bcikgv", scores_BCIJKG, decay_BCIJK, v_BCJKV)

    # Each chunk's own contribution to the state at its end (its last document's tokens only),
    # and how much of the state carried in survives the chunk (0 if a document starts in it).
    # (Masked exponents are zeroed before exp as well: an overflow there would turn the masked
    # gradient into 0 * inf = NaN.)
    last_BC = doc_BCI[:, :, -1]
    in_last_BCJ1 = (doc_BCI == last_BC[..., None])[..., None]
    to_end_BCJK = jnp.where(
        in_last_BCJ1, jnp.exp(jnp.where(in_last_BCJ1, cum_BCIK[:, :, -1:] - cum_BCIK, 0.0)), 0.0
    )
    u_BCKHV = jnp.einsum("bcjk,bcjkh,bcjkv->bckhv", to_end_BCJK, k_BCJKH, v_BCJKV)
    prev_BC = jnp.concatenate([doc_BCI[:, :1, 0], last_BC[:, :-1]], axis=1)
    carried_BCI = doc_BCI == prev_BC[..., None]  # token i still reads the state carried in
    survive_BCK = jnp.where(carried_BCI[:, :, -1, None], jnp.exp(cum_BCIK[:, :, -1]), 0.0)

    def step(state_BKHV, xs):
        survive_BK, u_BKHV = xs
        return survive_BK[..., None, None] * state_BKHV + u_BKHV, state_BKHV

    final_BKHV, before_CBKHV = jax.lax.scan(
        step,
        jnp.zeros((b, kh, hk, hv), f32) if initial_state is None else initial_state.astype(f32),
        (jnp.moveaxis(survive_BCK, 1, 0), jnp.moveaxis(u_BCKHV, 1, 0)),
    )
    before_BCKHV = jnp.moveaxis(before_CBKHV, 0, 1)
    read_BCIK = jnp.where(carried_BCI[..., None], jnp.exp(cum_BCIK), 0.0)
    inter = jnp.einsum("bcikgh,bckhv,bcik->bcikgv", q_BCIKGH, before_BCKHV, read_BCIK)

    out_BTNV = (intra + inter).reshape(b, nc * c, n, hv)[:, :t]
    return (out_BTNV, final_BKHV) if return_state else out_BTNV


def timescale_bias_init(timescale_min: float, timescale_max: float):
    """Initialiser of the decay bias [K]: softplus(b_k) = 1 / tau_k, tau_k log-spaced over the
    heads from timescale_min to timescale_max (one head: their geometric mean)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        (heads,) = shape
        lo, hi = np.log(timescale_min), np.log(timescale_max)
        log_tau = np.linspace(lo, hi, heads) if heads > 1 else np.array([(lo + hi) / 2])
        rate = np.exp(-log_tau)
        return jnp.asarray(np.log(np.expm1(rate)), dtype)  # softplus^-1(1 / tau)

    return init


def l2_normalize(x, eps: float):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class GatedLinearAttention(nn.Module):
    """(x [B, T, D], q [B, T, N, H], k, v [B, T, K, H]) -> mixer output [B, T, N, H] in dtype.

    Parameters: `decay` [embed, kv_heads] and `decay_bias` [kv_heads] (the gate g), and
    `norm_scale` [heads, head_dim] of the output RMSNorm (starts at 1). q/k/v and the output
    projection belong to the calling `SelfAttention`.
    """

    cfg: Any  # a validated, frozen model config with attention.kind == "linear"

    @nn.compact
    def __call__(self, x_BTD, q_BTNH, k_BTKH, v_BTKH, segment_ids_BT=None, state=None, valid=None):
        """Output [B, T, N, H]; with `state` (the recurrent state [B, K, H, H] before these
        tokens, for decoding) also the state after them. `valid` bool [B, T]: False tokens
        (padding) leave the state unchanged (no write, no decay)."""
        cfg = self.cfg
        linear = cfg.attention.linear
        param_dtype = jnp.dtype(cfg.param_dtype)
        d, n, kh, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        w_DK = self.param(
            "decay", normal_init(cfg.init_std, ("embed", "kv_heads")), (d, kh), param_dtype
        )
        bias_K = self.param(
            "decay_bias",
            nn.with_logical_partitioning(
                timescale_bias_init(linear.timescale_min, linear.timescale_max), ("kv_heads",)
            ),
            (kh,),
            param_dtype,
        )
        scale_NH = self.param(
            "norm_scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("heads", "head_dim")),
            (n, h),
            param_dtype,
        )
        f32 = jnp.float32
        gate_BTK = jnp.einsum("btd,dk->btk", x_BTD.astype(f32), w_DK.astype(f32))
        log_decay_BTK = -jax.nn.softplus(gate_BTK + bias_K.astype(f32))
        k_BTKH = l2_normalize(k_BTKH, cfg.norm_eps)
        if valid is not None:
            k_BTKH = jnp.where(valid[:, :, None, None], k_BTKH, 0.0)
            log_decay_BTK = jnp.where(valid[:, :, None], log_decay_BTK, 0.0)
        out_BTNH = chunked_linear_attention(
            l2_normalize(q_BTNH, cfg.norm_eps),
            k_BTKH,
            v_BTKH,
            log_decay_BTK,
            segment_ids_BT=segment_ids_BT,
            chunk_size=linear.chunk_size,
            return_state=state is not None,
            initial_state=state,
        )
        if state is not None:
            out_BTNH, state = out_BTNH
        out_BTNH = out_BTNH * jax.lax.rsqrt(
            jnp.mean(jnp.square(out_BTNH), axis=-1, keepdims=True) + cfg.norm_eps
        )
        out_BTNH = (out_BTNH * scale_NH.astype(f32)).astype(jnp.dtype(cfg.dtype))
        return out_BTNH if state is None else (out_BTNH, state)
