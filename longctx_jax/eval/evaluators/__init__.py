"""Evaluator plug-ins: every module here registers itself with `longctx_jax.eval.registry`."""
