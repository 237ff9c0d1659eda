"""The ablation runner refuses variants that change anything they do not declare."""

import ml_collections
import pytest
from config_files import ROOT, load_config_file

from longctx_jax.ablation import (
    apply_overrides,
    changed_fields,
    check_variant,
    checked_variants,
    load_runner,
    parse_overrides,
    runner_path,
    start_order,
)
from longctx_jax.config import base_config


def test_declared_change_is_accepted():
    base, variant = base_config(), base_config()
    variant.model.position.kind = "alibi"
    changes = check_variant("alibi", base, variant, ["model.position.kind"])
    assert changes == {"model.position.kind": ("rope", "alibi")}


def test_undeclared_change_is_refused():
    base, variant = base_config(), base_config()
    variant.model.position.kind = "alibi"
    variant.train.learning_rate = 1.0  # the sneaky second knob
    with pytest.raises(ValueError, match=r"train.learning_rate: 0.003 -> 1.0"):
        check_variant("alibi", base, variant, ["model.position.kind"])


def test_declaring_a_missing_field_is_refused():
    with pytest.raises(ValueError, match="model.positoin.kind"):
        check_variant("typo", base_config(), base_config(), ["model.positoin.kind"])


def test_nested_placeholders_are_compared():
    base, variant = base_config(), base_config()
    variant.model.position.rope_scaling.factor = 2.0
    assert changed_fields(base, variant) == {"model.position.rope_scaling.factor": (None, 2.0)}


@pytest.mark.parametrize("size", ["demo", "full"])
def test_position_extrapolation_variants_are_one_knob(size):
    ablation = load_config_file("configs/ablations/position_extrapolation.py", size)
    variants = checked_variants(ablation)
    assert set(variants) == {"rope", "alibi", "nope", "pi_finetune_2x", "yarn_finetune_2x"}
    assert variants["rope"][1] == {}
    assert set(variants["alibi"][1]) == {"model.position.kind"}


@pytest.mark.parametrize("size", ["demo", "full"])
def test_sparse_attention_variants_change_only_the_stage_and_selection(size):
    ablation = load_config_file("configs/ablations/sparse_attention.py", size)
    variants = checked_variants(ablation)
    order = start_order(variants)
    assert order[:2] == ["pretrain", "warmup"]
    assert set(order[2:]) == {"dense", "dsa", "window", "oracle"}
    k = ablation.top_k
    sparse = {name: changes for name, (_, changes) in variants.items()}
    assert sparse["pretrain"] == {}
    assert sparse["warmup"]["model.attention.sparse.stage"] == ("sparse", "dense_warmup")
    assert "model.attention.sparse.top_k" not in sparse["dense"]
    for name in ("dsa", "window", "oracle"):
        assert sparse[name]["model.attention.sparse.top_k"] == (ablation.baseline.data.seq_len, k)
    assert sparse["window"]["model.attention.sparse.local_window"] == (0, k)
    assert sparse["oracle"]["model.attention.sparse.selector"] == ("indexer", "oracle")


def test_start_order_refuses_unknown_and_cyclic_starts():
    a, b = base_config(), base_config()
    a.train.init_from, b.train.init_from = "@b", "@a"
    with pytest.raises(ValueError, match="cycle"):
        start_order({"a": (a, {}), "b": (b, {})})
    a.train.init_from = "@c"
    with pytest.raises(ValueError, match="names no variant"):
        start_order({"a": (a, {})})


def test_config_with_unknown_variant_field_fails_on_check():
    ablation = ml_collections.ConfigDict()
    ablation.baseline = base_config()
    broken = base_config()
    broken.data.seq_len = 4096
    ablation.variants = {"longer": ml_collections.ConfigDict(dict(config=broken, changes=()))}
    with pytest.raises(ValueError, match="data.seq_len"):
        checked_variants(ablation)


def test_override_sets_the_baseline_and_every_variant_before_the_check():
    ablation = load_config_file("configs/ablations/position_extrapolation.py", "demo")
    shrunk = apply_overrides(ablation, parse_overrides(["model.num_layers=1", "data.seed=7"]))
    configs = [shrunk.baseline] + [v.config for v in shrunk.variants.values()]
    assert {(c.model.num_layers, c.data.seed) for c in configs} == {(1, 7)}
    assert ablation.baseline.model.num_layers == 2  # the original is untouched
    variants = checked_variants(shrunk)
    assert set(variants["alibi"][1]) == {"model.position.kind"}


def test_override_of_a_declared_field_is_refused_unless_asked_for():
    ablation = load_config_file("configs/ablations/position_extrapolation.py", "demo")
    with pytest.raises(ValueError, match=r"\['pi_finetune_2x', 'yarn_finetune_2x'\] declare"):
        apply_overrides(ablation, {"train.steps": "5"})
    with pytest.raises(ValueError, match=r"declare model.position.kind"):
        apply_overrides(ablation, {"model.position.kind": "rope"})
    shrunk = apply_overrides(ablation, {"train.steps": "5"}, override_declared=True)
    assert {v.config.train.steps for v in shrunk.variants.values()} == {5}
    assert "train.steps" not in checked_variants(shrunk)["pi_finetune_2x"][1]


def test_override_errors_are_one_line():
    ablation = load_config_file("configs/ablations/sparse_attention.py", "demo")
    with pytest.raises(ValueError, match="did you mean train.steps"):
        apply_overrides(ablation, {"train.stpes": "5"})
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(ablation, {"data.batch_size": "two"})
    with pytest.raises(ValueError, match="is a config section"):
        apply_overrides(ablation, {"data": "1"})
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        parse_overrides(["train.steps"])


def test_override_values_parse_as_the_field_type():
    ablation = load_config_file("configs/ablations/sparse_attention.py", "demo")
    shrunk = apply_overrides(
        ablation,
        {
            "model.remat": "true",
            "train.weight_decay": "1e-3",
            "model.attention.logits_soft_cap": "None",
            "data.source": "stdlib",
        },
    )
    assert shrunk.baseline.model.remat is True
    assert shrunk.baseline.train.weight_decay == 1e-3
    assert shrunk.variants.dsa.config.model.remat is True


def test_baseline_only_change_still_trips_the_undeclared_check():
    ablation = load_config_file("configs/ablations/sparse_attention.py", "demo")
    ablation.baseline.data.batch_size = 2
    with pytest.raises(ValueError, match=r"data.batch_size: 2 -> 8"):
        checked_variants(ablation)


@pytest.mark.parametrize("name", ["position_extrapolation", "sparse_attention", "retrieval"])
def test_runner_is_a_file_next_to_the_config(name):
    config_file = ROOT / "configs" / "ablations" / f"{name}.py"
    ablation = load_config_file(f"configs/ablations/{name}.py", "demo")
    path = runner_path(ablation, config_file)
    assert path.resolve() == (ROOT / "experiments" / f"{name}.py").resolve()
    assert callable(load_runner(path).run)
    with pytest.raises(ValueError, match="expected an existing runner file"):
        load_runner(ROOT / "experiments" / "no_such_runner.py")
