"""AdamW with linear warm-up, cosine decay and global-norm clipping (optax)."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config):
    """Linear warm-up to `learning_rate` over `warmup_steps`, cosine decay to 10% by `steps`."""
    warmup = min(int(train_config.warmup_steps), int(train_config.steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(int(train_config.steps), warmup + 1),
        end_value=0.1 * train_config.learning_rate,
    )


def make_optimizer(train_config) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay skips 1-D parameters (norm scales)."""
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip),
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=0.9,
            b2=0.95,
            weight_decay=train_config.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )
