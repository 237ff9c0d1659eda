"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), batch-invariant.

`sample` turns one logit row per request into one token. Greedy (`sampling=None`, temperature 0,
or top_k=1) is `jnp.argmax` (ties -> the lowest id). Otherwise the logits are processed in Hugging
Face's order (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper; see `filter_logits`)
and a token is drawn with `jax.random.categorical`.

Why the counters: the noise for a row is keyed by fold_in(fold_in(key(seed), request_id),
position) only, so a request's tokens never depend on which other requests share its batch or on
its row (DESIGN.md §6): a resumed or re-batched generation reproduces the same text.

Tie rule: top-k and top-p both cut at a logit *value* and keep every token equal to it (as HF's
`scores < kth_value` test does), so equal logits are treated alike and the result never depends
on sort order. top-k may therefore keep more than k tokens when the k-th largest value is tied;
top_k=1 is the exception, routed to greedy so that it is exactly argmax.

The `Sampling` object is hashable: pass it as a static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick the next token. temperature 0 (or top_k=1) is greedy."""

    temperature: float = 1.0  # >= 0; 0 means greedy
    top_k: int | None = None  # >= 1; None keeps every token (k > vocab keeps every token)
    top_p: float | None = None  # in (0, 1]; None (or 1) keeps every token

    def validate(self) -> Sampling:
        """A copy with plain Python numbers, or ValueError naming the bad field."""
        t, k, p = self.temperature, self.top_k, self.top_p
        if not _real(t) or t < 0:
            raise ValueError(f"sampling.temperature={t!r}: expected a finite float >= 0")
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"sampling.top_k={k!r}: expected None or an int >= 1")
        if p is not None and (not _real(p) or not 0 < p <= 1):
            raise ValueError(f"sampling.top_p={p!r}: expected a float in (0, 1]")
        return Sampling(float(t), None if k is None else int(k), None if p is None else float(p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def filter_logits(logits, sampling: Sampling) -> jax.Array:
    """float32 [B, V] logits / temperature, with the tokens top-k and top-p drop set to -inf.

    top-k keeps the tokens >= the k-th largest value. top-p then keeps the smallest set of most
    probable tokens (probabilities of the top-k-filtered distribution) whose sum >= top_p, plus
    every token tied with the least probable one kept; the top token is always kept.
    """
    sampling = sampling.validate()
    x = logits.astype(jnp.float32)
    if sampling.temperature != 0:
        x = x / jnp.float32(sampling.temperature)
    vocab = x.shape[-1]
    k = None if sampling.top_k is None or sampling.top_k >= vocab else sampling.top_k
    p = None if sampling.top_p is None or sampling.top_p >= 1 else sampling.top_p
    if k is None and p is None:
        return x
    if k is not None:
        top_BK = jax.lax.top_k(x, k)[0]  # descending
        x = jnp.where(x >= top_BK[:, -1:], x, -jnp.inf)
    if p is not None:
        # Descending values: the top-k ones suffice (tokens tied with the k-th value beyond
        # them can only extend the set up to that same value).
        top_BK = top_BK if k is not None else jnp.flip(jnp.sort(x, axis=-1), axis=-1)
        lse_B1 = jax.nn.logsumexp(x, axis=-1, keepdims=True)
        cum_BK = jnp.cumsum(jnp.exp(top_BK - lse_B1), axis=-1)
        # First index whose cumulative probability reaches p (the last one if rounding keeps the
        # total just under p).
        last_B1 = jnp.minimum(jnp.sum(cum_BK < p, axis=-1, keepdims=True), top_BK.shape[-1] - 1)
        cutoff_B1 = jnp.take_along_axis(top_BK, last_B1, axis=-1)
        x = jnp.where(x >= cutoff_B1, x, -jnp.inf)
    return x


def _check_inputs(logits, request_ids, positions):
    if logits.ndim != 2 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(
            f"logits: shape {logits.shape} dtype {logits.dtype}: expected a float array [B, V]"
        )
    batch = logits.shape[0]
    for name, arr in (("request_ids", request_ids), ("positions", positions)):
        if arr.shape != (batch,) or not jnp.issubdtype(arr.dtype, jnp.integer):
            raise ValueError(
                f"{name}: shape {arr.shape} dtype {arr.dtype}: expected an int array [{batch}]"
                " (one per logits row)"
            )


def sample(logits, *, seed, request_ids, positions, sampling: Sampling | None) -> jax.Array:
    """One token per row: int32 [B] from logits [B, V].

    seed: a Python int or an int32 scalar (traced is fine). request_ids, positions: int [B], the
    request each row belongs to and the position of the token being sampled; row b's noise is
    keyed by (seed, request_ids[b], positions[b]) alone. sampling: None is greedy.
    """
    logits = jnp.asarray(logits)
    request_ids = jnp.asarray(request_ids)
    positions = jnp.asarray(positions)
    _check_inputs(logits, request_ids, positions)
    if isinstance(seed, bool | float | complex):
        raise ValueError(f"seed={seed!r}: expected an int")
    sampling = None if sampling is None else sampling.validate()
    if sampling is None or sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    x_BV = filter_logits(logits, sampling)
    base = jax.random.key(seed)

    def draw(request_id, position, row_V):
        key = jax.random.fold_in(jax.random.fold_in(base, request_id), position)
        return jax.random.categorical(key, row_V)

    return jax.vmap(draw)(request_ids, positions, x_BV).astype(jnp.int32)
