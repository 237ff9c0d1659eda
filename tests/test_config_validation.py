"""`validate_config` checks a whole training config in one call, with one-line errors that name
the field, the value and what was expected."""

import re

import ml_collections
import pytest
from config_files import load_config_file

from longctx_jax import checks
from longctx_jax.ablation import validate_ablation
from longctx_jax.config import base_config, suggest_field, validate_config


def error_of(config) -> str:
    with pytest.raises(ValueError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def with_field(path, value):
    """base_config(), without type safety (so a test can set a value of the wrong type), with
    the dotted field set (created if new)."""
    config = ml_collections.ConfigDict(base_config().to_dict(), type_safe=False)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    return config


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("train.steps", 0, "train.steps=0: expected an integer >= 1"),
        ("train.steps", -1, "train.steps=-1: expected an integer >= 1"),
        ("train.learning_rate", -1.0, "train.learning_rate=-1.0: expected a finite number > 0"),
        ("train.learning_rate", float("inf"), "train.learning_rate=inf: expected a finite"),
        ("train.keep_checkpoints", 0, "train.keep_checkpoints=0: expected an integer >= 1"),
        ("train.checkpoint_every", 0, "train.checkpoint_every=0: expected an integer >= 1"),
        ("train.log_every", 0, "train.log_every=0: expected an integer >= 1"),
        ("train.warmup_steps", -1, "train.warmup_steps=-1: expected an integer >= 0"),
        ("train.weight_decay", -0.5, "train.weight_decay=-0.5: expected a finite number >= 0"),
        ("train.grad_clip", 0.0, "train.grad_clip=0.0: expected a finite number > 0"),
        ("train.seed", -3, "train.seed=-3: expected an integer in [0, 4294967296)"),
        ("train.init_from", 3, "train.init_from=3: expected a string"),
        ("mesh.sequence", 0, "mesh.sequence=0: expected a positive integer"),
        ("mesh.context_parallel_layout", "zz", "mesh.context_parallel_layout='zz': expected one"),
        ("distributed.enabled", 1, "distributed.enabled=1: expected a bool"),
        ("distributed.num_processes", 0, "distributed.num_processes=0: expected a positive"),
        ("model.num_layers", 0, "model.num_layers=0: expected a positive integer"),
        ("data.seq_len", 1, "data.seq_len=1: expected an integer >= 2"),
    ],
)
def test_bad_value_is_one_line_naming_field_value_and_expectation(field, value, expected):
    assert error_of(with_field(field, value)).startswith(expected)


def test_schedule_steps_below_steps_is_refused():
    config = base_config()
    config.train.steps, config.train.schedule_steps = 100, 50
    assert error_of(config) == (
        "train.schedule_steps=50: expected None (= train.steps) or an integer >= train.steps=100"
    )
    config.train.schedule_steps = 100
    validate_config(config)


def test_process_id_must_be_below_the_process_count():
    config = base_config()
    config.distributed.num_processes, config.distributed.process_id = 2, 2
    assert error_of(config) == (
        "distributed.process_id=2: expected an integer in [0, distributed.num_processes=2)"
    )


def test_unknown_field_names_the_closest_valid_one():
    assert error_of(with_field("train.stpes", 5)) == (
        "train.stpes: unknown config field; did you mean train.steps?"
    )
    assert "did you mean data.seq_len?" in error_of(with_field("train.seq_len", 5))
    assert "did you mean train?" in error_of(with_field("trian", ml_collections.ConfigDict()))
    assert "did you mean model.position.rope_scaling.factor?" in error_of(
        with_field("model.position.rope_scaling.facter", 2.0)
    )
    assert error_of(with_field("model.no_such_knob", 3)).startswith(
        "model.no_such_knob: unknown config field; see base_config()"
    )


def test_missing_field_is_named():
    config = base_config()
    del config.train["keep_checkpoints"]
    assert error_of(config).startswith("train.keep_checkpoints: missing config field")


def test_a_section_replaced_by_a_value_is_named():
    assert error_of(with_field("mesh", 4)).startswith("mesh=4: expected a config section")


