"""Decoder-only LM in Flax linen; every knob from the `model` config (`default_model_config`)."""

from longctx_jax.model.config import (
    POSITION_KINDS,
    default_model_config,
    rope_scaling_kwargs,
    validate_model_config,
)
from longctx_jax.model.transformer import DecoderLM, attention_maps, freeze_model_config

__all__ = [
    "POSITION_KINDS",
    "DecoderLM",
    "attention_maps",
    "default_model_config",
    "freeze_model_config",
    "rope_scaling_kwargs",
    "validate_model_config",
]
