"""The sparse attention experiment's summaries on a small hand-made result, and its stages'
learning rates."""

from pathlib import Path

import pytest
from config_files import load_config_file

from longctx_jax.ablation import checked_variants, load_runner

# Runners are files addressed by path (an ablation config's `runner`), not an importable package.
runner = load_runner(Path(__file__).parents[1] / "experiments" / "sparse_attention.py")
format_table, trailing_nll = runner.format_table, runner.trailing_nll


def fake_result(nll):
    return dict(
        nll=sum(nll) / len(nll),
        by_position=dict(edges=[0, 64, 128, 192, 256], nll=nll, tokens=[10, 10, 30, 10]),
    )


def test_trailing_nll_weights_the_buckets_from_start_by_their_tokens():
    result = fake_result([3.0, 2.0, 1.0, 2.0])
    assert trailing_nll(result, 128) == pytest.approx((30 * 1.0 + 10 * 2.0) / 40)
    assert trailing_nll(result, 0) == pytest.approx((30 + 20 + 30 + 20) / 60)


def test_format_table_has_a_row_per_variant_selector_and_passkey_run():
    loss = {"after: dense": fake_result([3.0, 2.0, 1.0, 2.0])}
    loss["after: dense"]["trailing_nll"] = 1.25
    passkey = {"dsa": dict(accuracy=[[0.0, 0.5]], teacher_forced_digit_accuracy=[[0.25, 0.5]])}
    recall = dict(ks=[16, 32], curves={"oracle": [0.5, 0.75]})
    table = format_table(dict(top_k=32, loss=loss, recall=recall, passkey=passkey))
    assert "after: dense" in table and "1.250" in table
    assert "oracle" in table and "0.750" in table
    assert "dsa" in table and "0.375" in table


@pytest.mark.parametrize("size", ["demo", "full"])
def test_sparse_stages_train_at_a_fraction_of_the_pretraining_peak(size):
    ablation = load_config_file("configs/ablations/sparse_attention.py", size)
    variants = checked_variants(ablation)
    peak = ablation.baseline.train.learning_rate
    for name in ("pretrain", "warmup"):
        assert variants[name][0].train.learning_rate == peak
        assert "train.learning_rate" not in variants[name][1]
    fraction = ablation.variants.dense.config.train.learning_rate / peak
    assert 0 < fraction < 1
    for name in ("dense", "dsa", "window", "oracle"):
        config, changes = variants[name]
        assert config.train.learning_rate == pytest.approx(fraction * peak)
        assert changes["train.learning_rate"] == (peak, config.train.learning_rate)
        assert config.train.warmup_steps < config.train.steps
