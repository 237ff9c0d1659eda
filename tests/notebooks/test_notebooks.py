"""The notebooks run top to bottom and show what they say they show.

nbclient raises on the first cell that errors, so running is checked by `execute` itself; each
test then checks the notebook's outputs against values computed here, independently: the run it
trained (read back from its checkpoint), the float64 numpy forward pass of tests/model (for the
accuracies and the attention statistics it prints) and the figures it draws.
"""

import ast
import base64
import re
import struct
import sys
import textwrap
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parents[1] / "model"))
from numpy_reference import reference_forward  # noqa: E402

from longctx_jax.run import load_model  # noqa: E402
from longctx_jax.train.checkpointing import checkpoint_steps  # noqa: E402

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


def execute(name: str, tmp_path, monkeypatch, *, optimize: bool = True):
    """Runs notebooks/<name> in a fresh folder under tmp_path (so it finds no ../runs of this
    checkout and trains its own model; its temporary files land in tmp_path too).

    optimize=False starts the kernel with JAX_DISABLE_MOST_OPTIMIZATIONS: XLA skips its backend
    optimisations, for a notebook whose programs each run a few times on small inputs, so that
    compiling them is most of its time. They compute the same functions (to float rounding,
    which the checks allow for)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cwd = tmp_path / "notebooks"
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    if not optimize:
        monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    return code


def stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.slow
def test_attention_maps_notebook(tmp_path, monkeypatch):
    setup, forward, figure, statistics = execute("attention_maps.ipynb", tmp_path, monkeypatch)

    # 1. The run it trained, as its checkpoint says.
    found = re.search(r"^(\S+): step (\d+), (\d+) layers x (\d+) heads$", stdout(setup), re.M)
    assert found, stdout(setup)
    run = Path(found[1])
    assert tmp_path in run.parents, f"{run}: not the notebook's own fresh run"
    model_config, params = load_model(run)
    layers, heads = model_config.num_layers, model_config.num_heads
    assert int(found[2]) == checkpoint_steps(run)[-1]
    assert (int(found[3]), int(found[4])) == (layers, heads)

    # 2. The snippet it prints and the accuracy of the model on it, from the numpy forward.
    text = Path(textwrap.__file__).read_bytes()[:96]
    printed = stdout(forward)
    assert printed.startswith(text.decode() + "\n")
    accuracy = float(re.search(r"next-byte accuracy on this snippet: (\S+)$", printed, re.M)[1])
    tokens = np.frombuffer(text, np.uint8).astype(np.int64)[None]
    logits, maps = reference_forward(params, model_config, tokens)
    want = float((logits[0, :-1].argmax(-1) == tokens[0, 1:]).mean())
    assert abs(accuracy - want) <= 1 / 95 + 1e-6, (accuracy, want)  # one near-tie may flip

    # 3. One figure: a 300-pixel map per (layer, head).
    (shown,) = [o for o in figure.outputs if o.output_type == "display_data"]
    size = f"{300 * heads}x{300 * layers}"
    assert shown.data["text/plain"] == f"<Figure size {size} with {layers * heads} Axes>"
    png = base64.b64decode(shown.data["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR; tight bbox trims the margins
    assert 0.8 * 300 * heads <= width <= 300 * heads and 0.8 * 300 * layers <= height, png[16:24]

    # 4. Sink and local mass per (layer, head), from the reference attention probabilities.
    rows = re.findall(
        r"^layer (\d+) head (\d+): sink (\d\.\d\d)  local (\d\.\d\d)$", stdout(statistics), re.M
    )
    assert [(int(r[0]), int(r[1])) for r in rows] == [
        (layer, head) for layer in range(layers) for head in range(heads)
    ]
    maps = maps[:, 0]  # [layers, heads, T, T]
    t = maps.shape[-1]
    queries = np.arange(16, t)
    sink = maps[:, :, queries, :4].sum(-1).mean(-1)
    local = np.mean([maps[:, :, q, max(0, q - 3) : q + 1].sum(-1) for q in queries], axis=0)
    for layer, head, s, loc in rows:
        layer, head = int(layer), int(head)
        what = f"layer {layer} head {head}"
        assert abs(float(s) - sink[layer, head]) <= 0.0051, (what, s, sink[layer, head])
        assert abs(float(loc) - local[layer, head]) <= 0.0051, (what, loc, local[layer, head])


def figures(cell) -> list[str]:
    """The text/plain of each figure a cell shows ("<Figure size WxH with N Axes>")."""
    return [o.data["text/plain"] for o in cell.outputs if o.output_type == "display_data"]


def answer_rows(example):
    """(rows, start, end, targets) of a single-needle NIAH example, from its metadata alone: the
    query row t - 1 of every answer byte t, and the needle sentence holding the value."""
    meta = example.metadata
    (needle,) = [n for n in meta["needles"] if n["value"] == meta["answer"]]
    rows = example.prompt_len - 1 + np.arange(len(meta["answer"]))
    return rows, needle["start"], needle["end"], example.tokens[rows + 1]


def decided(scores_RK, slack) -> np.ndarray:
    """bool [R]: the row's largest score beats its second by more than `slack` (an argmax that
    float32 and float64 cannot disagree on)."""
    top2 = np.sort(scores_RK, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > slack


@pytest.mark.slow
def test_retrieval_notebook(tmp_path, monkeypatch):
    from longctx_jax.data.tasks import make_niah_example

    monkeypatch.delenv("LONGCTX_RETRIEVAL_RUN", raising=False)
    setup, grid, example_cell, heads_cell, dilution = execute(
        "retrieval.ipynb", tmp_path, monkeypatch, optimize=False
    )

    # 1. The run it trained, as its checkpoint says, and what it evaluates.
    printed = stdout(setup)
    found = re.search(r"^(\S+): step (\d+), (\d+) layers x (\d+) heads$", printed, re.M)
    assert found, printed
    run = Path(found[1])
    assert tmp_path in run.parents, f"{run}: not the notebook's own fresh run"
    model_config, params = load_model(run)
    layers, heads = model_config.num_layers, model_config.num_heads
    assert int(found[2]) == checkpoint_steps(run)[-1]
    assert (int(found[3]), int(found[4])) == (layers, heads)
    settings = re.search(
        r"^trained at (\d+) tokens; lengths (\(.*?\)), depths (\(.*?\)), (\d+) examples per "
        r"cell; attention at (\(.*?\)), (\d+) per \(length, depth\)$",
        printed,
        re.M,
    )
    assert settings, printed
    train_len = int(settings[1])
    lengths, depths = ast.literal_eval(settings[2]), ast.literal_eval(settings[3])
    num_examples, attention_examples = int(settings[4]), int(settings[6])
    attention_lengths = ast.literal_eval(settings[5])
    assert set(attention_lengths) <= set(lengths)

    # The float64 numpy forward of every example the evaluators see (seed 0, index < count).
    cache = {}

    def reference(length, depth, index):
        if (length, depth, index) not in cache:
            example = make_niah_example(0, length, depth, index=index)
            logits, maps = reference_forward(params, model_config, example.tokens[None, :-1])
            cache[length, depth, index] = example, logits[0], maps[:, 0]
        return cache[length, depth, index]

    # 2. The NIAH grids: greedy exact match from the reference logits (a cell may differ only
    # where some answer byte's top two logits are within 1e-4), YaRN = plain RoPE up to the
    # training length, and the effective length by its definition.
    text = stdout(grid)
    assert text.startswith("depths " + " ".join(str(d) for d in depths) + "\n"), text
    blocks = re.findall(
        r"^rope_kind=(\w+): effective length (\d+), accuracy (\S+), answer bytes right (\S+)\n"
        r"((?:  \d+:.*\n)+)",
        text,
        re.M,
    )
    assert [b[0] for b in blocks] == ["default", "yarn"], text
    assert figures(grid) == [f"<Figure size 840x{int(90 + 45 * len(depths))} with 4 Axes>"]
    table = {}
    for kind, effective, accuracy, _, body in blocks:
        cells = np.array(
            [[float(x) for x in line.split(":")[1].split()] for line in body.split("\n")[:-1]]
        )
        assert [int(line.split(":")[0]) for line in body.split("\n")[:-1]] == list(lengths)
        assert cells.shape == (len(lengths), len(depths))
        assert np.allclose(cells * num_examples, np.round(cells * num_examples), atol=0.006)
        assert abs(float(accuracy) - cells.mean()) <= 0.006
        want = 0
        for length, row in zip(lengths, cells.mean(1), strict=True):
            if row < 0.5:
                break
            want = length
        assert int(effective) == want, (kind, effective, cells)
        table[kind] = cells
    hits = tokens = unsure = 0
    for li, length in enumerate(lengths):
        for di, depth in enumerate(depths):
            exact, doubtful = 0, 0
            for index in range(num_examples):
                example, logits, _ = reference(length, depth, index)
                rows, _, _, targets = answer_rows(example)
                right = logits[rows].argmax(-1) == targets
                sure = decided(logits[rows], 1e-4)
                exact += bool(right.all())
                doubtful += not sure.all()
                hits, tokens, unsure = (
                    hits + right.sum(),
                    tokens + len(rows),
                    unsure + (~sure).sum(),
                )
            got = round(table["default"][li, di] * num_examples)
            assert abs(got - exact) <= doubtful, (length, depth, got, exact)
    token_accuracy = float(blocks[0][3])
    assert abs(token_accuracy - hits / tokens) <= unsure / tokens + 0.006, (token_accuracy, hits)
    short = [i for i, n in enumerate(lengths) if n <= train_len]
    assert np.array_equal(table["yarn"][short], table["default"][short])

    # 3. One example: its needle, the answer's teacher-forced argmax, the per-head needle mass.
    example, logits, maps = reference(train_len, 0.5, 0)
    rows, start, end, targets = answer_rows(example)
    text = stdout(example_cell)
    needle = bytes(example.tokens[start:end].astype(np.uint8)).decode()
    assert f"needle at tokens [{start}, {end}): {needle!r}\n" in text, text
    predicted = re.search(r"teacher-forced argmax '(\d+)'", text)[1]
    want = bytes(logits[rows].argmax(-1).astype(np.uint8)).decode()
    sure = decided(logits[rows], 1e-4)
    assert all(p == w for p, w, s in zip(predicted, want, sure, strict=True) if s), (
        predicted,
        want,
    )
    assert figures(example_cell) == [
        f"<Figure size {300 * heads}x{int(180 * layers)} with {layers * heads} Axes>"
    ]
    uniform = float(re.search(r"uniform attention would put (\S+) on the needle", text)[1])
    assert abs(uniform - np.mean((end - start) / (rows + 1))) <= 0.0006
    masses = re.findall(r"^layer (\d+) head (\d+): needle mass (\S+)$", text, re.M)
    assert [(int(a), int(b)) for a, b, _ in masses] == [
        (layer, head) for layer in range(layers) for head in range(heads)
    ]
    want = maps[:, :, rows, start:end].sum(-1).mean(-1)  # [layers, heads]
    for layer, head, mass in masses:
        assert abs(float(mass) - want[int(layer), int(head)]) <= 0.0006, (layer, head, mass)

    # 4. Retrieval heads and dilution, from the reference attention of the evaluated rows.
    per_length = {}
    for length in attention_lengths:
        rows_hit, mass, entropy, uniform, log_seen, ambiguous = [], [], [], [], [], []
        for depth in depths:
            for index in range(attention_examples):
                example, _, maps = reference(length, depth, index)
                rows, start, end, targets = answer_rows(example)
                a = maps[:, :, rows]  # [layers, heads, R, T]
                top = a.argmax(-1)
                rows_hit.append((top >= start) & (top < end) & (example.tokens[top] == targets))
                ambiguous.append(~decided(a.reshape(-1, a.shape[-1]), 1e-7).reshape(top.shape))
                mass.append(a[..., start:end].sum(-1))
                entropy.append(-np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0), -1))
                uniform.append((end - start) / (rows + 1.0))
                log_seen.append(np.log(rows + 1.0))
        per_length[length] = dict(
            hit=np.concatenate(rows_hit, -1),
            ambiguous=np.concatenate(ambiguous, -1),
            mass=np.concatenate(mass, -1),
            entropy=np.concatenate(entropy, -1),
            uniform=np.concatenate(uniform).mean(),
            log_seen=np.concatenate(log_seen).mean(),
        )
    hit = np.concatenate([p["hit"] for p in per_length.values()], -1)
    ambiguous = np.concatenate([p["ambiguous"] for p in per_length.values()], -1)
    score = hit.mean(-1)
    slack = ambiguous.mean(-1) + 0.0006
    head_mass = np.concatenate([p["mass"] for p in per_length.values()], -1).mean(-1)

    text = stdout(heads_cell)
    assert figures(heads_cell) == [
        f"<Figure size {int(2 * (180 + 70 * heads))}x{int(120 + 50 * layers)} with 4 Axes>"
    ]
    count = re.search(r"^(\d+) retrieval heads \(score >= 0.1\) of (\d+); best heads:$", text, re.M)
    assert count and int(count[2]) == layers * heads, text
    sure = np.abs(score - 0.1) > slack
    assert int(count[1]) >= (score[sure] >= 0.1).sum()
    assert int(count[1]) <= (score >= 0.1).sum() + (~sure).sum()
    best = re.findall(r"^layer (\d+) head (\d+): score (\S+), needle mass (\S+)$", text, re.M)
    assert len(best) == min(5, layers * heads), text
    fifth = np.sort(score.ravel())[::-1][len(best) - 1]
    printed_scores = [float(s) for _, _, s, _ in best]
    assert printed_scores == sorted(printed_scores, reverse=True)
    for layer, head, s, m in best:
        lh = int(layer), int(head)
        assert abs(float(s) - score[lh]) <= slack[lh], (lh, s, score[lh])
        assert score[lh] >= fifth - 2 * slack.max(), (lh, score[lh], fifth)
        assert abs(float(m) - head_mass[lh]) <= 0.0006, (lh, m, head_mass[lh])

    assert figures(dilution) == ["<Figure size 1000x340 with 2 Axes>"]
    lines = re.findall(r"^ *(\d+)((?:  +\S+){5})$", stdout(dilution), re.M)
    assert [int(n) for n, _ in lines] == list(attention_lengths), stdout(dilution)
    for n, values in lines:
        p = per_length[int(n)]
        mass, best_head, uniform, entropy, ceiling = (float(v) for v in values.split())
        assert abs(mass - p["mass"].mean()) <= 0.0002, (n, mass, p["mass"].mean())
        assert abs(best_head - p["mass"].mean(-1).max()) <= 0.0002, (n, best_head)
        assert abs(uniform - p["uniform"]) <= 0.0002, (n, uniform, p["uniform"])
        assert abs(entropy - p["entropy"].mean()) <= 0.0005, (n, entropy, p["entropy"].mean())
        assert abs(ceiling - p["log_seen"]) <= 0.0002, (n, ceiling, p["log_seen"])


def test_every_notebook_has_a_test():
    """A new notebook needs a test here that checks what it shows (running is not enough)."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == [
        "attention_maps.ipynb",
        "kv_cache.ipynb",
        "length_distribution.ipynb",
        "retrieval.ipynb",
    ]


