"""Matplotlib figures written from experiments' results.json files."""
