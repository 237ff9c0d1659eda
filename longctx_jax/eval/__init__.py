"""Evaluation: cost models and measurements (FLOPs, time, memory), perplexity, retrieval."""
