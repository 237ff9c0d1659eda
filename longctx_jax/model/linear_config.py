"""The `model.attention.linear` sub-config (attention.kind = "linear": gated linear attention).

Fields (defaults in brackets):
  attention.linear.chunk_size [64]          tokens per chunk of the chunked scan: work O(T * C),
                                            memory O(T / C * state); any value gives the same
                                            function (up to float32 rounding).
  attention.linear.timescale_min [16.0]     the decay's memory timescales at initialisation,
  attention.linear.timescale_max [4096.0]   log-spaced over the key/value heads: head k starts
                                            with decay exp(-1 / tau_k) per token (tokens its
                                            state remembers, ~tau_k); min <= max, both >= 1.

With kind "linear", position.kind "alibi" (a softmax logit bias) and attention.logits_soft_cap
have no meaning and are refused; attention.impl and attention.context_parallel are not used.
"""

from __future__ import annotations

import ml_collections

from longctx_jax import checks


def default_linear_config() -> ml_collections.ConfigDict:
    """`model.attention.linear` at its defaults (see the module docstring)."""
    cfg = ml_collections.ConfigDict()
    cfg.chunk_size = 64
    cfg.timescale_min = 16.0
    cfg.timescale_max = 4096.0
    return cfg


def validate_linear_config(cfg) -> None:
    """ValueError naming the `model.*` field unless a kind="linear" config is valid (a config of
    another kind passes whatever its `attention.linear` holds)."""
    if cfg.attention.get("kind", "dense") != "linear":
        return
    linear = cfg.attention.get("linear", None)
    if linear is None:
        raise checks.invalid(
            "model", "attention.linear", None, "the sub-config of default_linear_config()"
        )
    checks.check_positive_int("model", "attention.linear.chunk_size", linear.get("chunk_size"))
    low = checks.check_real(
        "model", "attention.linear.timescale_min", linear.get("timescale_min"), minimum=1
    )
    checks.check_real(
        "model",
        "attention.linear.timescale_max",
        linear.get("timescale_max"),
        minimum=low,
        expected=f"a finite number >= timescale_min={low}",
    )
    if cfg.position.kind == "alibi":
        raise checks.invalid(
            "model",
            "position.kind",
            "alibi",
            "'rope' or 'nope' with attention.kind='linear' (ALiBi biases softmax logits; the "
            "linear mixer's decay already biases it towards recent tokens)",
        )
    if cfg.attention.get("logits_soft_cap") is not None:
        raise checks.invalid(
            "model",
            "attention.logits_soft_cap",
            cfg.attention.logits_soft_cap,
            "None with attention.kind='linear' (there are no softmax logits to cap)",
        )
