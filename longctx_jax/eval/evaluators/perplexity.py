"""`kind="perplexity"`: sliding-window perplexity by position at given lengths
(`longctx_jax.eval.perplexity`), optionally with eval-time RoPE scaling.

Fields: lengths (window lengths; () = data.seq_len), rope_kind ("default" = the model as
trained; "linear", "ntk", "dynamic", "yarn", "llama3" rescale a plain-RoPE model's frequencies
for each length, "string" shifts its far relative distances (STRING): `with_eval_rope` with
train_len = data.seq_len), stride (0 = length // 2),
num_windows (windows per length, the first ones in path order: the same text every time), and
batch_size. Scalars: nll@L (nats/token), perplexity@L, bits_per_byte@L.
"""

from __future__ import annotations

import ml_collections

from longctx_jax.eval.perplexity import EVAL_ROPE_KINDS, perplexity_by_position, with_eval_rope
from longctx_jax.eval.registry import register


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(lengths=(), rope_kind="default", stride=0, num_windows=64, batch_size=8)
    )


def validate(prefix, cfg, data_config) -> None:
    del data_config
    _check_lengths(prefix, cfg.lengths)
    if cfg.rope_kind not in EVAL_ROPE_KINDS:
        raise ValueError(f"{prefix}.rope_kind={cfg.rope_kind!r}: expected one of {EVAL_ROPE_KINDS}")
    for name, minimum in (("stride", 0), ("num_windows", 1), ("batch_size", 1)):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{prefix}.{name}={value!r}: expected an integer >= {minimum}")


def _check_lengths(prefix, lengths) -> None:
    if not isinstance(lengths, tuple | list) or any(
        isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths
    ):
        raise ValueError(
            f"{prefix}.lengths={lengths!r}: expected a tuple of positive integers (() = "
            "data.seq_len)"
        )


@register("perplexity", defaults=defaults, validate=validate)
def perplexity(cfg, model_config, params, data_config, *, progress=True):
    scalars, details = {}, {}
    for length in cfg.lengths or (data_config.seq_len,):
        model = model_config
        if cfg.rope_kind != "default":
            model = with_eval_rope(model_config, cfg.rope_kind, data_config.seq_len, length)
        result = perplexity_by_position(
            model,
            params,
            data_config,
            eval_len=length,
            stride=cfg.stride or None,
            num_windows=cfg.num_windows,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        details[str(length)] = result
        scalars[f"nll@{length}"] = result["nll"]
        scalars[f"perplexity@{length}"] = result["perplexity"]
        scalars[f"bits_per_byte@{length}"] = result["bits_per_byte"]
    return scalars, details
