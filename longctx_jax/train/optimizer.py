"""AdamW with linear warm-up, cosine decay and global-norm clipping (optax); stage freezing."""

from __future__ import annotations

import jax
import optax


def schedule_steps(train_config) -> int:
    """The schedule's length: `train.schedule_steps`, or `train.steps` when it is None."""
    steps = train_config.get("schedule_steps", None)
    return int(train_config.steps if steps is None else steps)


def learning_rate_schedule(train_config):
    """Linear warm-up to `learning_rate` over `warmup_steps`, cosine decay to 10% by
    `schedule_steps(train_config)` (then flat at 10%)."""
    total = schedule_steps(train_config)
    warmup = min(int(train_config.warmup_steps), total)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=0.1 * train_config.learning_rate,
    )


def make_optimizer(train_config, model_config=None) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay skips 1-D parameters (norm scales).

    For a `sparse_topk` model, gradients and updates of every parameter outside the indexer are
    zeroed in the dense warm-up stage (frozen: not even weight decay moves them). Both stages
    build the same optimizer state, so a sparse run can start from a warm-up checkpoint.
    """
    adamw = optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip),
        optax.adamw(
            learning_rate_schedule(train_config),
            b1=0.9,
            b2=0.95,
            weight_decay=train_config.weight_decay,
            mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    )
    if model_config is None or model_config.attention.kind != "sparse_topk":
        return adamw
    warmup = model_config.attention.sparse.stage == "dense_warmup"
    frozen = lambda params: jax.tree_util.tree_map_with_path(  # noqa: E731
        lambda path, _: warmup and "indexer" not in jax.tree_util.keystr(path), params
    )
    freeze = optax.masked(optax.set_to_zero(), frozen)
    return optax.chain(freeze, adamw, freeze)
