"""The preemption-bias experiment: its configs, every recovery strategy through the real engine on
a tiny model (the deterministic ones reproduce the uninterrupted completions; regenerate does
not and follows its closed form), the closed form against a simulation, and the summary, table
and figure."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from config_files import ROOT, load_config_file
from tiny_models import tiny_model_config

from longctx_jax.ablation import checked_variants, load_runner
from longctx_jax.config import validate_config
from longctx_jax.inference.sampling import Sampling
from longctx_jax.model import DecoderLM
from longctx_jax.model.transformer import freeze_model_config

runner = load_runner(ROOT / "experiments" / "preemption_bias.py")
NEW = 12


@pytest.mark.parametrize("size", ["demo", "full"])
def test_config(size):
    ablation = load_config_file("configs/ablations/preemption_bias.py", size)
    ((config, changes),) = checked_variants(ablation).values()
    validate_config(config)
    assert changes == {}
    assert len(ablation.seeds) >= 3 and len(ablation.hazards) >= 3
    assert ablation.decode.prompt_len < config.data.seq_len


@pytest.fixture(scope="module")
def setup():
    """A tiny random model, 48 random prompts, and a stop token it samples often enough that
    output lengths spread over 1..NEW."""
    cfg = freeze_model_config(tiny_model_config({"vocab_size": 16}))
    params = jax.jit(DecoderLM(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 16, 6).astype(np.int32) for _ in range(48)]
    options = dict(max_new_tokens=NEW, sampling=Sampling(2.0), batch_size=16, stop_token=None)
    free = runner.decode_with(
        "uninterrupted", (cfg, params), prompts, hazard=0.0, seed=0, options=options, wal_dir=None
    )
    tokens, counts = np.unique(np.concatenate(free["tokens"]), return_counts=True)
    options["stop_token"] = int(tokens[counts.argmax()])
    return (cfg, params), prompts, options


def test_strategies(setup, tmp_path):
    model, prompts, options = setup
    got = {
        strategy: runner.decode_with(
            strategy, model, prompts, hazard=0.15, seed=1, options=options, wal_dir=tmp_path / "w"
        )
        for strategy in runner.STRATEGIES
    }
    reference = got["uninterrupted"]
    assert len(set(reference["lengths"])) >= 6, reference["lengths"]  # lengths really vary
    assert reference["decoded"] == sum(reference["lengths"]) and reference["preemptions"] == 0
    for strategy in ("same_seed", "wal", "wal_rebuild"):
        assert got[strategy]["tokens"] == reference["tokens"], strategy
    for strategy in runner.STRATEGIES[1:]:
        assert got[strategy]["preemptions"] >= 3, strategy
    # The log samples every token once; starting over samples the lost ones again.
    assert got["wal"]["decoded"] == got["wal_rebuild"]["decoded"] == reference["decoded"]
    assert got["same_seed"]["decoded"] > reference["decoded"]
    assert got["regenerate"]["decoded"] > sum(got["regenerate"]["lengths"])
    assert got["wal_rebuild"]["replayed"] > got["wal"]["replayed"] == 0
    assert got["uninterrupted"]["prefilled"] == 6 * len(prompts)
    # Restarting prefills the batch's prompts again; resuming from a saved cache does not.
    assert got["wal"]["prefilled"] == got["uninterrupted"]["prefilled"]
    for strategy in ("regenerate", "same_seed", "wal_rebuild"):
        assert got[strategy]["prefilled"] > got["uninterrupted"]["prefilled"], strategy
    assert got["regenerate"]["tokens"] != reference["tokens"]
    assert not (tmp_path / "w").exists()


def test_regenerate_is_biased_short_as_the_closed_form_says(setup):
    """Over seeds, regenerate's mean length sits within sampling error of the closed form
    p(ℓ)(1 − λ)^(ℓ−1) and below the uninterrupted mean."""
    model, prompts, options = setup
    hazard, seeds = 0.3, range(4)
    free, regenerated = [], []
    for seed in seeds:
        for strategy, out in (("uninterrupted", free), ("regenerate", regenerated)):
            out.extend(
                runner.decode_with(
                    strategy, model, prompts, hazard=hazard, seed=seed, options=options,
                    wal_dir=None,
                )["lengths"]
            )  # fmt: skip
    predicted = runner.survival_weighted(free, hazard, NEW)
    predicted_mean = float(np.dot(predicted, np.arange(1, NEW + 1)))
    spread = np.std(regenerated) / np.sqrt(len(regenerated))
    assert abs(np.mean(regenerated) - predicted_mean) < 3 * spread
    assert np.mean(regenerated) < np.mean(free) - 5 * spread


def test_closed_form_equals_a_simulation():
    """Attempts drawn from p until one survives its ℓ − 1 preemption checks (numpy, independent
    of the engine): the survivors' histogram is `survival_weighted`."""
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(10))
    hazard = 0.2
    survivors = []
    for _ in range(20_000):
        while True:
            length = rng.choice(10, p=p) + 1
            if rng.random(length - 1).min(initial=1.0) >= hazard:
                survivors.append(length)
                break
    simulated = np.bincount(np.array(survivors) - 1, minlength=10) / len(survivors)
    sample = rng.choice(10, size=200_000, p=p) + 1
    np.testing.assert_allclose(runner.survival_weighted(sample, hazard, 10), simulated, atol=0.01)
    small = runner.survival_weighted([1, 2, 2, 3], 0.5, 3)  # counts 1, 2, 1 x 1, 0.5, 0.25
    assert small == pytest.approx(np.array([1, 1, 0.25]) / 2.25)


