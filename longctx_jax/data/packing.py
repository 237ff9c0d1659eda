"""Packing documents into fixed-length rows, with the arrays attention and the loss need.

Documents are concatenated and cut every `seq_len` tokens (grain's ConcatThenSplitIterDataset):
no padding except after the last document of a finite stream, and a long document continues in
the next rows. A row is a dict of [seq_len] arrays:

  tokens       int32  byte values; 0 on padding.
  segment_ids  int32  document_masking=True: 1, 2, ... per document piece in the row, 0 on padding.
                      document_masking=False: 1 on every token of the row, 0 on padding.
  positions    int32  document_masking=True: restart at 0 for each piece (a document continued
                      from the previous row starts again at 0, as in grain and MaxText);
                      document_masking=False: the row's index 0..seq_len-1, 0 on padding.
  targets      int32  the next token of the same document piece, 0 where there is none.
  weights      float32 loss mask: 1 where `targets` is a real next token, 0 on the last token of
                      each piece and on padding.

`targets` and `weights` are the same with document masking on or off, so the knob changes only
what the model sees (its attention mask and positions) and losses stay comparable over exactly the
same predicted tokens; no target ever crosses into another document or into padding.

The iterator state survives a JSON round trip (what grain's `DatasetIterator.save` and orbax do):
grain 0.2.18's ConcatThenSplit compares the restored `remainder_slices` with a tuple, and JSON
turns tuples into lists, which silently replays the wrong tokens; `_JsonSafeStateIterator` turns
them back into tuples on restore.
"""

import functools

import grain
import numpy as np

ROW_KEYS = ("tokens", "targets", "weights", "segment_ids", "positions")


def _as_features(tokens):
    return {"tokens": tokens}


def _is_nonempty(features):
    return len(features["tokens"]) > 0


def finalize_row(packed, *, document_masking=True):
    """A ConcatThenSplit row ({tokens, tokens_segment_ids, tokens_positions}) -> the row dict."""
    tokens = np.asarray(packed["tokens"], dtype=np.int32)
    segment_ids = np.asarray(packed["tokens_segment_ids"], dtype=np.int32)
    positions = np.asarray(packed["tokens_positions"], dtype=np.int32)
    has_next = np.zeros(tokens.shape, dtype=bool)
    has_next[:-1] = (segment_ids[1:] == segment_ids[:-1]) & (segment_ids[:-1] > 0)
    targets = np.zeros_like(tokens)
    targets[:-1] = np.where(has_next[:-1], tokens[1:], 0)
    if not document_masking:
        real = segment_ids > 0
        segment_ids = real.astype(np.int32)
        positions = np.where(real, np.arange(tokens.shape[0], dtype=np.int32), 0).astype(np.int32)
    return {
        "tokens": tokens,
        "targets": targets,
        "weights": has_next.astype(np.float32),
        "segment_ids": segment_ids,
        "positions": positions,
    }


def _json_form(state):
    """Tuples -> lists, recursively: the form a state takes after a JSON round trip."""
    if isinstance(state, dict):
        return {k: _json_form(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return [_json_form(v) for v in state]
    return state


class _JsonSafeStateIterator(grain.DatasetIterator):
    """Passes a ConcatThenSplit iterator through; states in JSON form, restored with tuples."""

    def __init__(self, parent):
        super().__init__(parent)

    def __next__(self):
        return next(self._parent)

    def get_state(self):
        return _json_form(self._parent.get_state())

    def set_state(self, state):
        state = dict(state)
        state["remainder_slices"] = {
            key: tuple(value) for key, value in state["remainder_slices"].items()
        }
        self._parent.set_state(state)


class _JsonSafeStateIterDataset(grain.IterDataset):
    def __init__(self, parent):
        super().__init__(parent)

    def __iter__(self):
        return _JsonSafeStateIterator(self._parent.__iter__())

    def __str__(self):
        return "JsonSafeStateIterDataset"


def pack_documents(documents, *, seq_len, document_masking=True):
    """grain IterDataset of 1-D token arrays -> IterDataset of packed rows (see module docstring).

    Empty documents are dropped (they would take a segment id and hold no token).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r}: expected an integer >= 2")
    if not isinstance(document_masking, bool):
        raise ValueError(f"document_masking={document_masking!r}: expected a bool")
    features = documents.map(_as_features).filter(_is_nonempty)
    packed = grain.experimental.ConcatThenSplitIterDataset(
        features, length_struct={"tokens": seq_len}
    )
    rows = _JsonSafeStateIterDataset(packed)
    return rows.map(functools.partial(finalize_row, document_masking=document_masking))
