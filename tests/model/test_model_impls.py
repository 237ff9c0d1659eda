"""Every attention implementation gives the same model: logits and parameter gradients.

T = 300 spans two key blocks of `blockwise` (block_kv 256), with packed documents, a soft cap and
GQA, so tile skipping, partial tiles and padding are all on the path; the Pallas kernels (interpret
mode) see the same model. (ALiBi across
implementations is covered by the attention tests and by test_model_causality's gradients.)
"""

import jax
import jax.numpy as jnp
import numpy as np
from model_testlib import assert_close, packed_segments, random_params, random_tokens, tiny_config

from longctx_jax.model import DecoderLM


def loss_and_grads(cfg, params, tokens, targets, positions, segment_ids):
    model = DecoderLM(cfg)

    def loss(p):
        logits = model.apply(p, tokens, positions=positions, segment_ids=segment_ids)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean(), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, logits, grads


def test_impls_agree_on_logits_and_param_gradients(seed):
    rng = np.random.default_rng(seed)
    b, t = 2, 300
    tokens, targets = random_tokens(rng, b, t), random_tokens(rng, b, t)
    segment_ids, positions = packed_segments(rng, b, t, docs=3)
    results = {}
    # The Pallas kernels run in interpret mode here, with their default blocks (one block each).
    for impl in ("reference", "blockwise", "auto", "pallas_tpu", "pallas_gpu"):
        cfg = tiny_config(
            {
                "attention.impl": impl,
                "attention.logits_soft_cap": 20.0,
                "num_layers": 1,
            }
        )
        params = random_params(cfg, seed)
        results[impl] = loss_and_grads(cfg, params, tokens, targets, positions, segment_ids)

    ref_loss, ref_logits, ref_grads = results["reference"]
    for impl, (loss, logits, grads) in results.items():
        what = f"[seed={seed} impl={impl}]"
        assert_close(logits, ref_logits, 1e-5, what)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=what)
        for (path, g), r in zip(
            jax.tree_util.tree_leaves_with_path(grads),
            jax.tree_util.tree_leaves(ref_grads),
            strict=True,
        ):
            assert_close(g, r, 1e-4, f"{what} {jax.tree_util.keystr(path)}")


def test_remat_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    tokens, targets = random_tokens(rng, 2, 16), random_tokens(rng, 2, 16)
    positions = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16))
    cfg = tiny_config()
    params = random_params(cfg, seed)
    plain = loss_and_grads(cfg, params, tokens, targets, positions, None)
    remat = loss_and_grads(tiny_config({"remat": True}), params, tokens, targets, positions, None)
    for a, b in zip(
        jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(remat), strict=True
    ):
        assert_close(a, b, 1e-5)
