"""`generate()` (DESIGN §6): greedy equals argmax of repeated full forwards, rows of different
prompt lengths equal each row alone, sampled requests do not depend on their batch, bad input is
refused before compiling."""

import jax.numpy as jnp
import numpy as np
import pytest
from inference_testlib import config, forward, random_params, random_tokens

from longctx_jax.inference.generate import generate
from longctx_jax.inference.sampling import Sampling
from longctx_jax.inference.spec import CacheSpec

P, NEW = 7, 6


def greedy_by_full_forwards(cfg, params, prompt):
    """Greedy tokens by full forwards over a fixed-width buffer (causal: what follows a
    position does not change its logits), so one compiled forward serves every step."""
    sequence = np.zeros((1, P + NEW), np.int32)
    sequence[0, : len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + NEW):
        sequence[0, i] = int(jnp.argmax(forward(cfg, params, jnp.asarray(sequence))[0, i - 1]))
    return sequence[0, len(prompt) : len(prompt) + NEW]


@pytest.mark.parametrize("overrides", [{}, {"attention.window": 3}, {"attention.kind": "linear"}])
def test_greedy_equals_argmax_of_repeated_full_forwards(overrides, seed):
    cfg = config(overrides)
    params = random_params(cfg, seed)
    prompts = random_tokens(seed, 3, P)
    lengths = np.array([P, 3, 5])
    got = np.asarray(generate(cfg, params, prompts, max_new_tokens=NEW, prompt_lengths=lengths))
    assert got.shape == (3, NEW) and got.dtype == np.int32
    bare = generate(cfg, params["params"], prompts, max_new_tokens=NEW, prompt_lengths=lengths)
    np.testing.assert_array_equal(bare, got)  # load_model's bare tree works too
    for row, length in enumerate(lengths):
        expected = greedy_by_full_forwards(cfg, params, np.asarray(prompts[row, :length]))
        np.testing.assert_array_equal(got[row], expected, err_msg=f"row {row} [seed={seed}]")


def test_a_sampled_request_does_not_depend_on_its_batch(seed):
    cfg = config()
    params = random_params(cfg, seed)
    prompts = random_tokens(seed, 4, P)
    sampling = Sampling(temperature=1.0, top_k=40, top_p=0.95)
    options = dict(max_new_tokens=NEW, sampling=sampling, seed=seed % 2**31)
    batch = np.asarray(generate(cfg, params, prompts, request_ids=[10, 11, 12, 13], **options))
    alone = np.asarray(generate(cfg, params, prompts[2:3], request_ids=[12], **options))
    np.testing.assert_array_equal(batch[2], alone[0])
    swapped = np.asarray(
        generate(cfg, params, prompts[::-1], request_ids=[13, 12, 11, 10], **options)
    )
    np.testing.assert_array_equal(swapped[::-1], batch)
    other_seed = dict(options, seed=options["seed"] + 1)
    assert not np.array_equal(
        generate(cfg, params, prompts, request_ids=[10, 11, 12, 13], **other_seed), batch
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), r"generate\.max_new_tokens=0"),
        (dict(max_new_tokens=4, prompt_lengths=[8, 2]), r"prompt_lengths \[8, 2\]"),
        (dict(max_new_tokens=4, sampling=Sampling(top_p=1.5)), r"sampling\.top_p=1\.5"),
        (dict(max_new_tokens=4, sampling=Sampling(temperature=-1.0)), r"sampling\.temperature"),
        (dict(max_new_tokens=4, cache=CacheSpec(capacity=6)), r"cache\.capacity=6: .* 11 tokens"),
        (dict(max_new_tokens=4, cache=CacheSpec(bits=5)), r"cache\.bits=5"),
        (
            dict(max_new_tokens=4, cache=CacheSpec(policy="sinks", capacity=3, sinks=4)),
            r"cache\.capacity=3",
        ),
    ],
)
def test_bad_input_is_refused(kwargs, message, seed):
    cfg = config()
    params = random_params(cfg, seed)
    with pytest.raises(ValueError, match=message):
        generate(cfg, params, random_tokens(seed, 2, P), **kwargs)
