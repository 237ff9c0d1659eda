"""Token-granular sparse attention (each query attends to its own selected keys); see tpu.py."""
