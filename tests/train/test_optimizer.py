"""The optimizer (longctx_jax/train/optimizer.py) against formulas written out in float64 numpy.

* the learning-rate schedule at every step: linear warm-up from 0 to the peak at warmup_steps,
  cosine decay to 10% of the peak at train.steps, flat at 10% after that;
* weight decay: one AdamW update with zero gradients moves every parameter with >= 2 dimensions by
  exactly -lr * weight_decay * p and leaves 1-D parameters (RMSNorm scales) untouched;
* clipping by the global norm (over every leaf together), read from Adam's first moments.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny_models import tiny_model_config

from longctx_jax.config import base_config
from longctx_jax.model import DecoderLM
from longctx_jax.train.optimizer import learning_rate_schedule, make_optimizer

B1, B2 = 0.9, 0.95  # AdamW's moment decay rates (the optimizer's documented choice)


def train_config(**fields):
    config = base_config().train
    config.update(fields)
    return config


def reference_learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """The schedule's definition, float64: warm-up from 0, cosine to 0.1 * peak at `total`."""
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    end = 0.1 * peak
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize(
    "fields",
    [
        {},  # base_config: 1000 steps, 100 warm-up, 3e-3
        dict(steps=40, warmup_steps=7, learning_rate=1e-3),
        dict(steps=25, warmup_steps=0, learning_rate=0.5),  # no warm-up: the peak at step 0
        dict(steps=3, warmup_steps=1, learning_rate=2.0),
    ],
    ids=["base", "short", "no-warmup", "tiny"],
)
def test_learning_rate_schedule_matches_formula_at_every_step(fields):
    config = train_config(**fields)
    peak, warmup, total = config.learning_rate, config.warmup_steps, config.steps
    assert config.get("schedule_steps") is None  # the schedule follows train.steps
    steps = np.arange(total + 20)  # and 20 steps past the end (flat at 10%)
    schedule = learning_rate_schedule(config)
    got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)), np.float64)
    want = np.array([reference_learning_rate(int(s), peak, warmup, total) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * peak)
    assert float(schedule(0)) == pytest.approx(peak if warmup == 0 else 0.0, rel=1e-6)
    assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-6)
    assert float(schedule(total)) == pytest.approx(0.1 * peak, rel=1e-6)
    assert float(schedule(total + 1000)) == pytest.approx(0.1 * peak, rel=1e-6)


def first_update(config, params, grads):
    """(new params, optimizer state) after one update of make_optimizer(config) from `params`."""
    optimizer = make_optimizer(config)
    state = optimizer.init(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_weight_decay_skips_1d_parameters(seed):
    """Zero gradients: Adam's step is 0/(0 + eps) = 0, so only decoupled weight decay moves
    parameters, by -lr * wd * p, and only those with more than one dimension."""
    rng = np.random.default_rng(seed)
    shapes = {"scale": (6,), "bias": (3,), "kernel": (6, 3), "heads": (6, 2, 4), "table": (5, 6)}
    params = {name: jnp.asarray(rng.standard_normal(s), jnp.float32) for name, s in shapes.items()}
    params["nested"] = {"norm": jnp.asarray(rng.standard_normal(4), jnp.float32)}
    lr, wd = 0.25, 0.3
    config = train_config(learning_rate=lr, warmup_steps=0, steps=10, weight_decay=wd)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, _ = first_update(config, params, zeros)
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        moved = np.asarray(_get(new, path), np.float64)
        p64 = np.asarray(p, np.float64)
        if p.ndim > 1:
            np.testing.assert_allclose(moved, p64 - lr * wd * p64, rtol=1e-6, err_msg=name)
            assert (moved != p64).any(), name
        else:
            np.testing.assert_array_equal(moved, p64, err_msg=f"{name} is 1-D but moved")


def _get(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_weight_decay_on_the_model_moves_all_but_the_norm_scales(seed):
    """The same on DecoderLM's parameters (untied head): every RMSNorm scale stays, every
    embedding, projection and head matrix decays."""
    cfg = tiny_model_config({"tie_embeddings": False, "num_layers": 1})
    boxed = DecoderLM(cfg).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
    params = nn.unbox(boxed)
    lr, wd = 0.5, 0.2
    config = train_config(learning_rate=lr, warmup_steps=0, steps=10, weight_decay=wd)
    new, _ = first_update(config, params, jax.tree.map(jnp.zeros_like, params))
    names = {"1-D": [], ">=2-D": []}
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        moved, p64 = np.asarray(_get(new, path), np.float64), np.asarray(p, np.float64)
        if p.ndim == 1:
            names["1-D"].append(name)
            np.testing.assert_array_equal(moved, p64, err_msg=name)
        else:
            names[">=2-D"].append(name)
            np.testing.assert_allclose(moved, p64 * (1 - lr * wd), rtol=1e-6, err_msg=name)
    # 3 norms (attention, mlp, final); embedding, q, k, v, out, gate, up, down and the head.
    assert len(names["1-D"]) == 3 and all("scale" in n for n in names["1-D"]), names
    assert len(names[">=2-D"]) == 9, names


@pytest.mark.parametrize("norm_over_clip", [4.0, 0.5], ids=["clipped", "unclipped"])
def test_gradient_clipping_by_global_norm(seed, norm_over_clip):
    """Adam's first moment after one step is (1 - b1) * g_clipped and its second (1 - b2) *
    g_clipped**2, where g_clipped = g * min(1, clip / ||g||) with ||g|| over every leaf."""
    rng = np.random.default_rng(seed)
    shapes = {"a": (7,), "b": (3, 5), "c": (2, 2, 3)}
    grads64 = {name: rng.standard_normal(s) * (i + 1) for i, (name, s) in enumerate(shapes.items())}
    norm = math.sqrt(sum((g**2).sum() for g in grads64.values()))
    clip = norm / norm_over_clip
    params = {name: jnp.ones(s, jnp.float32) for name, s in shapes.items()}
    grads = {name: jnp.asarray(g, jnp.float32) for name, g in grads64.items()}
    config = train_config(learning_rate=1e-2, warmup_steps=0, steps=10, grad_clip=clip)
    _, state = first_update(config, params, grads)
    mu = optax.tree_utils.tree_get(state, "mu")
    nu = optax.tree_utils.tree_get(state, "nu")
    factor = min(1.0, clip / norm)
    for name, g in grads64.items():
        np.testing.assert_allclose(np.asarray(mu[name]), (1 - B1) * g * factor, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(nu[name]), (1 - B2) * (g * factor) ** 2, rtol=1e-5)
