"""alibi_slopes against the ALiBi paper's values and fairseq's get_slopes."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from longctx_jax.positions import alibi_slopes


def fairseq_get_slopes(n):
    """fairseq's get_slopes (ALiBi reference code), in float64."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + fairseq_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def test_eight_heads_are_negative_powers_of_two():
    slopes = alibi_slopes(8)
    assert slopes.dtype == jnp.float32 and slopes.shape == (8,)
    np.testing.assert_array_equal(np.asarray(slopes), [2.0**-h for h in range(1, 9)])


def test_twelve_heads_written_out():
    # 8 slopes of 2^-h, then every other slope of 16 heads: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    expected = [2.0**-h for h in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    np.testing.assert_allclose(np.asarray(alibi_slopes(12)), expected, rtol=1e-7)
    assert float(alibi_slopes(12)[8]) == pytest.approx(0.70710678, rel=1e-7)
    assert float(alibi_slopes(12)[11]) == pytest.approx(0.08838835, rel=1e-7)


@pytest.mark.parametrize("num_heads", [1, 2, 3, 5, 6, 12, 16, 20, 24, 40, 64, 96, 100])
def test_matches_fairseq(num_heads):
    np.testing.assert_allclose(
        np.asarray(alibi_slopes(num_heads)), fairseq_get_slopes(num_heads), rtol=1e-7
    )


@pytest.mark.parametrize("num_heads", [0, -4, 2.0, True, "8"])
def test_bad_num_heads_raises_value_error(num_heads):
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(num_heads)
