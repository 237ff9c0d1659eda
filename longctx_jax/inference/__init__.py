"""KV caches, prefill and decode, sampling and `generate` (see cache.py and generate.py)."""
