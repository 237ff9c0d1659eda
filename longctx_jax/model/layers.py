"""Small building blocks: token embedding (with the tied output head), RMSNorm, SwiGLU MLP.

Every parameter carries logical axis names (`vocab`, `embed`, `mlp`) through
`nn.with_logical_partitioning`; the trainer's rules map them onto mesh axes. Parameters are stored
in `param_dtype` and cast to the activation `dtype` where they are used.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def normal_init(std: float, names: tuple[str, ...]):
    """normal(std) initialiser annotated with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(stddev=std), names)


class Embedding(nn.Module):
    """Token embedding table [vocab, embed]; `attend` reuses it as the output head (tied)."""

    vocab_size: int
    embed_dim: int
    init_std: float
    dtype: Dtype
    param_dtype: Dtype

    def setup(self):
        self.embedding = self.param(
            "embedding",
            normal_init(self.init_std, ("vocab", "embed")),
            (self.vocab_size, self.embed_dim),
            self.param_dtype,
        )

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        """[B, T] int -> [B, T, embed] in `dtype` (an id outside [0, vocab) gives NaN)."""
        return jnp.take(self.embedding, tokens_BT, axis=0).astype(self.dtype)

    def attend(self, x_BTD: jax.Array) -> jax.Array:
        """[B, T, embed] -> logits [B, T, vocab] float32 (matmul in `dtype`, f32 accumulation)."""
        return jnp.einsum(
            "btd,vd->btv",
            x_BTD.astype(self.dtype),
            self.embedding.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )


class RMSNorm(nn.Module):
    """x / rms(x) * scale over the last axis, computed in float32, returned in `dtype`; scale
    [last axis] starts at 1; `axis_name` is that axis' logical name (`head_dim` for q/k norms)."""

    eps: float
    dtype: Dtype
    param_dtype: Dtype
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x_BTD.shape[-1],),
            self.param_dtype,
        )
        x = x_BTD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return (x * scale.astype(jnp.float32)).astype(self.dtype)


class SwiGLU(nn.Module):
    """down(silu(x @ gate) * (x @ up)); gate, up [embed, mlp], down [mlp, embed]."""

    mlp_dim: int
    init_std: float
    out_init_std: float
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        d = x_BTD.shape[-1]

        def kernel(name, std, names, shape):
            w = self.param(name, normal_init(std, names), shape, self.param_dtype)
            return w.astype(self.dtype)

        gate_DF = kernel("gate", self.init_std, ("embed", "mlp"), (d, self.mlp_dim))
        up_DF = kernel("up", self.init_std, ("embed", "mlp"), (d, self.mlp_dim))
        down_FD = kernel("down", self.out_init_std, ("mlp", "embed"), (self.mlp_dim, d))
        x = x_BTD.astype(self.dtype)
        h_BTF = nn.silu(jnp.einsum("btd,df->btf", x, gate_DF)) * jnp.einsum("btd,df->btf", x, up_DF)
        h_BTF = nn.with_logical_constraint(h_BTF, ("batch", "length", "mlp"))
        return jnp.einsum("btf,fd->btd", h_BTF, down_FD)
