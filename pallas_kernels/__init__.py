"""Pallas kernels, one folder per op; each has tpu.py (Mosaic TPU), gpu.py (Pallas Triton GPU) and a
pure-JAX reference it is tested against. Nothing here imports `longctx_jax`."""
