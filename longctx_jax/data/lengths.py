"""Document-length distributions, a config knob: which lengths of document the model trains on.

- "as_is":     documents untouched.
- "truncated": each document capped at `max_len` tokens (its prefix).
- "power_law": a length L is drawn from p(L) ~ L^-alpha on [min_len, max_len] (alpha = 0: uniform,
               alpha = 1: log-uniform; larger alpha puts more mass near min_len), and the document
               is cropped to a window of min(L, its length) tokens at a random offset. Documents
               shorter than L stay whole.

Draws depend only on (seed, index), the index being the element's position in the dataset the
transform is mapped over (in the train pipeline: the repeated stream, so each epoch crops afresh).
"""

import dataclasses

import grain
import numpy as np

from longctx_jax.data.config import LENGTH_DISTRIBUTIONS

_STREAM = 0x1E6  # separates these draws from any other use of the same seed


def sample_power_law_length(rng, min_len, max_len, alpha):
    """One integer length in [min_len, max_len] with P(L) ~ L^-alpha (inverse-CDF, continuous)."""
    u = rng.random()
    lo, hi = float(min_len), float(max_len) + 1.0  # floor of a draw on [lo, hi) covers the ints
    if abs(alpha - 1.0) < 1e-12:
        x = lo * (hi / lo) ** u
    else:
        a = 1.0 - alpha
        x = (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)
    return int(min(max(np.floor(x), min_len), max_len))


@dataclasses.dataclass(frozen=True)
class LengthDistribution(grain.transforms.MapWithIndex):
    """Crops document `index` (a 1-D token array) per `kind`; a grain MapWithIndex transform."""

    kind: str = "as_is"
    min_len: int = 1
    max_len: int = 1
    alpha: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in LENGTH_DISTRIBUTIONS:
            raise ValueError(f"kind={self.kind!r}: expected one of {LENGTH_DISTRIBUTIONS}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"min_len={self.min_len}, max_len={self.max_len}: expected 1 <= min_len <= max_len"
            )
        if not 0.0 <= self.alpha < float("inf"):
            raise ValueError(f"alpha={self.alpha!r}: expected a finite number >= 0")

    def map_with_index(self, index, element):
        if self.kind == "as_is":
            return element
        if self.kind == "truncated":
            return element[: self.max_len]
        rng = np.random.default_rng([self.seed, _STREAM, index])
        length = sample_power_law_length(rng, self.min_len, self.max_len, self.alpha)
        if len(element) <= length:
            return element
        start = int(rng.integers(0, len(element) - length + 1))
        return element[start : start + length]


def length_distribution_from_config(config):
    """The LengthDistribution the data config asks for."""
    return LengthDistribution(
        kind=config.length_distribution,
        min_len=config.min_doc_len,
        max_len=config.max_doc_len,
        alpha=float(config.power_law_alpha),
        seed=config.seed,
    )


def apply_length_distribution(documents, distribution):
    """grain MapDataset of documents -> the same documents cropped by `distribution`."""
    if distribution.kind == "as_is":
        return documents
    return documents.map_with_index(distribution)
