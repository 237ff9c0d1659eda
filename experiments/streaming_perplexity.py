"""Streaming perplexity (StreamingLLM's experiment): NLL by position of a trained run read one
token at a time through a full cache, a window of C slots, and 4 (or 1) sinks + a window.

  .venv/bin/python experiments/streaming_perplexity.py --workdir runs/quickstart \
      --capacity 64 --length 513

Text: stretches of standard-library sources (json/decoder.py, email/message.py), 4 rows. Prints
the mean NLL (nats/byte) per 16-token bucket per cache. StreamingLLM's picture: the window's NLL
jumps once the first tokens leave it (the model parks attention on them), sinks keep it flat.
"""

from __future__ import annotations

import argparse
import email.message
import inspect
import json.decoder

import jax.numpy as jnp
import numpy as np

from longctx_jax.data import vocab
from longctx_jax.inference.generate import cached_logits
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.run import load_model

BUCKET = 16


def texts(length: int) -> np.ndarray:
    sources = [vocab.encode(inspect.getsource(m)) for m in (json.decoder, email.message)]
    return np.stack([s[start : start + length] for start in (1000, 5000) for s in sources])


def nll_by_position(model_config, params, rows, spec: CacheSpec) -> np.ndarray:
    """float64 [T - 1]: mean over rows of -log p(token t+1 | tokens <= t) through `spec`."""
    logits = np.asarray(cached_logits(model_config, params, jnp.asarray(rows), cache=spec))
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    picked = np.take_along_axis(logits[:, :-1], rows[:, 1:, None], -1)[..., 0]
    return (log_z[:, :-1] - picked).mean(0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--length", type=int, default=513)
    args = parser.parse_args(argv)
    model_config, params = load_model(args.workdir)
    rows = texts(args.length)
    caches = {
        "full": CacheSpec(),
        "window": CacheSpec(policy="window", capacity=args.capacity),
        "sinks=4": CacheSpec(policy="sinks", capacity=args.capacity, sinks=4),
        "sinks=1": CacheSpec(policy="sinks", capacity=args.capacity, sinks=1),
    }
    n = (args.length - 1) // BUCKET * BUCKET
    print(
        f"mean NLL (nats/byte) per {BUCKET}-token bucket, {len(rows)} rows, cache of "
        f"{args.capacity} slots"
    )
    for name, spec in caches.items():
        nll = nll_by_position(model_config, {"params": params}, rows, spec)[:n]
        buckets = nll.reshape(-1, BUCKET).mean(1)
        print(f"{name:8s} " + " ".join(f"{b:.2f}" for b in buckets))


if __name__ == "__main__":
    main()
