"""MQAR with filler: every layout keeps task A's pairs and queries intact, the filler where the
layout says, A's answers found from A's own pairs, and the task source makes rows of it."""

import numpy as np
import pytest

from longctx_jax.data import default_data_config
from longctx_jax.data.task_source import make_task_example, task_spec
from longctx_jax.data.tasks.filler import LAYOUTS, make_filler_example
from longctx_jax.data.tasks.mqar import make_mqar_example


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout):
    seed = int(np.random.default_rng().integers(1 << 30))
    example = make_filler_example(seed, 96, layout, index=5, depth=0.5, num_pairs=4)
    a = make_mqar_example(
        seed, 32, 4, index=15, key_range=(1, 17), value_range=(128, 144), noise="pad"
    )
    tokens, targets = example.tokens, example.target_tokens()
    meta = example.metadata
    assert len(tokens) == (32 if layout == "absent" else 96)
    a_spans = [example.answer_spans[i] for i in meta["a_queries"]]
    # A's queries: the last len(a) spans, their targets A's values, in A's order
    np.testing.assert_array_equal(
        [targets[s] for s, _ in a_spans], a.target_tokens()[a.answer_mask]
    )
    assert tokens[-24:].tolist() == a.tokens[8:].tolist()  # A's query region ends every layout
    filler = np.ones(len(tokens), bool)
    if layout in ("start", "depth", "absent"):
        start = meta["pairs_start"]
        assert start == {"start": 64, "depth": 32, "absent": 0}[layout]
        np.testing.assert_array_equal(tokens[start : start + 8], a.tokens[:8])
        filler[start : start + 8] = False
    elif layout == "interleaved":  # k v, then 16 filler, four times
        for i in range(4):
            np.testing.assert_array_equal(tokens[18 * i : 18 * i + 2], a.tokens[2 * i : 2 * i + 2])
            filler[18 * i : 18 * i + 2] = False
    else:  # stacked: A's pairs, B and C (32 tokens each), A's queries
        np.testing.assert_array_equal(tokens[:8], a.tokens[:8])
        b = make_mqar_example(
            seed, 32, 4, index=16, key_range=(1, 17), value_range=(128, 144), noise="pad"
        )
        np.testing.assert_array_equal(tokens[8:40], b.tokens)
        assert len(example.answer_spans) == 12
        filler[:] = False
    filler[-24:] = False
    if layout != "stacked":
        assert np.all((tokens[filler] >= 17) & (tokens[filler] < 128))


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout='top'"):
        make_filler_example(0, 64, "top")
    with pytest.raises(ValueError, match="filler_range"):
        make_filler_example(0, 64, "start", filler_range=(10, 100))
    with pytest.raises(ValueError, match="length=20"):
        make_filler_example(0, 20, "start")
    with pytest.raises(ValueError, match="depth=1.5"):
        make_filler_example(0, 64, "depth", depth=1.5)


def test_task_source_rows():
    config = default_data_config()
    config.seq_len = 64
    config.task.kind = "filler"
    config.task.filler.layout = "depth"
    config.task.filler.depths = (0.0, 1.0)
    spec = task_spec(config.task, config.seq_len)
    starts = {make_task_example(spec, 0, i).metadata["pairs_start"] for i in range(40)}
    assert starts == {0, 32}  # depth 0 or 1 of 32 filler tokens
    config.task.filler.depths = (2.0,)
    with pytest.raises(ValueError, match=r"task\.filler\.depths"):
        task_spec(config.task, config.seq_len)
