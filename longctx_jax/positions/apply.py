"""Rotate query/key features by their positions (RoPE).

The rotation angle is position * inv_freq, so q.k after rotation depends only on the positions'
difference. Angles and the rotation are computed in float32 whatever the input dtype.
"""

import jax.numpy as jnp

LAYOUTS = ("half", "interleaved")


def apply_rope(x, positions, inv_freq, *, attention_factor=1.0, layout="half"):
    """Apply rotary position embedding to `x`.

    Args:
      x: [batch, len, heads, head_dim].
      positions: [batch, len] positions of the tokens (integers; floats also work).
      inv_freq: [rotary_dim // 2] from `rope_frequencies`. The first rotary_dim features of each
        head are rotated and the rest pass through unchanged (partial rotary).
      attention_factor: scale on cos and sin (YaRN / LongRoPE), as Hugging Face applies it.
      layout: which features form a rotation pair: "half" pairs i with i + rotary_dim/2
        (HF / GPT-NeoX rotate_half); "interleaved" pairs 2i with 2i+1 (GPT-J, Meta's original).

    Returns:
      The rotated array, x's shape and dtype.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
    x_shape, positions_shape = jnp.shape(x), jnp.shape(positions)
    inv_freq_shape = jnp.shape(inv_freq)
    if len(x_shape) != 4:
        raise ValueError(f"x.shape={x_shape}: expected [batch, len, heads, head_dim]")
    if positions_shape != x_shape[:2]:
        raise ValueError(f"positions.shape={positions_shape}: expected x.shape[:2]={x_shape[:2]}")
    if len(inv_freq_shape) != 1 or not 0 < 2 * inv_freq_shape[0] <= x_shape[3]:
        raise ValueError(
            f"inv_freq.shape={inv_freq_shape}: expected [rotary_dim // 2] with "
            f"0 < rotary_dim <= head_dim={x_shape[3]}"
        )
    x = jnp.asarray(x)
    half = inv_freq_shape[0]
    angle_BTF = jnp.asarray(positions, jnp.float32)[:, :, None] * jnp.asarray(inv_freq, jnp.float32)
    cos_BT1F = (jnp.cos(angle_BTF) * attention_factor)[:, :, None, :]
    sin_BT1F = (jnp.sin(angle_BTF) * attention_factor)[:, :, None, :]
    x_rot = x[..., : 2 * half].astype(jnp.float32)
    if layout == "half":
        x1, x2 = x_rot[..., :half], x_rot[..., half:]
    else:
        x1, x2 = x_rot[..., 0::2], x_rot[..., 1::2]
    y1 = x1 * cos_BT1F - x2 * sin_BT1F
    y2 = x2 * cos_BT1F + x1 * sin_BT1F
    if layout == "half":
        y = jnp.concatenate([y1, y2], axis=-1)
    else:
        y = jnp.stack([y1, y2], axis=-1).reshape(x_rot.shape)
    return jnp.concatenate([y.astype(x.dtype), x[..., 2 * half :]], axis=-1)
