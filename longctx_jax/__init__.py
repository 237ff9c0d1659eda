"""longctx-jax: a JAX/Flax research codebase for long-context language models."""
