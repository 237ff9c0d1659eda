"""RoPE inverse frequencies for each context-extension scheme.

Extending a RoPE model's context changes only its rotation frequencies (and, for YaRN and LongRoPE,
a scale on cos/sin), so every scheme is a small function of a few numbers. The formulas follow
Hugging Face transformers' `modeling_rope_utils.py` and its argument names, computed in float64.
"""

import inspect
import math
from numbers import Integral, Real

import jax.numpy as jnp
import numpy as np


def _invalid(name, value, expected):
    return ValueError(f"{name}={value!r}: expected {expected}")


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise _invalid(name, value, "a positive integer")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, Real) or not value > 0:
        raise _invalid(name, value, "a positive number")


def _check_factor(factor, what="factor"):
    if isinstance(factor, bool) or not isinstance(factor, Real) or not factor >= 1:
        raise _invalid(what, factor, "a number >= 1 (context extension ratio)")


def _resolve_factor(factor, max_position_embeddings, original_max_position_embeddings):
    """`factor`, or HF's fallback max_position_embeddings / original_max_position_embeddings."""
    if factor is not None:
        _check_factor(factor)
        return factor
    if max_position_embeddings is None:
        raise _invalid("factor", None, "a number >= 1, or max_position_embeddings to derive it")
    _check_positive_int("max_position_embeddings", max_position_embeddings)
    factor = max_position_embeddings / original_max_position_embeddings
    _check_factor(factor, "factor (max_position_embeddings / original_max_position_embeddings)")
    return factor


def _base_inv_freq(dim, base):
    return 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def _ntk_base(base, dim, scale):
    """NTK-aware base: stretches the lowest frequency by `scale`, keeps the highest."""
    if dim < 4:
        raise ValueError(f"head_dim: rotary dim {dim}: expected >= 4 for NTK scaling (dim/(dim-2))")
    return base * scale ** (dim / (dim - 2))


def _default(dim, base, seq_len):
    return _base_inv_freq(dim, base), 1.0


def _linear(dim, base, seq_len, *, factor):
    """Position interpolation (PI): every frequency divided by `factor`."""
    _check_factor(factor)
    return _base_inv_freq(dim, base) / factor, 1.0


def _ntk(dim, base, seq_len, *, factor):
    """Static NTK-aware scaling: base * factor ** (dim / (dim - 2)). Not an HF kind."""
    _check_factor(factor)
    return _base_inv_freq(dim, _ntk_base(base, dim, factor)), 1.0


def _dynamic(dim, base, seq_len, *, factor, max_position_embeddings):
    """Dynamic NTK: NTK scaling grown with seq_len; seq_len None or <= max is plain RoPE (as HF)."""
    _check_factor(factor)
    _check_positive_int("max_position_embeddings", max_position_embeddings)
    if seq_len is None or seq_len < max_position_embeddings:
        seq_len = max_position_embeddings
    scale = factor * seq_len / max_position_embeddings - (factor - 1)
    return _base_inv_freq(dim, _ntk_base(base, dim, scale)), 1.0


def _yarn_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(
    dim,
    base,
    seq_len,
    *,
    original_max_position_embeddings,
    factor=None,
    max_position_embeddings=None,
    attention_factor=None,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=None,
    mscale_all_dim=None,
    truncate=True,
):
    """YaRN ("NTK-by-parts"): extrapolate fast dims, interpolate slow ones, ramp in between."""
    _check_positive_int("original_max_position_embeddings", original_max_position_embeddings)
    factor = _resolve_factor(factor, max_position_embeddings, original_max_position_embeddings)
    _check_positive("beta_slow", beta_slow)
    if not (isinstance(beta_fast, Real) and beta_fast >= beta_slow):
        raise _invalid("beta_fast", beta_fast, f"a number >= beta_slow={beta_slow!r}")
    if attention_factor is None:
        # HF uses the mscale ratio only when both are given and non-zero (DeepSeek); otherwise it
        # ignores them and takes 0.1 ln(factor) + 1.
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    else:
        _check_positive("attention_factor", attention_factor)

    def correction_dim(num_rotations):
        """Dimension index whose wavelength fits `num_rotations` times in the original context."""
        wavelengths = original_max_position_embeddings / (num_rotations * 2 * math.pi)
        return dim * math.log(wavelengths) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)  # HF clips to dim - 1, not dim // 2 - 1
    if low == high:
        high += 0.001  # as HF: avoid a zero-width ramp
    interpolation_weight = np.clip((np.arange(dim // 2) - low) / (high - low), 0.0, 1.0)
    inv_freq = _base_inv_freq(dim, base)
    inv_freq = inv_freq * (1 - interpolation_weight) + inv_freq / factor * interpolation_weight
    return inv_freq, attention_factor


def _llama3(
    dim,
    base,
    seq_len,
    *,
    factor,
    low_freq_factor,
    high_freq_factor,
    original_max_position_embeddings,
):
    """Llama 3.1: long wavelengths divided by factor, short kept, smooth blend in between."""
    _check_factor(factor)
    _check_positive("low_freq_factor", low_freq_factor)
    if not (isinstance(high_freq_factor, Real) and high_freq_factor > low_freq_factor):
        raise _invalid("high_freq_factor", high_freq_factor, f"> low_freq_factor={low_freq_factor}")
    _check_positive_int("original_max_position_embeddings", original_max_position_embeddings)
    inv_freq = _base_inv_freq(dim, base)
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_max_position_embeddings / low_freq_factor
    high_freq_wavelength = original_max_position_embeddings / high_freq_factor
    smooth = (original_max_position_embeddings / wavelength - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    inv_freq = np.where(wavelength > low_freq_wavelength, inv_freq / factor, inv_freq)
    is_medium = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
    return np.where(is_medium, blended, inv_freq), 1.0


def _longrope(
    dim,
    base,
    seq_len,
    *,
    short_factor,
    long_factor,
    original_max_position_embeddings,
    factor=None,
    max_position_embeddings=None,
    attention_factor=None,
):
    """LongRoPE: per-frequency divisors, `long_factor` once seq_len exceeds the original context."""
    _check_positive_int("original_max_position_embeddings", original_max_position_embeddings)
    for name, values in (("short_factor", short_factor), ("long_factor", long_factor)):
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (dim // 2,) or not np.all(array > 0):
            raise ValueError(
                f"{name}: got {array.size} values (min {array.min(initial=np.inf)}); expected "
                f"{dim // 2} positive numbers (rotary dim {dim} / 2)"
            )
    factor = _resolve_factor(factor, max_position_embeddings, original_max_position_embeddings)
    if attention_factor is None:
        attention_factor = (
            1.0
            if factor <= 1
            else math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
        )
    else:
        _check_positive("attention_factor", attention_factor)
    is_long = seq_len is not None and seq_len > original_max_position_embeddings
    ext_factors = np.asarray(long_factor if is_long else short_factor, dtype=np.float64)
    return _base_inv_freq(dim, base) / ext_factors, attention_factor


_KINDS = {
    "default": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
    "longrope": _longrope,
}
ROPE_KINDS = tuple(_KINDS)


def _rotary_dim(head_dim, partial_rotary_factor):
    is_int = isinstance(head_dim, Integral) and not isinstance(head_dim, bool)
    if not is_int or head_dim < 2 or head_dim % 2:
        raise _invalid("head_dim", head_dim, "an even integer >= 2")
    if not (isinstance(partial_rotary_factor, Real) and 0 < partial_rotary_factor <= 1):
        raise _invalid("partial_rotary_factor", partial_rotary_factor, "a number in (0, 1]")
    dim = int(head_dim * partial_rotary_factor)
    if dim < 2 or dim % 2:
        raise _invalid(
            "partial_rotary_factor",
            partial_rotary_factor,
            f"int(head_dim * partial_rotary_factor) even and >= 2; got {dim} (head_dim={head_dim})",
        )
    return dim


def rope_frequencies(head_dim, *, base=10000.0, kind="default", seq_len=None, **scaling):
    """Inverse frequencies and cos/sin scale for RoPE of one `kind`, matching Hugging Face.

    Args:
      head_dim: per-head feature size (even).
      base: rope_theta.
      kind: one of `ROPE_KINDS`.
      seq_len: current sequence length; read by `dynamic` (None means max_position_embeddings,
        i.e. plain RoPE, as HF does at init) and `longrope` (long factors iff > original).
        Other kinds ignore it.
      **scaling: HF `rope_parameters` names: `partial_rotary_factor` for every kind, plus
        linear/ntk: `factor`; dynamic: `factor`, `max_position_embeddings`;
        yarn: `original_max_position_embeddings` and `factor` (or `max_position_embeddings`),
        optional `attention_factor`, `beta_fast`, `beta_slow`, `mscale`, `mscale_all_dim`,
        `truncate`; llama3: `factor`, `low_freq_factor`, `high_freq_factor`,
        `original_max_position_embeddings`; longrope: `short_factor`, `long_factor`,
        `original_max_position_embeddings` and `factor` (or `max_position_embeddings`), optional
        `attention_factor`. A name the kind does not read raises ValueError.

    Returns:
      (inv_freq float32 [rotary_dim // 2], attention_factor python float), where rotary_dim is
      int(head_dim * partial_rotary_factor); pass both to `apply_rope`.
    """
    if kind not in _KINDS:
        raise _invalid("kind", kind, f"one of {ROPE_KINDS}")
    partial_rotary_factor = scaling.pop("partial_rotary_factor", 1.0)
    dim = _rotary_dim(head_dim, partial_rotary_factor)
    if isinstance(base, bool) or not isinstance(base, Real) or not base > 1:
        raise _invalid("base", base, "a number > 1 (rope_theta)")
    if seq_len is not None:
        _check_positive_int("seq_len", seq_len)
    compute = _KINDS[kind]
    parameters = [
        p
        for p in inspect.signature(compute).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    accepted = [p.name for p in parameters]
    for name, value in scaling.items():
        if name not in accepted:
            raise ValueError(
                f"{name}={value!r}: kind={kind!r} does not read it; expected only "
                f"{accepted} and partial_rotary_factor"
            )
    for p in parameters:
        if p.default is inspect.Parameter.empty and p.name not in scaling:
            raise ValueError(f"{p.name}: missing; kind={kind!r} requires it (reads {accepted})")
    inv_freq, attention_factor = compute(dim, float(base), seq_len, **scaling)
    return jnp.asarray(inv_freq, dtype=jnp.float32), float(attention_factor)
