"""One attention entry point with interchangeable implementations; see `api.attention`."""

from longctx_jax.attention.api import IMPLEMENTATIONS, attention, attention_weights
from longctx_jax.attention.mask import AttentionMask

__all__ = ["IMPLEMENTATIONS", "AttentionMask", "attention", "attention_weights"]
