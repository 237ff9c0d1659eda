"""Byte-level vocabulary: a token is a byte value, 0..255. No tokenizer to download or train."""

import numpy as np

VOCAB_SIZE = 256


def encode(text):
    """UTF-8 bytes of `text` as int32 tokens [len(bytes)]."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)


def decode(tokens):
    """Tokens (any int array or sequence of byte values) back to text; invalid UTF-8 is replaced."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise ValueError(
            f"tokens: values in [{tokens.min()}, {tokens.max()}], expected byte values 0..255"
        )
    return tokens.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