@pytest.mark.slow
def test_kv_cache_notebook(tmp_path, monkeypatch):
    setup, by_length, kept, quantised = execute(
        "kv_cache.ipynb", tmp_path, monkeypatch, optimize=False
    )

    found = re.search(
        r"^(\S+): (\d+) layers, (\d+) heads, (\d+) kv heads x (\d+)$", stdout(setup), re.M
    )
    assert found, stdout(setup)
    assert tmp_path in Path(found[1]).parents
    layers, heads, kv_heads, head_dim = (int(x) for x in found.groups()[1:])

    # 1. Bytes at 16,384 tokens by the closed form 2 * layers * kv_heads * head_dim * bytes.
    printed = dict(
        (m[1].strip(), int(m[2].replace(",", "")))
        for m in re.finditer(r"^(.+?)\s+([\d,]+) bytes at 16,384 tokens", stdout(by_length), re.M)
    )
    n = 16384
    per_token = 2 * layers * head_dim
    assert printed["MHA float32"] == per_token * heads * 4 * n
    assert printed["GQA/2 float32"] == per_token * max(1, heads // 2) * 4 * n
    assert printed["MQA float32"] == per_token * 1 * 4 * n
    assert printed["MHA bfloat16"] == per_token * heads * 2 * n
    assert printed["MHA int8"] == per_token * heads * n + 2 * layers * heads * 4 * n
    assert printed["linear mixer state"] == layers * kv_heads * head_dim**2 * 4
    assert printed["MHA KIVI int2"] < printed["MHA int4"] < printed["MHA int8"]

    # 2. What the positional policies keep does not depend on the model: check it exactly.
    shown = dict(re.findall(r"^--- (\w+): keeps 48 of 160\n(.*)$", stdout(kept), re.M))
    assert set(shown) == {"window", "sinks", "h2o", "tova", "snapkv", "knorm"}
    for name, line in shown.items():
        assert len(line) == 160 and 160 - line.count("·") == 48, name
    assert shown["window"][:112] == "·" * 112 and "·" not in shown["window"][112:]
    assert "·" not in shown["sinks"][:4] + shown["sinks"][116:]
    assert shown["sinks"][4:116] == "·" * 112
    for name in ("h2o", "snapkv", "knorm"):  # recent=8: the last 8 are always kept
        assert "·" not in shown[name][-8:], name

    # 3. Per-token quantisation: fewer bits, larger logit error.
    error = dict(
        (m[1].strip(), float(m[2]))
        for m in re.finditer(r"^(.+?)\s+mean \|logit error\| ([\d.]+)$", stdout(quantised), re.M)
    )
    assert error["int8 per token"] < error["int4 per token"] < error["int2 per token"]


@pytest.mark.slow
def test_length_distribution_notebook(tmp_path, monkeypatch):
    import json
    import os

    from longctx_jax.data.sources import split_files, stdlib_files

    paradox, pairs, recall = execute("length_distribution.ipynb", tmp_path, monkeypatch)

    # 1. The paradox on one file per document, recomputed from the file sizes.
    rows = {
        m[1]: [float(x.replace(",", "")) for x in m.groups()[1:]]
        for m in re.finditer(
            r"^(one file each|packages joined)\s+(\d+) documents\s+document mean\s+([\d,]+)\s+"
            r"token-weighted mean\s+([\d,]+)",
            stdout(paradox),
            re.M,
        )
    }
    root, relpaths = stdlib_files()
    train_files, _ = split_files(relpaths, 0.05)
    sizes = np.array([os.path.getsize(root / p) for p in train_files], np.float64)
    count, mean, weighted = rows["one file each"]
    assert count == len(sizes)
    assert abs(mean - sizes.mean()) <= 0.5
    assert abs(weighted - (sizes**2).sum() / sizes.sum()) <= 0.5
    assert weighted > 3 * mean  # the paradox is large on this corpus
    joined_count, _, joined_weighted = rows["packages joined"]
    assert joined_count < count and joined_weighted > weighted

    # 2. Far pairs: none for documents truncated at 128 with masking; without masking every
    #    full 512-token row holds 512 - d pairs at d, whatever the documents.
    far = {
        (m[1].strip(), m[2] == "True"): float(m[3])
        for m in re.finditer(
            r"^(.+?)\s+masking=(True|False)\s+pairs at distance >= 256: ([\d.]+)",
            stdout(pairs),
            re.M,
        )
    }
    assert len(far) == 12
    assert far["short (truncated at 128)", True] == 0.0
    unmasked = (256 * 257 / 2) / (512 * 513 / 2)
    for (name, masking), value in far.items():
        if not masking:
            assert abs(value - unmasked) <= 1e-4, (name, value)
        else:
            assert value < unmasked, (name, value)

    # 3. The ablation's numbers as printed are those of the committed results.
    results = json.loads(
        (Path(__file__).parents[2] / "docs/figures/length_distribution_demo.json").read_text()
    )
    for name, v in results["variants"].items():
        line = re.search(
            rf"^{re.escape(name)}\s+recall token accuracy by distance (.*)$", stdout(recall), re.M
        )
        assert line, name
        cells = [c for c in v["recall"]["default"]["cells"] if c["length"] == results["train_len"]]
        printed = dict(pair.split(":") for pair in line[1].split()[:-2])
        assert {int(d): float(a) for d, a in printed.items()} == {
            c["distance"]: round(c["token_accuracy"]["mean"], 3) for c in cells
        }
