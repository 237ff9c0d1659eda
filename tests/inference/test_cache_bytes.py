"""Cache bytes: counted from the arrays allocate() builds, held to the closed form
2 * layers * kv_heads * head_dim * bytes per slot (+ scales, + index keys, + KIVI's window)."""

import pytest
from inference_testlib import config

from longctx_jax.inference.layout import allocate, cache_bytes, expected_payload_bytes
from longctx_jax.inference.spec import CacheSpec

LAYOUTS = {
    "mha": {"num_kv_heads": 4},
    "gqa": {"num_kv_heads": 2},
    "mqa": {"num_kv_heads": 1},
    "bf16": {"dtype": "bfloat16"},
    "dsa": {"attention.kind": "sparse_topk", "attention.sparse.granularity": "token"},
    "linear": {"attention.kind": "linear"},
}
SPECS = {
    "float": CacheSpec(),
    "int8": CacheSpec(bits=8),
    "int4_groups": CacheSpec(bits=4, group_size=4),
    "int2_kivi": CacheSpec(bits=2, key_quant="channel", group_size=8, residual=8),
}


@pytest.mark.parametrize(
    "layout, spec",
    [(layout, spec) for layout in LAYOUTS for spec in SPECS if layout != "linear"]
    + [("linear", "float")],  # the mixer's state; quantising it is refused (the last test)
)
def test_bytes_from_the_arrays_equal_the_formula(layout, spec):
    cfg = config(LAYOUTS[layout])
    spec = SPECS[spec]
    counted = cache_bytes(allocate(cfg, 3, spec, 64))
    assert counted["payload"] == expected_payload_bytes(cfg, spec, 64)


def test_the_formula_for_a_float_cache():
    cfg = config({"num_kv_heads": 1})  # 2 layers, head_dim 8, float32
    assert expected_payload_bytes(cfg, CacheSpec(), 64) == 2 * 2 * 1 * 8 * 4 * 64
    assert cache_bytes(allocate(cfg, 1, CacheSpec(bits=8), 64))["payload"] == 2 * 2 * 64 * (8 + 4)


def test_mqa_gqa_mha_scale_with_kv_heads():
    per_head = [
        cache_bytes(allocate(config({"num_kv_heads": k}), 1, None, 32))["payload"] / k
        for k in (1, 2, 4)
    ]
    assert per_head[0] == per_head[1] == per_head[2]


def test_a_windowed_model_gets_a_ring_of_window_slots():
    cfg = config({"attention.window": 5})
    caches = allocate(cfg, 2, None, 64)
    assert caches[0].capacity == 5 and caches[0].spec.policy == "window"


@pytest.mark.parametrize(
    "spec, overrides, message",
    [
        (CacheSpec(bits=3), {}, r"cache\.bits=3: expected None or one of \(2, 4, 8\)"),
        (CacheSpec(policy="sinks", capacity=4, sinks=4), {}, r"cache\.capacity=4: expected more"),
        (CacheSpec(policy="lru"), {}, r"cache\.policy='lru'"),
        (CacheSpec(bits=4, group_size=3), {}, r"cache\.group_size=3: expected a divisor"),
        (CacheSpec(policy="window", key_quant="channel", bits=2), {}, r"cache\.policy='window'"),
        (CacheSpec(policy="window"), {"attention.kind": "linear"}, r"cache\.policy='window'"),
        (CacheSpec(kernel=True, policy="h2o"), {}, r"cache\.policy='h2o'.*kernel=True"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(spec, overrides, message):
    with pytest.raises(ValueError, match=message):
        allocate(config(overrides), 1, spec, 64)


@pytest.mark.parametrize("spec", ["float", "int8", "int2_kivi"])
def test_a_byte_budget_becomes_the_most_slots_that_fit(spec):
    from longctx_jax.inference.layout import capacity_for_budget

    cfg, spec = config(), SPECS[spec]
    budget = 50_000
    slots = capacity_for_budget(cfg, spec, budget)
    step = spec.token_group if spec.kivi else 1
    assert expected_payload_bytes(cfg, spec, slots) <= budget
    assert expected_payload_bytes(cfg, spec, slots + step) > budget
    assert cache_bytes(allocate(cfg, 1, spec, slots))["payload"] <= budget


def test_a_budget_smaller_than_the_sinks_is_refused():
    from longctx_jax.inference.layout import capacity_for_budget

    spec = CacheSpec(policy="sinks", sinks=4)
    per_slot = expected_payload_bytes(config(), spec, 1)
    with pytest.raises(
        ValueError, match=r"cache\.budget_bytes=1024: expected at least 1,280 bytes \(5 slots"
    ):
        capacity_for_budget(config(), spec, 4 * per_slot)
    assert capacity_for_budget(config(), spec, 5 * per_slot) == 5
