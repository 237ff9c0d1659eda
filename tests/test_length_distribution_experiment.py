"""The length-distribution ablation: variants change one knob each at an equal token budget,
the budget is checked by name, and one real (tiny) run goes through the runner's evaluation,
summary, table and figure."""

import importlib.util
import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from config_files import ROOT, load_config_file

from longctx_jax.ablation import checked_variants, load_runner
from longctx_jax.config import base_config, validate_config
from longctx_jax.data.stats import pair_distance_histogram
from longctx_jax.train.loop import train

runner = load_runner(ROOT / "experiments" / "length_distribution.py")


def config_module():
    spec = importlib.util.spec_from_file_location(
        "length_distribution_config", ROOT / "configs" / "ablations" / "length_distribution.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("size", ["demo", "full"])
def test_variants_change_one_knob_each_at_one_budget(size):
    ablation = load_config_file("configs/ablations/length_distribution.py", size)
    variants = checked_variants(ablation)
    n = ablation.baseline.data.seq_len
    changes = {name: c for name, (_, c) in variants.items()}
    assert changes["as_is_masked"] == {}
    assert changes["as_is_unmasked"] == {"data.document_masking": (True, False)}
    assert changes["short_masked"] == {
        "data.length_distribution": ("as_is", "truncated"),
        "data.max_doc_len": (4096, n // 4),
    }
    for config, _ in variants.values():  # valid, and the same tokens per run
        validate_config(config)
        data = config.data
        assert config.train.steps * data.batch_size * data.seq_len == ablation.token_budget
        assert data.join_packages
    assert len(ablation.seeds) >= 3
    if size == "full":
        assert changes["prolong_masked"]["data.length_distribution"] == ("as_is", "mixture")
        assert changes["prolong_masked"]["data.mixture.lengths"][1] == ((16, n // 4), (n, 65536))
        assert changes["upsample_unmasked"]["data.length_distribution"] == ("as_is", "upsample")


@pytest.mark.parametrize(
    "budget, match",
    [(100, "smaller than one batch"), (1500, "a multiple of one batch"), (0, "positive")],
)
def test_budget_checked_by_name(budget, match):
    with pytest.raises(ValueError, match=f"token_budget={budget}.*{match}"):
        config_module().steps_for_budget(budget, 8, 128)


def test_evaluate_summarize_table_and_figure(tmp_path):
    config = base_config()
    config.model.update(
        dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)
    )
    config.data.update(dict(seq_len=32, batch_size=2, prefetch_batches=0))
    config.train.update(dict(steps=2, warmup_steps=1, checkpoint_every=2))
    train(config, tmp_path / "run")
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["batches"] == 2 and stats["step"] == 2 and "provenance" in stats
    ablation = ml_collections.ConfigDict(
        dict(
            name="length_distribution_test",
            baseline=config,
            seeds=(0, 1),
            token_budget=128,
            eval_multiples=(1, 2),
            eval_documents=2,
            recall_examples=2,
            variants=dict(as_is_masked=ml_collections.ConfigDict(dict(config=config, changes=()))),
        )
    )
    one = runner.evaluate_run(ablation, config, tmp_path / "run")
    assert one["pairs"] == stats["pairs"] and len(one["pairs"]) == 32
    assert set(one["perplexity"]) == set(runner.EVAL_KINDS)
    assert all(len(v) == 2 and all(p > 1.0 for p in v) for v in one["perplexity"].values())
    cells = one["recall"]["default"]["cells"]
    assert [(c["length"], c["distance"]) for c in cells] == [(32, 20)]  # 32 - span_len 12
    assert set(one["recall"]) == set(runner.RECALL_KINDS)
    assert len(one["loss_by_position"]["nll"]) == runner.POSITION_BUCKETS
    per_run = {("as_is_masked", 0): one, ("as_is_masked", 1): one}
    variants = runner.summarize(ablation, per_run)
    summary = variants["as_is_masked"]
    np.testing.assert_array_equal(summary["pairs"], 2 * np.asarray(stats["pairs"]))
    ppl = summary["perplexity"]["default"][0]
    assert ppl["mean"] == one["perplexity"]["default"][0] and ppl["values"] == [ppl["mean"]] * 2
    results = dict(
        ablation="length_distribution_test",
        train_len=32,
        lengths=[32, 64],
        token_budget=128,
        seeds=[0, 1],
        variants=variants,
    )
    from longctx_jax.viz.length_distribution import plot_length_distribution

    plot_length_distribution(results, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert runner.format_table(results).splitlines()[1].split()[0] == "as_is_masked"


def test_trained_histogram_is_that_of_the_batches(tmp_path):
    """data_stats.json equals the histogram of the same pipeline's first batches, recomputed."""
    from longctx_jax.data.pipeline import make_train_iterator

    config = base_config()
    config.model.update(
        dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)
    )
    config.data.update(
        dict(seq_len=64, batch_size=2, prefetch_batches=0, length_distribution="truncated")
    )
    config.data.update(dict(min_doc_len=8, max_doc_len=16))
    config.train.update(dict(steps=3, warmup_steps=1, checkpoint_every=3))
    train(config, tmp_path)
    stats = json.loads((Path(tmp_path) / "data_stats.json").read_text())
    batches = make_train_iterator(config.data)
    expected = sum(
        pair_distance_histogram(b["segment_ids"], b["positions"], max_distance=63)
        for b in (next(batches) for _ in range(3))
    )
    assert stats["pairs"] == expected.tolist()
    assert np.all(np.asarray(stats["pairs"])[16:] == 0)  # documents of <= 16 tokens
    assert stats["piece_lengths_stats"]["max"] <= 16
