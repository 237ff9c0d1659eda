"""Quickstart: a 2-layer byte-level model on the standard library's source, a few minutes on a CPU.

  longctx train --config configs/quickstart.py --workdir runs/quickstart

Expect the loss to fall from ~5.5 nats/byte (uniform over 256 bytes) to below ~2.5 within a few
hundred steps; `runs/quickstart/metrics.jsonl` has one line per step. Every 100 steps the
perplexity evaluator scores 16 validation windows at 256 and 1024 bytes (`eval/ppl/...`), and at
the end a small passkey grid runs too; both land in metrics.jsonl and runs/quickstart/eval/.
Evaluate a checkpoint again later with

  longctx eval --workdir runs/quickstart [--step 200]
"""

from longctx_jax.config import base_config
from longctx_jax.eval.registry import eval_config


def get_config():
    config = base_config()
    config.model.num_layers = 2
    config.model.embed_dim = 128
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 32
    config.model.mlp_dim = 384
    config.data.seq_len = 256
    config.data.batch_size = 8
    config.train.steps = 300
    config.train.warmup_steps = 30
    config.train.checkpoint_every = 100
    config.evals.ppl = eval_config("perplexity", every=100, lengths=(256, 1024), num_windows=16)
    config.evals.passkey = eval_config("passkey", every=0, lengths=(256,), num_examples=4)
    return config
