"""A tiny training config for tests (seconds per run on a CPU), and reading back a checkpoint."""

from longctx_jax.config import base_config
from longctx_jax.run import load_model


def tiny_config(steps=4, **mesh):
    config = base_config()
    config.model.num_layers = 2
    config.model.embed_dim = 64
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 16
    config.model.mlp_dim = 128
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.data.prefetch_batches = 0
    config.train.steps = steps
    config.train.warmup_steps = 2
    config.train.checkpoint_every = 2
    for axis, size in mesh.items():
        config.mesh[axis] = size
    return config


# The same kind of tiny model as command-line overrides of configs/quickstart.py.
TINY_MODEL_FLAGS = [
    "--config.model.num_layers=1",
    "--config.model.embed_dim=64",
    "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1",
    "--config.model.head_dim=16",
    "--config.model.mlp_dim=128",
    # the quickest to compile (the CLI tests are not about the attention implementation; the
    # trainer's default `auto` is covered by the in-process tests of tiny_config())
    "--config.model.attention.impl=reference",
    "--config.data.seq_len=64",
    # configs/quickstart.py's evaluators, as small as they go
    "--config.evals.ppl.lengths=(64,)",
    "--config.evals.ppl.num_windows=1",
    "--config.evals.passkey.num_examples=1",
    "--config.evals.passkey.depths=(0.5,)",
]


def checkpointed_params(workdir, step):
    """The parameters saved at `step` under workdir/checkpoints (through `load_model`)."""
    return load_model(workdir, step)[1]
