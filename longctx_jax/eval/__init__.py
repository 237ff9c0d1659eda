"""Evaluation: evaluators from a registry (perplexity by position, passkey), run by the trainer
and `longctx eval`."""
