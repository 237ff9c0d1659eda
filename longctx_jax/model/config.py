"""The `model` sub-config: every knob of `DecoderLM`, its defaults, and its validation.

`default_model_config()` returns a ConfigDict that trainer and ablation configs place at
`config.model` and override from the command line (`--config.model.num_layers=4`). Optional numbers
are typed placeholders (None by default) so that `--config.model.attention.logits_soft_cap=30.0`
and `--config.model.position.rope_scaling.factor=4.0` parse: ml_collections cannot override a
plain None field from the command line, because it does not know the type to parse.

Fields (defaults in brackets):
  vocab_size [256]        vocabulary size; 256 = raw bytes.
  num_layers [4]          decoder blocks.
  embed_dim [256]         residual stream width.
  num_heads [4]           query heads.
  num_kv_heads [4]        key/value heads; num_heads % num_kv_heads == 0 (GQA; 1 = MQA).
  head_dim [64]           per-head width, independent of embed_dim (q: embed -> heads * head_dim).
  mlp_dim [768]           SwiGLU hidden width (~ 8/3 * embed_dim, rounded to a multiple of 256).
  tie_embeddings [True]   output head = input embedding transposed (`Embedding.attend`).
  dtype ["float32"]       activation / matmul dtype ("float32" | "bfloat16" | "float16"); norms,
                          RoPE angles, softmax statistics and the logits are float32 regardless.
  param_dtype ["float32"] parameter storage dtype.
  norm_eps [1e-6]         RMSNorm epsilon.
  init_std [0.02]         std of the normal init of embeddings and input projections; output
                          projections (attention out, MLP down) use init_std / sqrt(2 * num_layers).
  remat [False]           recompute each block in the backward pass (activation checkpointing).
  attention.impl ["auto"]             an `longctx_jax.attention.IMPLEMENTATIONS` name.
  attention.logits_soft_cap [None]    float c > 0: logits -> c * tanh(logits / c).
  attention.window [None]             int w >= 1: sliding-window attention (a query sees the w
                                      latest positions, itself included); None = unbounded.
  attention.layer_windows [None]      per-layer sliding windows (Gemma-style alternation): a
                                      tuple of ints >= 0, 0 = full attention for that layer;
                                      layer i uses layer_windows[i % len], so a tuple shorter
                                      than num_layers is a repeating pattern, e.g. (4096, 0).
                                      Set at most one of window and layer_windows (ValueError
                                      otherwise); the KV cache of a windowed layer is a ring of
                                      its window's slots.
  attention.qkv_bias [False]          learned biases on the q, k, v projections (Qwen2 / 2.5).
  attention.out_bias [False]          a learned bias on the output projection. Biases start at 0.
  attention.qk_norm [False]           RMSNorm of each query and key head over head_dim (Qwen3,
                                      before RoPE): float32, eps = norm_eps, learned scales
                                      [head_dim] for q and for k, starting at 1.
  attention.context_parallel ["ring"] how attention runs when the mesh shards `length` over
                                      more than one device: "ring" | "all_gather"
                                      (`longctx_jax.attention.ring.STRATEGIES`).
  attention.kind ["dense"]            "dense" | "sparse_topk" | "linear"; attention.sparse.*
                                      configures the learned top-k attention (see
                                      model/sparse_config.py), attention.linear.* the gated
                                      linear attention, a fixed-size-state mixer (see
                                      model/linear_config.py and model/linear_mixer.py).
  position.kind ["rope"]              "rope" | "alibi" | "nope".
  position.rope_kind ["default"]      a `rope_frequencies` kind: default, linear, ntk, dynamic,
                                      yarn, llama3, longrope.
  position.rope_base [10000.0]        rope_theta.
  position.layout ["half"]            RoPE feature pairing: "half" (HF / NeoX) | "interleaved".
  position.rope_scaling.*  [None]     Hugging Face `rope_parameters` names passed as keyword
                                      arguments to `rope_frequencies`; only the fields that are
                                      not None are passed (so every kind reads only what it needs).
                                      `partial_rotary_factor` f rotates the first
                                      int(f * head_dim) features of each q and k head only.
  position.string_shift [0]           STRING (An et al., 2024; attention/string_attention.py),
                                      an evaluation-time option: S > 0 reads every pair at
                                      relative distance d >= S at d - S + string_window; 0 = off.
                                      Needs position.kind "rope" and attention.kind "dense"; no KV
                                      cache (decoding) and no context parallelism; ignores
                                      attention.impl (dense, O(T^2) memory).
  position.string_window [0]          STRING's local window W, 0 < W < string_shift when on.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from longctx_jax import checks
from longctx_jax.attention import IMPLEMENTATIONS
from longctx_jax.attention.ring import STRATEGIES
from longctx_jax.model.linear_config import default_linear_config, validate_linear_config
from longctx_jax.model.sparse_config import default_sparse_config, validate_sparse_config
from longctx_jax.positions import LAYOUTS, ROPE_KINDS, rope_frequencies

POSITION_KINDS = ("rope", "alibi", "nope")
DTYPES = ("float32", "bfloat16", "float16")

# Every `rope_frequencies` scaling argument, with the type its command-line override parses to.
ROPE_SCALING_FIELDS = {
    "factor": float,
    "original_max_position_embeddings": int,
    "max_position_embeddings": int,
    "attention_factor": float,
    "beta_fast": float,
    "beta_slow": float,
    "mscale": float,
    "mscale_all_dim": float,
    "truncate": bool,
    "low_freq_factor": float,
    "high_freq_factor": float,
    "short_factor": tuple,
    "long_factor": tuple,
    "partial_rotary_factor": float,
}


def default_model_config() -> ml_collections.ConfigDict:
    """The `model` sub-config with every field at its default (see the module docstring)."""
    cfg = ml_collections.ConfigDict()
    cfg.vocab_size = 256
    cfg.num_layers = 4
    cfg.embed_dim = 256
    cfg.num_heads = 4
    cfg.num_kv_heads = 4
    cfg.head_dim = 64
    cfg.mlp_dim = 768
    cfg.tie_embeddings = True
    cfg.dtype = "float32"
    cfg.param_dtype = "float32"
    cfg.norm_eps = 1e-6
    cfg.init_std = 0.02
    cfg.remat = False

    cfg.attention = ml_collections.ConfigDict()
    cfg.attention.impl = "auto"
    cfg.attention.logits_soft_cap = config_dict.placeholder(float)
    cfg.attention.window = config_dict.placeholder(int)
    cfg.attention.layer_windows = config_dict.placeholder(tuple)
    cfg.attention.qkv_bias = False
    cfg.attention.out_bias = False
    cfg.attention.qk_norm = False
    cfg.attention.context_parallel = "ring"
    cfg.attention.kind = "dense"
    cfg.attention.sparse = default_sparse_config()
    cfg.attention.linear = default_linear_config()

    cfg.position = ml_collections.ConfigDict()
    cfg.position.kind = "rope"
    cfg.position.rope_kind = "default"
    cfg.position.rope_base = 10000.0
    cfg.position.layout = "half"
    cfg.position.rope_scaling = ml_collections.ConfigDict()
    for name, field_type in ROPE_SCALING_FIELDS.items():
        setattr(cfg.position.rope_scaling, name, config_dict.placeholder(field_type))
    cfg.position.string_shift = 0
    cfg.position.string_window = 0
    return cfg


def rope_scaling_kwargs(cfg) -> dict:
    """The set (non-None) `position.rope_scaling` fields, as `rope_frequencies` keyword args."""
    scaling = cfg.position.rope_scaling
    return {name: scaling[name] for name in scaling.keys() if scaling[name] is not None}


def layer_window(cfg, layer: int) -> int | None:
    """Layer `layer`'s sliding window (None = full attention): attention.layer_windows repeated
    over the layers when set, else attention.window."""
    windows = cfg.attention.layer_windows
    if windows is None:
        return cfg.attention.window
    return windows[layer % len(windows)] or None


def validate_model_config(cfg) -> None:
    """Raises ValueError naming the field, its value and what was expected; returns None if valid.

    Checks types and ranges, num_heads % num_kv_heads, and (for position.kind="rope") that
    `rope_frequencies` accepts head_dim, rope_kind, rope_base and the set rope_scaling fields.
    Accepts a ConfigDict, a FrozenConfigDict or a plain nested dict.
    """
    if isinstance(cfg, dict):
        cfg = ml_collections.ConfigDict(cfg)
    for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim"):
        checks.check_positive_int("model", name, _get(cfg, name))
    checks.check_positive_int("model", "mlp_dim", _get(cfg, "mlp_dim"))
    if cfg.num_heads % cfg.num_kv_heads:
        raise checks.invalid(
            "model",
            "num_kv_heads",
            cfg.num_kv_heads,
            f"a divisor of num_heads={cfg.num_heads} (GQA/MQA)",
        )
    for name in ("tie_embeddings", "remat"):
        checks.check_bool("model", name, _get(cfg, name))
    for name in ("dtype", "param_dtype"):
        checks.check_choice("model", name, _get(cfg, name), DTYPES)
    for name in ("norm_eps", "init_std"):
        checks.check_real("model", name, _get(cfg, name), minimum=0, exclusive_minimum=True)

    checks.check_choice("model", "attention.impl", _get(cfg, "attention.impl"), IMPLEMENTATIONS)
    strategy = _get(cfg, "attention.context_parallel")
    checks.check_choice("model", "attention.context_parallel", strategy, STRATEGIES)
    cap = _get(cfg, "attention.logits_soft_cap")
    if cap is not None:
        checks.check_real(
            "model",
            "attention.logits_soft_cap",
            cap,
            minimum=0,
            exclusive_minimum=True,
            expected="None or a finite float > 0",
        )

    for name in ("qkv_bias", "out_bias", "qk_norm"):
        checks.check_bool("model", f"attention.{name}", _get(cfg, f"attention.{name}"))
    _validate_windows(cfg)
    kind = checks.check_choice("model", "position.kind", _get(cfg, "position.kind"), POSITION_KINDS)
    _validate_string(cfg)
    validate_sparse_config(cfg)
    validate_linear_config(cfg)
    if kind != "rope":
        return
    if cfg.head_dim % 2:
        raise checks.invalid(
            "model", "head_dim", cfg.head_dim, "an even number with position.kind='rope'"
        )
    rope_kind = _get(cfg, "position.rope_kind")
    checks.check_choice("model", "position.rope_kind", rope_kind, ROPE_KINDS)
    checks.check_choice("model", "position.layout", _get(cfg, "position.layout"), LAYOUTS)
    base = _get(cfg, "position.rope_base")
    checks.check_real(
        "model",
        "position.rope_base",
        base,
        minimum=1,
        exclusive_minimum=True,
        finite=False,
        expected="a number > 1 (rope_theta)",
    )
    scaling = rope_scaling_kwargs(cfg)
    try:
        rope_frequencies(cfg.head_dim, base=base, kind=rope_kind, **scaling)
    except ValueError as e:
        raise ValueError(
            f"model.position (rope_kind={rope_kind!r}, rope_scaling={scaling}): {e}"
        ) from e


def _validate_windows(cfg) -> None:
    """attention.window: None or an int >= 1; attention.layer_windows: None or 1 to num_layers
    ints >= 0, not both set; neither with the linear mixer (it has no attention window)."""
    window = _get(cfg, "attention.window")
    if window is not None:
        checks.check_positive_int("model", "attention.window", window)
    windows = _get(cfg, "attention.layer_windows")
    if windows is not None:
        if (
            not isinstance(windows, tuple | list)
            or not 1 <= len(windows) <= cfg.num_layers
            or not all(checks.is_int(w) and w >= 0 for w in windows)
        ):
            raise checks.invalid(
                "model",
                "attention.layer_windows",
                windows,
                f"None or a tuple of 1 to num_layers={cfg.num_layers} ints >= 0 (per-layer "
                "windows, 0 = full attention; a shorter tuple repeats over the layers)",
            )
        if window is not None:
            raise checks.invalid(
                "model",
                "attention.layer_windows",
                windows,
                f"None with attention.window={window} (set one: attention.window for every "
                "layer, or attention.layer_windows per layer)",
            )
    for field, value in (("attention.window", window), ("attention.layer_windows", windows)):
        if value is not None and _get(cfg, "attention.kind") == "linear":
            raise checks.invalid(
                "model",
                field,
                value,
                "None with attention.kind='linear' (the mixer has no attention window)",
            )


def _validate_string(cfg) -> None:
    """position.string_shift / string_window: ints >= 0; with a shift, 0 < window < shift, and the
    RoPE + dense softmax model that STRING's shifted distances apply to."""
    shift = _get(cfg, "position.string_shift")
    checks.check_int("model", "position.string_shift", shift, minimum=0)
    window = _get(cfg, "position.string_window")
    checks.check_int("model", "position.string_window", window, minimum=0)
    if not shift:
        return
    checks.check_int(
        "model",
        "position.string_window",
        window,
        minimum=1,
        below=shift,
        expected=f"an integer in [1, position.string_shift={shift})",
    )
    for field, want in (("position.kind", "rope"), ("attention.kind", "dense")):
        if _get(cfg, field) != want:
            raise checks.invalid(
                "model",
                field,
                _get(cfg, field),
                f"{want!r} with position.string_shift={shift} (STRING shifts RoPE distances in "
                "dense softmax attention)",
            )


def _get(cfg, dotted: str):
    """cfg['a.b'] with a ValueError naming the field if it is missing."""
    value = cfg
    for part in dotted.split("."):
        try:
            value = value[part]
        except (KeyError, AttributeError, TypeError):
            raise ValueError(
                f"model.{dotted}: missing; expected the field of default_model_config()"
            ) from None
    return value
