"""What the training data teaches about distance: length statistics and trained pair distances.

    pair_distance_histogram(segment_ids, positions, max_distance=511)  # int64 [512]
    length_statistics(lengths)  # document_mean, token_weighted_mean, medians, ...

A model learns to use a key d tokens back only from (query, key) pairs at distance d that its
attention saw. `pair_distance_histogram` counts them in a batch: pairs in the same segment with
kv_pos <= q_pos, by d = q_pos - kv_pos. With document masking a row of short documents holds no
long pair at all; without it every row holds seq_len - d pairs at each d, most of them across
unrelated documents.

The inspection paradox: a random *token* sits in a long document far more often than a random
*document* is long. `document_mean` is E[L] over documents; `token_weighted_mean` is the mean
length of the document a random token is in, E[L^2] / E[L].

`TrainedDistances` accumulates both over the batches a trainer consumes, and `StatsIterator`
wraps the train iterator so that the running counts travel inside the data iterator's checkpoint
state: a resumed run's statistics equal an uninterrupted run's.
"""

from __future__ import annotations

import warnings

import grain
import numpy as np


def _check_max_distance(max_distance) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer):
        raise ValueError(f"max_distance={max_distance!r}: expected an integer >= 0")
    if max_distance < 0:
        raise ValueError(f"max_distance={max_distance!r}: expected an integer >= 0")
    return int(max_distance)


def _as_rows(segment_ids, positions):
    segment_ids, positions = np.asarray(segment_ids), np.asarray(positions)
    if segment_ids.shape != positions.shape or segment_ids.ndim not in (1, 2):
        raise ValueError(
            f"segment_ids {segment_ids.shape} and positions {positions.shape}: expected the same "
            "shape, [T] or [B, T]"
        )
    return np.atleast_2d(segment_ids), np.atleast_2d(positions)


def _segments(segment_ids, positions):
    """Yields each segment's positions (int64), row by row; ids <= 0 are padding, skipped."""
    for row_ids, row_pos in zip(*_as_rows(segment_ids, positions), strict=True):
        real = row_ids > 0
        ids, pos = row_ids[real], row_pos[real].astype(np.int64)
        for sid in np.unique(ids):
            yield pos[ids == sid]


def pair_distance_histogram(segment_ids, positions, *, max_distance) -> np.ndarray:
    """int64 [max_distance + 1]: counts[d] = the (query, key) pairs with the same segment id
    (> 0; ids <= 0 are padding) and q_pos - kv_pos = d, i.e. those causal attention lets see
    each other. Pairs farther than max_distance are not counted.

    A segment whose positions are a run of distinct consecutive integers (what packing makes,
    in any token order) contributes n - d pairs at d; any other set of positions is counted
    exactly from its position multiplicities m: counts[d] = sum_p m[p] * m[p + d].
    """
    return _pairs_and_lengths(segment_ids, positions, _check_max_distance(max_distance))[0]


def _pairs_and_lengths(segment_ids, positions, max_distance):
    """(pair_distance_histogram, int64 length of every segment): one pass over the segments."""
    counts = np.zeros(max_distance + 1, np.int64)
    lengths, run_lengths = [], []
    for pos in _segments(segment_ids, positions):
        lengths.append(len(pos))
        lo, hi = pos.min(), pos.max()
        if hi - lo + 1 == len(pos) and len(np.unique(pos)) == len(pos):
            run_lengths.append(len(pos))
            continue
        m = np.bincount(pos - lo)
        auto = np.correlate(m, m, mode="full")[len(m) - 1 :]
        n = min(len(auto), max_distance + 1)
        counts[:n] += auto[:n]
    if run_lengths:
        counts += _run_pairs(np.asarray(run_lengths, np.int64), max_distance)
    return counts, np.asarray(lengths, np.int64)


def _run_pairs(lengths, max_distance) -> np.ndarray:
    """sum over runs of max(n - d, 0) for d = 0..max_distance, in O(max n) time."""
    by_length = np.bincount(lengths)  # c[n]: runs of length n
    n = np.arange(len(by_length), dtype=np.int64)
    # runs longer than d: R(d) = sum_{n > d} c[n]; their tokens: S(d) = sum_{n > d} c[n] n
    longer = np.concatenate([np.cumsum(by_length[::-1])[::-1][1:], [0]])
    tokens = np.concatenate([np.cumsum((by_length * n)[::-1])[::-1][1:], [0]])
    d = np.arange(max_distance + 1)
    inside = d < len(by_length)
    counts = np.zeros(max_distance + 1, np.int64)
    counts[inside] = tokens[d[inside]] - d[inside] * longer[d[inside]]
    return counts


