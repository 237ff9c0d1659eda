"""Decoding through the KV cache computes the model's own function.

For every attention config, logits from the cache path (a 5-token prefill chunk, then single-token
decode steps and a 3-token chunk) equal the full forward's logits at every position, float32,
tight; rows of different prompt lengths in one batch equal each row alone. The full forward runs
over the cache's whole length (`rope_length`), so dynamic NTK and LongRoPE see the same length.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from inference_testlib import LONGROPE, config, forward, random_params, random_tokens

from longctx_jax.inference.generate import cached_logits
from longctx_jax.inference.spec import CacheSpec

T = 12
SCHEDULE = (5, 3, 1)  # a prefill chunk, a 3-token chunk, then decode steps
ONE_LAYER = {"num_layers": 1}  # configs whose difference is inside one layer compile faster
SPARSE = {
    "attention.kind": "sparse_topk",
    "attention.sparse.stage": "sparse",
    "attention.sparse.granularity": "token",
    "attention.sparse.top_k": 4,
    "attention.sparse.local_window": 2,
    "attention.sparse.first_tokens": 1,
}
CONFIGS = {
    "gqa": {},
    "mha_alibi": {**ONE_LAYER, "num_kv_heads": 4, "position.kind": "alibi"},
    "mqa_soft_cap_interleaved": {
        **ONE_LAYER,
        "num_kv_heads": 1,
        "attention.logits_soft_cap": 2.0,
        "position.layout": "interleaved",
    },
    "window": {"attention.window": 4},
    "nope_blockwise": {**ONE_LAYER, "position.kind": "nope", "attention.impl": "blockwise"},
    "rope_linear": {
        **ONE_LAYER,
        "position.rope_kind": "linear",
        "position.rope_scaling.factor": 2.0,
    },
    "rope_ntk": {**ONE_LAYER, "position.rope_kind": "ntk", "position.rope_scaling.factor": 2.0},
    "rope_dynamic": {
        **ONE_LAYER,
        "position.rope_kind": "dynamic",
        "position.rope_scaling.factor": 2.0,
        "position.rope_scaling.max_position_embeddings": 8,
    },
    "rope_yarn": {
        **ONE_LAYER,
        "position.rope_kind": "yarn",
        "position.rope_scaling.factor": 4.0,
        "position.rope_scaling.original_max_position_embeddings": 8,
    },
    "rope_llama3": {
        **ONE_LAYER,
        "position.rope_kind": "llama3",
        "position.rope_scaling.factor": 8.0,
        "position.rope_scaling.low_freq_factor": 1.0,
        "position.rope_scaling.high_freq_factor": 4.0,
        "position.rope_scaling.original_max_position_embeddings": 8,
    },
    "rope_longrope": {**ONE_LAYER, **LONGROPE},
    "dsa_indexer": SPARSE,
    "dsa_oracle": {**ONE_LAYER, **SPARSE, "attention.sparse.selector": "oracle"},
    "dsa_warmup": {**ONE_LAYER, **SPARSE, "attention.sparse.stage": "dense_warmup"},
    "linear": {"attention.kind": "linear", "attention.linear.chunk_size": 4},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_logits_equal_the_full_forward(name, seed):
    cfg = config(CONFIGS[name])
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    expected = forward(cfg, params, tokens)
    got = cached_logits(cfg, params, tokens, chunk_size=SCHEDULE)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5, err_msg=f"[seed={seed}]")


@pytest.mark.parametrize("name", ["gqa", "linear", "dsa_indexer"])
def test_rows_of_different_lengths_equal_each_row_alone(name, seed):
    cfg = config(CONFIGS[name])
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 3, T)
    lengths = np.array([T, 7, 10])
    got = cached_logits(cfg, params, tokens, lengths=lengths, chunk_size=(4, 1))
    for row, length in enumerate(lengths):
        alone = cached_logits(cfg, params, tokens[row : row + 1], chunk_size=(4, 1), max_length=T)
        np.testing.assert_allclose(
            got[row, :length], alone[0, :length], rtol=2e-5, atol=2e-5, err_msg=f"row {row}"
        )


def test_whole_prefill_equals_chunked_prefill(seed):
    cfg = config()
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    whole = cached_logits(cfg, params, tokens, chunk_size=T)
    chunked = cached_logits(cfg, params, tokens, chunk_size=(3, 2, 4))
    np.testing.assert_allclose(chunked, whole, rtol=2e-5, atol=2e-5)


def test_dynamic_ntk_rotates_at_the_cache_length(seed):
    """The cache's dynamic NTK is the forward pass at its whole length, not the prefix's."""
    cfg = config(CONFIGS["rope_dynamic"])
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 1, T)
    prefix = forward(cfg, params, tokens[:, :10])  # 10 > max_position_embeddings = 8
    got = cached_logits(cfg, params, tokens, chunk_size=1)
    assert not np.allclose(got[:, :10], prefix, atol=1e-4)
    short = cached_logits(cfg, params, tokens[:, :8], chunk_size=1)  # <= 8: plain RoPE
    np.testing.assert_allclose(short, forward(cfg, params, tokens[:, :8]), rtol=2e-5, atol=2e-5)


def test_a_full_cache_that_cannot_hold_the_sequence_is_refused(seed):
    cfg = config()
    params = random_params(cfg, seed)
    with pytest.raises(ValueError, match=r"cache\.capacity=8: .* 12 tokens"):
        cached_logits(cfg, params, random_tokens(seed, 1, T), cache=CacheSpec(capacity=8))


def test_caches_of_another_model_are_refused(seed):
    from longctx_jax.inference.layout import allocate
    from longctx_jax.model import DecoderLM

    cfg, other = config(), config({"num_kv_heads": 1})
    params = random_params(cfg, seed)
    caches = allocate(other, 1, None, T)
    with pytest.raises(ValueError, match=r"caches\[0\] was built for another model config"):
        DecoderLM(cfg).apply(
            params,
            jnp.zeros((1, 1), jnp.int32),
            positions=jnp.zeros((1, 1), jnp.int32),
            segment_ids=jnp.zeros((1, 1), jnp.int32),
            caches=caches,
            method="extend",
        )
