"""Data config validation: a bad field raises ValueError naming the field, value and expectation."""

import ml_collections
import pytest

from longctx_jax.data import (
    default_data_config,
    make_eval_batches,
    make_train_iterator,
    validate_data_config,
)


def test_default_config_is_valid_and_has_the_contract_fields():
    config = default_data_config()
    assert validate_data_config(config) is config
    for field in (
        "source",
        "folder_glob",
        "validation_fraction",
        "seq_len",
        "batch_size",
        "seed",
        "length_distribution",
        "min_doc_len",
        "max_doc_len",
        "power_law_alpha",
        "document_masking",
        "mixture",
        "upsample_min_len",
        "upsample_ratio",
        "join_packages",
    ):
        assert field in config
    assert config.length_distribution == "as_is" and config.join_packages is False


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("source", "c4", "one of"),
        ("validation_fraction", 1.0, "[0, 1)"),
        ("validation_fraction", -0.1, "[0, 1)"),
        ("seq_len", 1, ">= 2"),
        ("seq_len", 8.0, "integer"),
        ("batch_size", 0, ">= 1"),
        ("seed", -1, "2**32"),
        ("length_distribution", "zipf", "one of"),
        ("upsample_min_len", 0, ">= 1"),
        ("upsample_ratio", 0.0, "> 0"),
        ("upsample_ratio", -2.0, "> 0"),
        ("join_packages", 1, "bool"),
        ("min_doc_len", 0, ">= 1"),
        ("power_law_alpha", -1.0, ">= 0"),
        ("power_law_alpha", float("inf"), "finite"),
        ("document_masking", 1, "bool"),
        ("stdlib_include_tests", "no", "bool"),
        ("process_sharding", "files", "one of"),
        ("read_threads", -1, ">= 0"),
        ("prefetch_batches", True, "integer"),
    ],
)
def test_bad_field_is_named(field, value, expected):
    fields = default_data_config().to_dict()
    fields[field] = value  # built fresh: ConfigDict's type safety would refuse some of these
    config = ml_collections.ConfigDict(fields)
    with pytest.raises(ValueError, match=rf"data\.{field}=") as error:
        validate_data_config(config)
    assert repr(value) in str(error.value) and expected in str(error.value)


def test_cross_field_checks():
    config = default_data_config()
    config.min_doc_len, config.max_doc_len = 100, 99
    with pytest.raises(ValueError, match=r"data\.max_doc_len=99: expected >= min_doc_len=100"):
        validate_data_config(config)
    config = default_data_config()
    config.source = "folder"
    with pytest.raises(ValueError, match=r"data\.folder_glob=''"):
        validate_data_config(config)


def test_missing_field():
    config = default_data_config()
    del config["seq_len"]
    with pytest.raises(ValueError, match="missing fields \\['seq_len'\\]"):
        validate_data_config(config)


def test_process_arguments_are_checked():
    config = default_data_config()
    config.batch_size = 6
    with pytest.raises(
        ValueError, match="data.batch_size=6: expected a multiple of process_count=4"
    ):
        make_train_iterator(config, process_index=0, process_count=4)
    with pytest.raises(ValueError, match=r"process_index=2: expected an integer in \[0, 2\)"):
        make_train_iterator(config, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="process_count=0"):
        make_train_iterator(config, process_index=0, process_count=0)
    with pytest.raises(ValueError, match="num_batches=0"):
        make_eval_batches(config, num_batches=0)


def test_folder_without_matches_is_an_error(tmp_path):
    config = default_data_config()
    config.source = "folder"
    config.folder_glob = str(tmp_path / "*.txt")
    with pytest.raises(ValueError, match="matched no non-empty files"):
        make_train_iterator(config)


@pytest.mark.parametrize(
    "fractions, lengths, field",
    [
        ((0.5, 0.6), ((1, 2), (3, 4)), "fractions"),  # sum 1.1
        ((1.5, -0.5), ((1, 2), (3, 4)), "fractions"),  # sums to 1, outside [0, 1]
        ((), (), "fractions"),
        ((0.4, 0.6), ((1, 2),), "lengths"),  # one range for two fractions
        ((1.0,), ((0, 2),), "lengths"),  # lo < 1
        ((1.0,), ((5, 4),), "lengths"),  # hi < lo
        ((1.0,), ((1.0, 4),), "lengths"),  # not integers
    ],
)
def test_bad_mixture_is_named(fractions, lengths, field):
    fields = default_data_config().to_dict()
    fields["mixture"] = {"fractions": fractions, "lengths": lengths}
    with pytest.raises(ValueError, match=rf"data\.mixture\.{field}=") as error:
        validate_data_config(ml_collections.ConfigDict(fields))
    assert repr((fractions, lengths)[field == "lengths"]) in str(error.value)


def test_accepted_mixtures_and_long_documents():
    fields = default_data_config().to_dict()
    # As a JSON round trip gives them back: lists; a sum off by under 1e-6.
    fields["mixture"] = {"fractions": [0.3, 0.7000005, 0.0], "lengths": [[1, 1], [2, 9], [3, 3]]}
    fields["max_doc_len"] = 100 * fields["seq_len"]  # documents run on into the next rows
    validate_data_config(ml_collections.ConfigDict(fields))
