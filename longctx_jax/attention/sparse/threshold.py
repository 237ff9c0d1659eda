"""Exact top-k by a per-row threshold: counting passes instead of a sort.

`lax.top_k` over [T, S] scores with large k costs a partial sort per row (seconds at 16k x 16k on
a CPU). The k-th largest value of a row is instead bracketed by thresholds: each step is one
compare-and-count pass over the row (cheap while a small block of rows stays in cache). Scores
are mapped to order-preserving int32 keys, so the search is exact on the float values. Steps:
two opening guesses at normal-distribution quantiles either side of the k-th value, then Illinois
regula falsi on the values, with every fourth step a bisection of the keys (so at most ~130
steps whatever the values; typically 3-6). Once a row's bracket holds at most CANDIDATES keys,
those keys are gathered and sorted to read off the k-th value. A row whose k-th value is tied
keeps the tied keys of lowest index, as `lax.top_k` does.

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
CANDIDATES = 64  # the search stops once a row's bracket holds this few keys; a sort finishes
MAX_STEPS = 130  # every fourth step bisects the keys, and 32 bisections always suffice
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

    def settled(lo, hi, c_lo):
        return few | (c_lo == k) | (hi <= lo + 1)

    def done(state):
        lo, hi, c_lo, c_hi = state[:4]
        return settled(lo, hi, c_lo) | (c_lo - c_hi <= CANDIDATES)

    def step(state):
        lo, hi, c_lo, c_hi, g_lo, g_hi, i = state
        # Illinois regula falsi on the values (g_* are the count excesses, halved on a side that
        # stays put twice) after two opening guesses; every fourth step bisects the keys.
        v_lo, v_hi = key_values(lo), key_values(hi)
        guess = sortable_keys(v_lo + g_lo / jnp.maximum(g_lo - g_hi, 1e-30) * (v_hi - v_lo))
        middle = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        t = jnp.where(i % 4 == 3, middle, guess)
        t = jnp.where(i < 2, opening[:, jnp.minimum(i, 1)], t)
        t = jnp.clip(t, lo + 1, hi - 1)
        c = (keys_RS >= t[:, None]).sum(-1, dtype=jnp.int32)
        moving = ~done(state)
        up, down = (c >= k) & moving, (c < k) & moving
        excess = (c - k).astype(jnp.float32)
        return (
            jnp.where(up, t, lo),
            jnp.where(down, t, hi),
            jnp.where(up, c, c_lo),
            jnp.where(down, c, c_hi),
            jnp.where(up, excess, jnp.where(down, g_lo * 0.5, g_lo)),
            jnp.where(down, excess, jnp.where(up, g_hi * 0.5, g_hi)),
            i + 1,
        )

    zero = jnp.zeros_like(count_visible)
    g_lo = (count_visible - k).astype(jnp.float32)
    state = (lo, hi, count_visible, zero, g_lo, jnp.full_like(g_lo, -k), jnp.int32(0))
    lo, hi, c_lo, c_hi, *_ = lax.while_loop(
        lambda s: ~jnp.all(done(s)) & (s[-1] < MAX_STEPS), step, state
    )
    # The k-th value: lo when settled, else found among the few candidate keys in [lo, hi).
    candidates = (keys_RS >= lo[:, None]) & (keys_RS < hi[:, None])
    cand_idx, cand_ok = compact(candidates, CANDIDATES)
    cand_keys = jnp.where(cand_ok, jnp.take_along_axis(keys_RS, cand_idx, -1), HIDDEN)
    ranked = jnp.sort(cand_keys, axis=-1)  # ascending: the j-th largest is at CANDIDATES - j
    position = jnp.clip(CANDIDATES - (k - c_hi), 0, CANDIDATES - 1)
    kth = jnp.take_along_axis(ranked, position[:, None], -1)[:, 0]
    threshold = jnp.where(settled(lo, hi, c_lo), lo, kth)
    count_above = c_hi + (cand_keys > threshold[:, None]).sum(-1, dtype=jnp.int32)
    count_above = jnp.where(settled(lo, hi, c_lo), c_hi, count_above)
    count_at_least = jnp.where(
        settled(lo, hi, c_lo), c_lo, c_hi + (cand_keys >= threshold[:, None]).sum(-1)
    )
    # Rows with few visible keys take them all; others take keys >= threshold, minus excess ties.
    threshold = jnp.where(few, HIDDEN + 1, threshold)
    above = keys_RS >= threshold[:, None]
    excess = ~few & (count_at_least > k)
    return lax.cond(
        jnp.any(excess),
        lambda: _drop_excess_ties(keys_RS, above, threshold, k - count_above, excess),
        lambda: above,
    )


def _normal_quantile_guesses(keys_RS, visible, count_visible, k: int):
    """Keys [R, 2] just below and just above each row's k-th largest value, were its visible
    values normally distributed: the quantiles for counts k * (1 +- 3 / sqrt(k))."""
    x = jnp.where(visible, key_values(keys_RS), 0.0)
    n = jnp.maximum(count_visible, 1).astype(jnp.float32)
    mean = x.sum(-1) / n
    std = jnp.sqrt(jnp.maximum((x * x).sum(-1) / n - mean * mean, 0.0))
    counts = k * (1.0 + 3.0 / k**0.5 * jnp.asarray([1.0, -1.0]))
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
    word_RK = jax.vmap(lambda e: jnp.searchsorted(e, slots, side="right", method="scan_unrolled"))(
        ends_RW
    )
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
