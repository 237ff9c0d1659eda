"""The filler experiment: fine-tunes differ from the general model only in the filler layout and
the fine-tuning schedule, and one real (tiny) run goes through scoring, the paired summary, the
table and the figure."""

import ml_collections
import numpy as np
import pytest
from config_files import ROOT, load_config_file

from longctx_jax.ablation import checked_variants, load_runner, start_order
from longctx_jax.config import validate_config
from longctx_jax.train.loop import train

runner = load_runner(ROOT / "experiments" / "filler.py")


@pytest.mark.parametrize("size", ["demo", "full"])
def test_fine_tunes_change_the_layout_only(size):
    ablation = load_config_file("configs/ablations/filler.py", size)
    variants = checked_variants(ablation)
    assert start_order(variants)[0] == "general"
    schedule = {
        "train.init_from",
        "train.steps",
        "train.warmup_steps",
        "train.learning_rate",
        "train.checkpoint_every",
    }
    for name, (config, changes) in variants.items():
        validate_config(config)
        if name == "general":
            assert changes == {}
            continue
        layout = name.removeprefix("ft_")
        assert config.data.task.filler.layout == layout
        assert set(changes) - schedule <= {"data.task.filler.layout"}
        assert config.train.init_from == "@general"
    assert len(ablation.seeds) >= 3


def test_score_summarize_table_and_figure(tmp_path):
    ablation = load_config_file("configs/ablations/filler.py", "demo")
    config = ablation.baseline
    config.model.update(
        dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=2, head_dim=16, mlp_dim=64)
    )
    config.data.update(dict(batch_size=2, prefetch_batches=0))
    config.train.update(dict(steps=2, warmup_steps=1, checkpoint_every=2))
    train(config, tmp_path / "run")
    small = ml_collections.ConfigDict(ablation.to_dict())
    small.eval_examples = 4
    small.seeds = (0, 1)
    small.variants = {name: small.variants[name] for name in ("general", "ft_start")}
    examples = [runner.depth_examples(small, d) for d in small.depths]
    starts = [e[0].metadata["pairs_start"] for e in examples]
    assert starts == [0, 4, 8, 12, 16]  # depth x 16 filler tokens
    accuracy = runner.accuracy_by_depth(small, tmp_path / "run", examples)
    assert len(accuracy) == 5 and all(0.0 <= a <= 1.0 for a in accuracy)
    by_run = {
        ("general", 0): accuracy,
        ("general", 1): [0.5] * 5,
        ("ft_start", 0): [1.0] * 5,
        ("ft_start", 1): [0.75] * 5,
    }
    variants = runner.summarize(small, by_run)
    change = variants["ft_start"]["change"][0]
    assert change["values"] == pytest.approx([1.0 - accuracy[0], 0.25])  # paired by seed
    assert "change" not in variants["general"]
    # tilt: accuracy at the last depth minus at the first, and its change paired by seed
    tilts = [accuracy[-1] - accuracy[0], 0.0]
    assert variants["general"]["tilt"]["values"] == pytest.approx(tilts)
    assert variants["ft_start"]["tilt_change"]["values"] == pytest.approx([-t for t in tilts])
    results = dict(
        ablation="filler_test",
        seq_len=32,
        num_pairs=2,
        depths=list(small.depths),
        chance=1 / 16,
        variants=variants,
    )
    from longctx_jax.viz.filler import plot_filler

    plot_filler(results, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    table = runner.format_table(results).splitlines()
    assert table[1].split()[0] == "general" and table[-1].split()[0] == "ft_start"
    assert np.isclose(float(table[2].split()[1].split("±")[0]), 0.875)  # ft_start at depth 0
