"""Split-K ("flash decoding") attention over float or packed 4/8-bit KV caches; see driver.py."""

from pallas_kernels.decode_attention.driver import decode_attention

__all__ = ["decode_attention"]
