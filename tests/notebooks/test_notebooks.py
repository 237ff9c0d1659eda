"""The notebooks run top to bottom and show what they say they show.

nbclient raises on the first cell that errors, so running is checked by `execute` itself; each
test then checks the notebook's outputs against values computed here, independently: the run it
trained (read back from its checkpoint), the float64 numpy forward pass of tests/model (for the
accuracy and the attention statistics it prints) and the figure it draws.
"""

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


def execute(name: str, tmp_path, monkeypatch):
    """Runs notebooks/<name> in a fresh folder under tmp_path (so it finds no ../runs of this
    checkout and trains its own model; its temporary files land in tmp_path too)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cwd = tmp_path / "notebooks"
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
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


def test_every_notebook_has_a_test():
    """A new notebook needs a test here that checks what it shows (running is not enough)."""
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == ["attention_maps.ipynb"]
