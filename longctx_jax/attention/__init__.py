"""One attention entry point with interchangeable implementations; see `api.attention`."""

from longctx_jax.attention.api import IMPLEMENTATIONS, attention, attention_weights
from longctx_jax.attention.mask import AttentionMask
from longctx_jax.attention.string_attention import string_attention, string_weights

__all__ = [
    "IMPLEMENTATIONS",
    "AttentionMask",
    "attention",
    "attention_weights",
    "string_attention",
    "string_weights",
]
