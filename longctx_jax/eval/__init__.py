"""Evaluation: evaluators from a registry (perplexity by position, passkey, mqar, niah,
needle_attention), run by the trainer and `longctx eval`."""
