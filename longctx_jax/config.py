"""The base training config: every section at its defaults (model, data, train, mesh, distributed).

Experiment configs under configs/ start from `base_config()` and change only what they study; it
lives in the package so config files can import it wherever they are run from.
"""

import ml_collections

from longctx_jax.data.config import default_data_config
from longctx_jax.model.config import default_model_config
from longctx_jax.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    """Every section of a training config at its defaults."""
    config = ml_collections.ConfigDict()
    config.model = default_model_config()
    config.data = default_data_config()

    config.train = ml_collections.ConfigDict()
    config.train.steps = 1000
    config.train.seed = 0
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 100
    config.train.weight_decay = 0.1
    config.train.grad_clip = 1.0
    config.train.log_every = 1
    config.train.checkpoint_every = 200
    config.train.keep_checkpoints = 2
    # A workdir whose newest checkpoint's parameters start this run (fine-tuning); the optimizer
    # state and step start fresh. Ignored once this run has checkpoints of its own.
    config.train.init_from = ""

    # Devices per mesh axis; their product is the number of devices used.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.sequence = 1
    config.mesh.logical_axis_rules = DEFAULT_RULES
    # With sequence > 1, how the data pipeline lays tokens out over the sequence devices:
    # "zigzag" | "striped" (causal work balanced) | "contiguous" (see attention/ring.py).
    config.mesh.context_parallel_layout = "zigzag"

    # Multi-process runs (TPU pods, GPU clusters, or several processes on localhost).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 1
    config.distributed.process_id = 0
    return config
