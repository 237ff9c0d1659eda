"""Exact top-k by a per-row threshold: counting passes instead of a sort.

`lax.top_k` over [T, S] scores with large k costs a partial sort per row (seconds at 16k x 16k on
a CPU). The k-th largest value of a row is instead found by searching for a threshold t with
count(x >= t) = k. Scores are mapped to order-preserving int32 keys, so the search is exact on
the float values. Each pass over a row counts the keys above SPLITS thresholds at once (one
vector compare per key, while the row block stays in cache) and keeps the tightest bracket: the
first pass places its thresholds at normal-distribution quantiles around the k-th value, later
passes split the bracket evenly in key space (17-fold per pass, so at most 9 passes for any
values; typically 3-5). A row whose k-th value is tied keeps the tied keys of lowest index, as
`lax.top_k` does.

The chosen keys are compacted into k ascending indices without a scatter or a sort: the row's
selection is packed into 32-bit words, each output slot finds its word by binary search over the
words' running popcount and its bit by binary search over the word's popcounts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import ndtri

HIDDEN = jnp.iinfo(jnp.int32).min  # the key of a hidden (masked or -inf) score
SPLITS = 16  # thresholds counted per pass over a row
MAX_STEPS = 16  # each pass narrows the key range 17-fold: 8 passes cover 2**32 keys
WORD = 32


def sortable_keys(scores) -> jax.Array:
    """int32 keys ordered as the float32 scores are; -inf (hidden) scores -> HIDDEN."""
    x = scores.astype(jnp.float32) + 0.0  # -0.0 -> 0.0: equal values, equal keys
    bits = lax.bitcast_convert_type(x, jnp.int32)
    keys = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    return jnp.where(jnp.isneginf(x), HIDDEN, keys)


def key_values(keys) -> jax.Array:
    """Inverse of `sortable_keys` on finite keys: the float32 value of each key."""
    bits = jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys)
    return lax.bitcast_convert_type(bits, jnp.float32)


def threshold_select(keys_RS, k: int) -> jax.Array:
    """Boolean [R, S]: each row's k largest keys (all its visible keys if it has fewer than k).

    Ties at the k-th value keep the lowest indices. Keys equal to HIDDEN are never selected.
    """
    visible = keys_RS > HIDDEN
    count_visible = visible.sum(-1, dtype=jnp.int32)
    lo = jnp.min(jnp.where(visible, keys_RS, jnp.iinfo(jnp.int32).max), -1)
    hi = jnp.max(keys_RS, -1) + 1  # count(keys >= hi) = 0
    few = count_visible <= k
    opening = _normal_quantile_guesses(keys_RS, visible, count_visible, k)

    def done(state):
        lo, hi, c_lo = state[:3]
        return few | (c_lo == k) | (hi <= lo + 1)

    def step(state):
        lo, hi, c_lo, c_hi, i = state
        t_RM = jnp.where(i == 0, opening, _split(lo, hi))
        t_RM = jnp.clip(t_RM, (lo + 1)[:, None], (hi - 1)[:, None])
        c_RM = (keys_RS[:, :, None] >= t_RM[:, None, :]).sum(1, dtype=jnp.int32)
        # Counts fall as thresholds rise: the last one with count >= k is the new lower end.
        p = (c_RM >= k).sum(-1)
        take = lambda x, j: jnp.take_along_axis(x, j[:, None], -1)[:, 0]  # noqa: E731
        below = jnp.maximum(p - 1, 0)
        above = jnp.minimum(p, SPLITS - 1)
        up = (p > 0) & ~done(state)
        down = (p < SPLITS) & ~done(state)
        return (
            jnp.where(up, take(t_RM, below), lo),
            jnp.where(down, take(t_RM, above), hi),
            jnp.where(up, take(c_RM, below), c_lo),
            jnp.where(down, take(c_RM, above), c_hi),
            i + 1,
        )

    state = (lo, hi, count_visible, jnp.zeros_like(count_visible), jnp.int32(0))
    lo, _, c_lo, c_hi, _ = lax.while_loop(
        lambda s: ~jnp.all(done(s)) & (s[-1] < MAX_STEPS), step, state
    )
    # Rows with few visible keys take them all; others take keys >= lo, minus excess ties at lo.
    threshold = jnp.where(few, HIDDEN + 1, lo)
    above = keys_RS >= threshold[:, None]
    excess = ~few & (c_lo > k)
    return lax.cond(
        jnp.any(excess),
        lambda: _drop_excess_ties(keys_RS, above, threshold, k - c_hi, excess),
        lambda: above,
    )


def _split(lo, hi):
    """SPLITS increasing keys [R, SPLITS] evenly spaced strictly inside (lo, hi) where possible.

    Unsigned arithmetic: hi - lo may exceed the int32 range, but every result lies in [lo, hi].
    """
    width = hi.astype(jnp.uint32) - lo.astype(jnp.uint32)
    step = jnp.maximum(width // (SPLITS + 1), 1)
    offsets = step[:, None] * jnp.arange(1, SPLITS + 1, dtype=jnp.uint32)
    return (lo.astype(jnp.uint32)[:, None] + offsets).astype(jnp.int32)


def _normal_quantile_guesses(keys_RS, visible, count_visible, k: int):
    """Keys [R, SPLITS] around each row's k-th largest value, as if its visible values were
    normally distributed: the quantiles for counts k * (1 -+ 4 / sqrt(k)), increasing."""
    x = jnp.where(visible, key_values(keys_RS), 0.0)
    n = jnp.maximum(count_visible, 1).astype(jnp.float32)
    mean = x.sum(-1) / n
    std = jnp.sqrt(jnp.maximum((x * x).sum(-1) / n - mean * mean, 0.0))
    counts = k * (1.0 + 4.0 / k**0.5 * jnp.linspace(1.0, -1.0, SPLITS))
    tail = jnp.clip(counts[None, :] / n[:, None], 1e-6, 1 - 1e-6)
    return sortable_keys(mean[:, None] + std[:, None] * ndtri(1.0 - tail))


def _drop_excess_ties(keys_RS, above, threshold, keep_ties, excess):
    """Keeps only the first `keep_ties` keys equal to the threshold in rows with too many."""
    tied = keys_RS == threshold[:, None]
    rank = jnp.cumsum(tied, axis=-1, dtype=jnp.int32)
    drop = excess[:, None] & tied & (rank > keep_ties[:, None])
    return above & ~drop


def compact(selected_RS, k: int):
    """(indices int32 [R, k] ascending, valid bool [R, k]) of the True entries of each row.

    Rows must hold at most k True entries; the unused slots are invalid and hold index 0.
    """
    r, s = selected_RS.shape
    n_words = -(-s // WORD)
    bits = jnp.pad(selected_RS, ((0, 0), (0, n_words * WORD - s))).reshape(r, n_words, WORD)
    shifts = jnp.arange(WORD, dtype=jnp.uint32)
    words_RW = jnp.sum(bits.astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)
    counts_RW = lax.population_count(words_RW).astype(jnp.int32)
    ends_RW = jnp.cumsum(counts_RW, axis=-1, dtype=jnp.int32)  # selected keys up to each word's end
    slots = jnp.arange(k, dtype=jnp.int32)
    word_RK = jax.vmap(lambda e: jnp.searchsorted(e, slots, side="right"))(ends_RW)
    valid_RK = slots[None] < ends_RW[:, -1:]
    word_RK = jnp.where(valid_RK, word_RK, 0).astype(jnp.int32)
    word_bits = jnp.take_along_axis(words_RW, word_RK, axis=-1)
    rank = slots[None] - (jnp.take_along_axis(ends_RW - counts_RW, word_RK, axis=-1))
    bit = jnp.zeros_like(word_RK)
    for step in (16, 8, 4, 2, 1):  # largest bit b with popcount(bits below b) <= rank
        low = word_bits & ((jnp.uint32(1) << (bit + step).astype(jnp.uint32)) - 1)
        bit = jnp.where(lax.population_count(low).astype(jnp.int32) <= rank, bit + step, bit)
    indices = jnp.where(valid_RK, word_RK * WORD + bit, 0)
    return indices.astype(jnp.int32), valid_RK