def test_summary_table_and_figure(tmp_path):
    ablation = ml_collections.ConfigDict(
        dict(
            name="preemption_bias_test",
            seeds=(0, 1),
            hazards=(0.1, 0.5),
            decode=dict(max_new_tokens=4),
        )
    )
    lengths = {0: [1, 2, 3, 4], 1: [2, 2, 4, 4]}
    measured = {}
    for hazard in ablation.hazards:
        for seed in ablation.seeds:
            for strategy in runner.STRATEGIES:
                own = [1, 1, 2, 1] if strategy == "regenerate" else lengths[seed]
                measured[strategy, hazard, seed] = dict(
                    tokens=[[9] * n for n in own],
                    lengths=own,
                    decoded=sum(own) + 3 * (strategy != "wal"),
                    prefilled=12,
                    replayed=2,
                    preemptions=1,
                )
    summary = runner.summarize(ablation, measured)
    assert set(summary) == {"0.1", "0.5"}
    wal, regenerate = summary["0.5"]["wal"], summary["0.5"]["regenerate"]
    assert wal["ks_pvalue"] == 1.0 and wal["identical_fraction"]["mean"] == 1.0
    assert wal["mean_length"]["values"] == [2.5, 3.0]
    assert wal["histogram"] == [1, 3, 1, 3]
    assert regenerate["identical_fraction"]["values"] == [0.25, 0.0]
    assert regenerate["tokens_processed"]["values"] == [5 + 3 + 12 + 2] * 2
    # closed form: pooled uninterrupted counts [1, 3, 1, 3] x 0.5^(ℓ-1), normalised
    weights = np.array([1, 3 * 0.5, 0.25, 3 * 0.125])
    assert regenerate["predicted_histogram"] == pytest.approx(weights / weights.sum())
    for per_strategy in summary.values():
        for entry in per_strategy.values():
            assert {"mean_length", "ks_pvalue", "tokens_decoded"} <= set(entry)
    results = dict(
        ablation=ablation.name, requests=4, max_new_tokens=4, temperature=1.0, hazards=summary
    )
    from longctx_jax.viz.preemption_bias import plot_preemption_bias

    plot_preemption_bias(results, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    table = runner.format_table(results).splitlines()
    assert len(table) == 1 + 2 * len(runner.STRATEGIES)
    assert "closed form" in table[2] and table[2].split()[1] == "regenerate"