def test_cross_section_batch_and_sequence_layout():
    config = base_config()
    config.mesh.data, config.data.batch_size = 3, 8
    assert "data.batch_size=8: expected a multiple of 3" in error_of(config)
    config = base_config()
    config.mesh.sequence, config.data.seq_len = 4, 100
    message = error_of(config)
    assert message.startswith("data.seq_len=100:")
    assert "mesh.context_parallel_layout='zigzag'" in message and "multiple of 8" in message
    config.mesh.context_parallel_layout = "contiguous"
    validate_config(config)


def test_logical_axis_rules_must_name_mesh_axes():
    config = base_config()
    config.mesh.logical_axis_rules = (("batch", "dta"),)
    assert "'batch' -> 'dta'" in error_of(config)


def test_evals_entries_are_validated_by_their_registry():
    from longctx_jax.eval.registry import kinds

    config = base_config()
    config.evals.broken = ml_collections.ConfigDict(dict(kind="no_such_evaluator", every=0))
    message = error_of(config)
    assert message.startswith("evals.broken.kind='no_such_evaluator': expected one of")
    assert str(kinds()) in message


def test_good_configs_pass():
    assert validate_config(base_config()) is not None
    config = base_config()
    config.train.steps, config.train.schedule_steps = 10, 20
    config.mesh.sequence, config.mesh.data = 2, 2
    config.data.seq_len, config.data.batch_size = 64, 4
    validate_config(config)


def test_quickstart_passes():
    validate_config(load_config_file("configs/quickstart.py"))


@pytest.mark.parametrize("size", ["demo", "full"])
@pytest.mark.parametrize("name", ["position_extrapolation", "sparse_attention", "retrieval"])
def test_ablation_baselines_and_variants_pass(name, size):
    ablation = load_config_file(f"configs/ablations/{name}.py", size)
    validate_config(ablation.baseline)
    for variant in ablation.variants.values():
        validate_config(variant.config)
    assert set(validate_ablation(ablation)) == set(ablation.variants)


def test_ablation_error_names_the_variant():
    ablation = load_config_file("configs/ablations/position_extrapolation.py", "demo")
    ablation.variants.alibi.config.train.steps = 0
    with pytest.raises(ValueError, match=re.escape("ablation variant 'alibi': train.steps=0")):
        validate_ablation(ablation)


def test_check_helpers_messages():
    with pytest.raises(ValueError, match=re.escape("s.f=True: expected a positive integer")):
        checks.check_positive_int("s", "f", True)
    with pytest.raises(ValueError, match=re.escape("s.f=1.0: expected a number in [0, 1)")):
        checks.check_real("s", "f", 1.0, minimum=0, maximum=1, exclusive_maximum=True, finite=False)
    with pytest.raises(ValueError, match=re.escape("s.f=nan: expected a number >= 0")):
        checks.check_real("s", "f", float("nan"), minimum=0, finite=False)
    assert checks.check_real("s", "f", float("inf"), minimum=0, finite=False) == float("inf")
    with pytest.raises(ValueError, match=re.escape("s.f='c': expected one of ('a', 'b')")):
        checks.check_choice("s", "f", "c", ("a", "b"))
    with pytest.raises(ValueError, match=re.escape("s.f=5: expected an integer in [0, 5)")):
        checks.check_int("s", "f", 5, minimum=0, below=5)


def test_suggest_field_prefers_the_same_name_in_another_section():
    names = ["train", "train.seed", "train.steps", "data", "data.seq_len", "data.seed"]
    assert suggest_field("train.seq_len", names) == "data.seq_len"
    assert suggest_field("train.stpes", names) == "train.steps"
    assert suggest_field("train.zzz", names) is None


def test_a_run_written_before_a_field_existed_reads_with_its_default(tmp_path):
    import json

    from longctx_jax.run import read_run_config
    from longctx_jax.train.rundir import as_json, check_resume

    config = base_config()
    saved = as_json(config)
    del saved["data"]["task"]
    del saved["model"]["attention"]["linear"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    read = read_run_config(tmp_path)
    assert read.data.task.kind == "none"
    assert read.model.attention.linear.to_dict() == config.model.attention.linear.to_dict()
    check_resume(tmp_path, config)  # the same run: resumable
    config.data.task.kind = "mqar"
    with pytest.raises(ValueError, match="data.task.kind"):
        check_resume(tmp_path, config)
