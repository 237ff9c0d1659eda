"""The retrieval ablation: its variants change one knob each, its runner's summaries on a
hand-made result (CIs, table, figure), `model_at_length`, and `train_variants` over seeds."""

import importlib.util
from pathlib import Path

import pytest
from config_files import load_config_file

from longctx_jax import ablation as ablation_lib
from longctx_jax.ablation import checked_variants, load_runner, start_order
from longctx_jax.provenance import mean_ci

runner = load_runner(Path(__file__).parents[1] / "experiments" / "retrieval.py")
ROOT_CONFIG = Path(__file__).parents[1] / "configs" / "ablations" / "retrieval.py"


@pytest.mark.parametrize("size", ["demo", "full"])
def test_variants_change_one_knob_each(size):
    ablation = load_config_file("configs/ablations/retrieval.py", size)
    variants = checked_variants(ablation)
    expected = {"dense", "warmup", "dsa", "window", "oracle", "linear"}
    if size == "full":
        expected |= {"dense_ft", "niah"}
    assert set(variants) == expected
    assert runner.mqar_variants(ablation) == [n for n in runner.MQAR_VARIANTS if n in expected]
    order = start_order(variants)
    assert order.index("dense") < order.index("warmup") < order.index("dsa")
    changes = {name: c for name, (_, c) in variants.items()}
    assert changes["dense"] == {}
    assert changes["linear"]["model.attention.kind"] == ("sparse_topk", "linear")
    k, seq_len = ablation.top_k, ablation.baseline.data.seq_len
    for name in ("dsa", "window", "oracle"):
        assert changes[name]["model.attention.sparse.top_k"] == (seq_len, k)
    assert changes["window"]["model.attention.sparse.local_window"] == (0, k)
    assert changes["oracle"]["model.attention.sparse.selector"] == ("indexer", "oracle")
    # the staged variants train the same steps at the same (reduced) learning rate
    staged = [n for n in ("dense_ft", "dsa", "window", "oracle") if n in variants]
    steps = {variants[n][0].train.steps for n in staged}
    rates = {variants[n][0].train.learning_rate for n in staged}
    assert len(steps) == 1 and len(rates) == 1
    assert rates.pop() < ablation.baseline.train.learning_rate
    # the linear mixer trains as many steps as dense + warmup + one sparse stage
    total = sum(variants[n][0].train.steps for n in ("dense", "warmup", "dsa"))
    assert variants["linear"][0].train.steps == total
    assert len(ablation.seeds) >= 3
    if size == "full":
        assert variants["niah"][0].data.task.kind == "niah"