def _weighted_median(values, weights) -> float:
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def length_statistics(lengths, counts=None) -> dict:
    """Document- and token-weighted statistics of document lengths (each >= 1).

    `counts` (optional, same shape): how many documents have each length (a histogram).
    Returns documents, tokens, document_mean (E[L]), token_weighted_mean (E[L^2] / E[L]: the
    length of the document holding a random token), document_median, token_weighted_median,
    and max.
    """
    lengths = np.asarray(lengths, np.float64).reshape(-1)
    counts = np.ones_like(lengths) if counts is None else np.asarray(counts, np.float64)
    if counts.shape != lengths.shape:
        raise ValueError(f"counts {counts.shape}: expected the shape of lengths {lengths.shape}")
    if np.any(counts < 0):
        raise ValueError("counts: expected non-negative numbers")
    keep = counts > 0
    lengths, counts = lengths[keep], counts[keep]
    if lengths.size == 0:
        raise ValueError("lengths: expected at least one document")
    if np.any(lengths < 1) or not np.all(np.isfinite(lengths)):
        raise ValueError(f"lengths: expected finite lengths >= 1, got min {lengths.min()}")
    documents = counts.sum()
    tokens = (counts * lengths).sum()
    return dict(
        documents=float(documents),
        tokens=float(tokens),
        document_mean=float(tokens / documents),
        token_weighted_mean=float((counts * lengths**2).sum() / tokens),
        document_median=_weighted_median(lengths, counts),
        token_weighted_median=_weighted_median(lengths, counts * lengths),
        max=float(lengths.max()),
    )


class TrainedDistances:
    """Running counts over the batches a model trained on: the pair-distance histogram and the
    histogram of segment (document piece) lengths, for rows of `seq_len` tokens."""

    def __init__(self, seq_len: int):
        self.seq_len = int(seq_len)
        self.pairs = np.zeros(self.seq_len, np.int64)
        self.piece_lengths = np.zeros(self.seq_len + 1, np.int64)
        self.batches = 0

    def update(self, batch) -> None:
        pairs, pieces = _pairs_and_lengths(
            batch["segment_ids"], batch["positions"], self.seq_len - 1
        )
        self.pairs += pairs
        self.piece_lengths += np.bincount(pieces, minlength=self.seq_len + 1)
        self.batches += 1

    def state(self) -> dict:
        return dict(
            batches=self.batches,
            pairs=self.pairs.tolist(),
            piece_lengths=self.piece_lengths.tolist(),
        )

    def load(self, state) -> None:
        pairs, pieces = np.asarray(state["pairs"]), np.asarray(state["piece_lengths"])
        if pairs.shape != self.pairs.shape or pieces.shape != self.piece_lengths.shape:
            raise ValueError(
                f"saved data statistics are for rows of {len(pairs)} tokens; this run has "
                f"seq_len={self.seq_len}"
            )
        self.pairs, self.piece_lengths = pairs.astype(np.int64), pieces.astype(np.int64)
        self.batches = int(state["batches"])

    def summary(self) -> dict:
        """JSON-able: counts, piece length statistics and pair fractions beyond L/8, L/4, L/2."""
        out = self.state() | dict(seq_len=self.seq_len)
        if self.piece_lengths.any():
            lengths = np.arange(self.seq_len + 1)
            out["piece_lengths_stats"] = length_statistics(lengths, self.piece_lengths)
        out["pair_fraction_at_least"] = self.pair_fractions()
        return out

    def pair_fractions(self) -> dict:
        """{d: share of trained pairs at distance >= d} for d = seq_len / 8, / 4, / 2."""
        total = self.pairs.sum()
        return {
            str(d): float(self.pairs[d:].sum() / total) if total else 0.0
            for d in (self.seq_len // 8, self.seq_len // 4, self.seq_len // 2)
        }

    def scalars(self) -> dict:
        """TensorBoard scalars: data/piece_{document,token_weighted}_mean, data/pairs_beyond_d."""
        if not self.piece_lengths.any():
            return {}
        stats = length_statistics(np.arange(self.seq_len + 1), self.piece_lengths)
        out = {
            "data/piece_document_mean": stats["document_mean"],
            "data/piece_token_weighted_mean": stats["token_weighted_mean"],
        }
        for d, share in self.pair_fractions().items():
            out[f"data/pairs_at_least_{d}"] = share
        return out


class StatsIterator(grain.DatasetIterator):
    """A train iterator that counts what it yields in `stats` (TrainedDistances); its state
    holds the parent's state and the counts, so a checkpoint restores both."""

    def __init__(self, parent, stats: TrainedDistances):
        super().__init__(parent)
        self.stats = stats

    def __next__(self):
        batch = next(self._parent)
        self.stats.update(batch)
        return batch

    def get_state(self):
        return dict(iterator=self._parent.get_state(), trained_distances=self.stats.state())

    def set_state(self, state):
        if "trained_distances" not in state:  # a checkpoint from before the counts were kept
            warnings.warn(
                "the checkpoint's data state holds no trained-distance counts; counting from "
                "this step on",
                stacklevel=2,
            )
            self._parent.set_state(state)
            return
        self._parent.set_state(state["iterator"])
        self.stats.load(state["trained_distances"])
