"""The KV-memory ablation: variants change one knob each, the runner's grid of caches, and one
real (tiny) evaluation through caches with its table and figure."""

from pathlib import Path

import ml_collections
import pytest
from config_files import load_config_file

from longctx_jax.ablation import checked_variants, load_runner
from longctx_jax.config import base_config
from longctx_jax.train.loop import train

runner = load_runner(Path(__file__).parents[1] / "experiments" / "kv_memory.py")


@pytest.mark.parametrize("size", ["demo", "full"])
def test_variants_change_one_knob_each(size):
    ablation = load_config_file("configs/ablations/kv_memory.py", size)
    variants = checked_variants(ablation)
    changes = {name: c for name, (_, c) in variants.items()}
    assert changes["mha"] == {}
    assert changes["mqa"] == {"model.num_kv_heads": (8, 1)}
    if size == "full":
        assert changes["gqa"] == {"model.num_kv_heads": (8, 2)}
        assert changes["linear"]["model.attention.kind"] == ("dense", "linear")
    assert len(ablation.seeds) >= 3
    grid = runner.cases(ablation, "mha")
    assert len(grid) == 1 + len(ablation.policies) * len(ablation.capacities) + len(
        ablation.quantisations
    )
    assert [label for label, _ in runner.cases(ablation, "mqa")] == ["full", "int4_kivi"]


def test_evaluate_through_caches_writes_rows_table_and_figure(tmp_path):
    config = base_config()
    config.model.update(
        dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)
    )
    config.data.update(dict(seq_len=32, batch_size=2, prefetch_batches=0))
    config.data.task.update(dict(kind="mqar", fraction=1.0))
    config.data.task.mqar.num_pairs = (2,)
    config.train.update(dict(steps=2, warmup_steps=1, checkpoint_every=2))
    train(config, tmp_path / "mha")
    ablation = ml_collections.ConfigDict(
        dict(
            name="kv_memory_test",
            baseline=config,
            seeds=(0, 1),
            eval_pairs=2,
            eval_examples=4,
            policies=("window",),
            capacities=(6,),
            quantisations=("int8",),
            mqar_task=dict(key_range=(1, 17), value_range=(128, 144), noise="pad"),
            variants=dict(mha=ml_collections.ConfigDict(dict(config=config, changes=()))),
        )
    )
    trained = {("mha", seed): (config, tmp_path / "mha") for seed in (0, 1)}
    rows = runner.evaluate(ablation, trained)
    assert [r["label"] for r in rows] == ["full", "window", "int8"]
    full, window, int8 = rows
    assert full["payload_bytes"] == 2 * 1 * 2 * 16 * 4 * 32  # 2 x layers x kv x head_dim x f32
    assert window["capacity"] == 6 and window["payload_bytes"] == full["payload_bytes"] * 6 // 32
    assert int8["payload_bytes"] == 2 * 1 * 2 * (16 + 4) * 32
    for r in rows:  # the same run twice: the two "seeds" agree exactly
        assert len(r["accuracy_per_seed"]) == 2
        assert r["accuracy_per_seed"][0] == r["accuracy_per_seed"][1]
        assert 0.0 <= r["accuracy_mean"] <= 1.0
    results = dict(ablation="kv_memory_test", seeds=[0, 1], eval_pairs=2, seq_len=32, rows=rows)
    from longctx_jax.viz.kv_memory import plot_kv_memory

    plot_kv_memory(results, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    table = runner.format_table(rows)
    assert table.splitlines()[1].split()[:4] == ["mha", "full", "32", str(full["payload_bytes"])]