def test_width_variants_change_only_the_width():
    spec = importlib.util.spec_from_file_location("retrieval_config", ROOT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SIZES["full"]["widths"] = (64,)
    variants = checked_variants(module.get_config("full"))
    widths = {"model.embed_dim", "model.head_dim", "model.mlp_dim"}
    narrow, linear = variants["linear_w64"][1], variants["linear"][1]
    assert set(narrow) == set(linear) | widths
    assert narrow["model.embed_dim"] == (128, 64)
    assert set(variants["dense_w64"][1]) == widths


def fake_results():
    pairs, lengths = [4, 8], [64, 128]
    rows, by_length = [], []
    for i, name in enumerate(runner.MQAR_VARIANTS):
        for p in pairs:
            values = [0.9 - 0.1 * i, 0.8 - 0.1 * i, 0.85 - 0.1 * i]
            stats = runner.ci(values)
            rows.append(
                dict(
                    variant=name,
                    num_pairs=p,
                    accuracy_per_seed=values,
                    accuracy_mean=stats["mean"],
                    accuracy_ci95=stats["ci95"],
                )
            )
        by_length.append(
            dict(
                variant=name,
                num_pairs=4,
                lengths=lengths,
                accuracy_per_seed=[[0.9, 0.8, 0.7], [0.2, 0.3, 0.1]],
                accuracy_mean=[0.8, 0.2],
                accuracy_ci95=[[0.55, 1.05], [-0.05, 0.45]],
                effective_length_per_seed=[64, 64, 64],
                effective_length_mean=64.0,
                effective_length_ci95=[64.0, 64.0],
            )
        )
    grid = [[1.0, 0.5], [0.0, 0.25]]
    niah = dict(
        rope_kind="default",
        lengths=[384, 768],
        depths=[0.0, 1.0],
        accuracy_mean=grid,
        accuracy_per_seed=[grid] * 3,
        effective_length_per_seed=[384, 384, 0],
        effective_length_mean=256.0,
        effective_length_ci95=[-295.0, 807.0],
    )
    by_width = [
        dict(r, width=w, state_bytes=(w * 64 if r["variant"] == "linear" else None))
        for w in (64, 128)
        for r in rows
        if r["variant"] in ("dense", "linear")
    ]
    return dict(
        ablation="retrieval_test",
        by_width=by_width,
        seeds=[0, 1, 2],
        top_k=8,
        mqar=dict(train_len=64, num_pairs=pairs, rows=rows, by_length=by_length),
        niah=dict(train_len=384, evals=dict(plain=niah, yarn=dict(niah, rope_kind="yarn"))),
        state_bytes=dict(linear_state=8192, kv_cache_at_train_len=65536),
    )


def test_ci_is_the_student_t_interval_of_the_seeds():
    values = [0.2, 0.5, 0.6]
    stats, expected = runner.ci(values), mean_ci(values)
    assert stats["mean"] == pytest.approx(0.4333333)
    assert stats["ci95"] == [expected["ci_low"], expected["ci_high"]]
    assert stats["ci95"][0] < 0.2  # three seeds: t_{0.975, 2} = 4.30 widens the interval
    assert runner.ci([0.5])["ci95"] == [None, None]


def test_table_and_figure_from_a_hand_made_result(tmp_path):
    results = fake_results()
    table = runner.format_table(results)
    for name in runner.MQAR_VARIANTS:
        assert name in table
    assert "0.850 [" in table  # dense at 4 pairs: mean of 0.9, 0.8, 0.85 with its interval
    assert "effective length" in table and "8192 bytes" in table
    assert "linear w64" in table
    runner_figure = tmp_path / "figure.png"
    from longctx_jax.viz.retrieval_ablation import plot_retrieval_ablation

    plot_retrieval_ablation(results, runner_figure)
    assert runner_figure.stat().st_size > 10_000
    results["niah"], results["by_width"] = None, results["by_width"][:2]  # the demo's form
    plot_retrieval_ablation(results, tmp_path / "demo.png")
    assert "NIAH" not in runner.format_table(results)


def test_model_at_length_keeps_dense_variants_dense():
    ablation = load_config_file("configs/ablations/retrieval.py", "demo")
    dense = ablation.variants.dense.config.model
    dsa = ablation.variants.dsa.config.model
    seq_len = ablation.baseline.data.seq_len
    assert runner.model_at_length(dense, seq_len, 4 * seq_len).attention.sparse.top_k == (
        4 * seq_len
    )
    assert runner.model_at_length(dsa, seq_len, 4 * seq_len) is dsa
    assert dense.attention.sparse.top_k == seq_len  # not modified in place


def test_train_variants_over_seeds_uses_per_seed_dirs_and_parents(tmp_path, monkeypatch):
    ablation = load_config_file("configs/ablations/retrieval.py", "demo")
    calls = []
    monkeypatch.setattr(
        "longctx_jax.train.loop.train", lambda config, workdir: calls.append((config, workdir))
    )
    trained = ablation_lib.train_variants(ablation, tmp_path, seeds=(3, 5))
    assert set(trained) == {(n, s) for n in ablation.variants for s in (3, 5)}
    config, run_dir = trained[("dsa", 5)]
    assert run_dir == tmp_path / "dsa" / "seed_5"
    assert config.train.seed == config.data.seed == 5
    assert config.train.init_from == str(tmp_path / "warmup" / "seed_5")
    assert len(calls) == 2 * len(ablation.variants)
    assert ablation.variants.dsa.config.train.init_from == "@warmup"  # the ablation is untouched
