"""Training: sharded state, the pure train step, orbax checkpoints, metrics, the loop."""
