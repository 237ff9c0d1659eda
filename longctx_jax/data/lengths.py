"""Document-length distributions, a config knob: which lengths of document the model trains on.

- "as_is":     documents untouched.
- "truncated": each document capped at `max_len` tokens (its prefix).
- "power_law": a length L is drawn from p(L) ~ L^-alpha on [min_len, max_len] (alpha = 0: uniform,
               alpha = 1: log-uniform; larger alpha puts more mass near min_len), and the document
               is cropped to a window of min(L, its length) tokens at a random offset. Documents
               shorter than L stay whole.
- "uniform":   "power_law" with alpha = 0 (the same crops): L uniform on [min_len, max_len].
- "mixture":   ProLong's long/short mix: a component k is drawn with probability `fractions[k]`,
               then L uniform on its `lengths[k]` = (lo, hi), and the document cropped as above.
- "upsample":  documents untouched here; the pipeline draws them by `upsample_weights` instead of
               once per epoch (`upsampled_stream`; Fu et al. 2024, "Data Engineering for Scaling
               Language Models to 128K Context").

Draws depend only on (seed, index), the index being the element's position in the dataset the
transform is mapped over (in the train pipeline: the repeated stream, so each epoch crops afresh).
"""

import dataclasses
import functools

import grain
import numpy as np

from longctx_jax.data.config import LENGTH_DISTRIBUTIONS, check_mixture

_STREAM = 0x1E6  # separates these draws from any other use of the same seed
_UPSAMPLE_STREAM = 0x0B5  # the upsampled epochs' draws
_UNCROPPED = ("as_is", "upsample")


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
    """Crops document `index` (a 1-D token array) per `kind`; a grain MapWithIndex transform.

    `fractions` and `lengths` are the "mixture" components (one (lo, hi) range per fraction).
    """

    kind: str = "as_is"
    min_len: int = 1
    max_len: int = 1
    alpha: float = 1.0
    seed: int = 0
    fractions: tuple = ()
    lengths: tuple = ()

    def __post_init__(self):
        if self.kind not in LENGTH_DISTRIBUTIONS:
            raise ValueError(f"kind={self.kind!r}: expected one of {LENGTH_DISTRIBUTIONS}")
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(
                f"min_len={self.min_len}, max_len={self.max_len}: expected 1 <= min_len <= max_len"
            )
        if not 0.0 <= self.alpha < float("inf"):
            raise ValueError(f"alpha={self.alpha!r}: expected a finite number >= 0")
        if self.kind == "mixture":
            check_mixture(self.fractions, self.lengths, "LengthDistribution", prefix="")

    def _length(self, rng):
        """The crop length L of one document."""
        if self.kind == "mixture":
            cumulative = np.cumsum(self.fractions)
            component = np.searchsorted(cumulative / cumulative[-1], rng.random(), side="right")
            return sample_power_law_length(rng, *self.lengths[component], 0.0)
        alpha = 0.0 if self.kind == "uniform" else self.alpha
        return sample_power_law_length(rng, self.min_len, self.max_len, alpha)

    def map_with_index(self, index, element):
        if self.kind in _UNCROPPED:
            return element
        if self.kind == "truncated":
            return element[: self.max_len]
        rng = np.random.default_rng([self.seed, _STREAM, index])
        length = self._length(rng)
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
        fractions=tuple(config.mixture.fractions),
        lengths=tuple(tuple(pair) for pair in config.mixture.lengths),
    )


def apply_length_distribution(documents, distribution):
    """grain MapDataset of documents -> the same documents cropped by `distribution`."""
    if distribution.kind in _UNCROPPED:
        return documents
    return documents.map_with_index(distribution)


def upsample_weights(lengths, domains, *, min_len, ratio):
    """Each document's sampling weight: `ratio` if it has >= min_len tokens, else 1, scaled per
    domain (its source: `sources.path_domain`) by the domain's tokens / its weighted tokens, so
    that drawing documents by weight keeps every domain's expected share of tokens."""
    lengths = np.asarray(lengths, np.float64)
    weights = np.where(lengths >= min_len, float(ratio), 1.0)
    _, domain = np.unique(np.asarray(domains), return_inverse=True)
    scale = np.bincount(domain, lengths) / np.bincount(domain, weights * lengths)
    return weights * scale[domain]


def upsampled_stream(documents, weights, seed):
    """Endless MapDataset of `documents` drawn by `weights`, epoch by epoch.

    Epoch e holds len(documents) draws, in a shuffled order: systematic resampling (one uniform
    offset) gives document i floor or ceil of n * w_i / sum(w) copies, that number in expectation.
    Epoch e depends only on (seed, e); element k only on (seed, k), so grain resumes it exactly.
    """
    n = len(documents)
    cumulative = np.cumsum(np.asarray(weights, np.float64))
    cumulative /= cumulative[-1]  # exactly 1 at the end: every draw below it lands on a document

    @functools.lru_cache(maxsize=2)  # an epoch's order, reused for its n elements
    def epoch_order(epoch):
        rng = np.random.default_rng([seed, _UPSAMPLE_STREAM, epoch])
        drawn = np.searchsorted(cumulative, (rng.random() + np.arange(n)) / n, side="right")
        return rng.permutation(drawn)

    return (
        grain.MapDataset.range(n)
        .repeat()
        .map_with_index(lambda index, k: documents[int(epoch_order(index // n)[k])])
    )
