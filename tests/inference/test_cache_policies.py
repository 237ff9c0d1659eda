"""Eviction policies against an independent numpy model of streaming decode (one layer).

For each policy, a one-layer model reads 14 tokens through a cache of 6 slots (an 8-token prefill
chunk, then one token per step): the logits at
every step and the tokens kept at the end equal streaming_reference.stream's, which recomputes
attention over the kept tokens in float64 and applies the policy's rule as written in spec.py.
With room for every token, each policy equals the full cache.
"""

import numpy as np
import pytest
from inference_testlib import config, forward, random_params, random_tokens
from streaming_reference import stream

from longctx_jax.inference.generate import cached_logits
from longctx_jax.inference.spec import CacheSpec

T, CAPACITY = 14, 6
POLICIES = {
    "window": dict(),
    "sinks": dict(sinks=2),
    "h2o": dict(recent=2),
    "tova": dict(),
    "knorm": dict(recent=1),
    "snapkv": dict(recent=3, pool=3),
}
PREFILL = 8  # a first chunk longer than the cache (a prompt compressed at prefill), then decode


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_equals_the_streaming_reference(policy, seed):
    cfg = config({"num_layers": 1})
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 1, T)
    options = POLICIES[policy]
    prefill = PREFILL
    spec = CacheSpec(policy=policy, capacity=CAPACITY, **options)
    got, caches = cached_logits(
        cfg, params, tokens, cache=spec, chunk_size=(prefill, 1), return_caches=True
    )
    expected, kept = stream(
        params, cfg, tokens[0], policy=policy, capacity=CAPACITY, prefill=prefill, **options
    )
    np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-4, err_msg=f"[seed={seed}]")
    order = np.asarray(caches[0].order[0])
    assert sorted(order[order >= 0].tolist()) == kept, f"[seed={seed}]"


@pytest.mark.parametrize("policy", ["sinks", "h2o", "snapkv"])
def test_policies_with_room_for_every_token_equal_the_full_cache(policy, seed):
    cfg = config({"num_layers": 1})
    params = random_params(cfg, seed)
    tokens = random_tokens(seed, 2, T)
    spec = CacheSpec(policy=policy, capacity=T, **POLICIES[policy])
    got = cached_logits(cfg, params, tokens, cache=spec, chunk_size=(4, 1))
    np.testing.assert_allclose(got, forward(cfg, params, tokens), rtol=2e-5, atol=2e-5)
