"""`longctx train` as scripts drive it: config overrides, SIGTERM, bad keys, bad checkpoints."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_config import TINY_MODEL_FLAGS

ROOT = Path(__file__).parents[2]
TINY = [*TINY_MODEL_FLAGS, "--config.data.batch_size=4"]


def run(workdir, *overrides):
    return subprocess.run(longctx(workdir, *overrides), capture_output=True, text=True)


def longctx(workdir, *overrides):
    command = [sys.executable, "-m", "longctx_jax.cli", "train"]
    command += ["--config", str(ROOT / "configs/quickstart.py"), "--workdir", str(workdir)]
    return command + TINY + list(overrides)


def steps_logged(workdir):
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


def test_train_then_rerun_continues(tmp_path):
    done = run(tmp_path, "--config.train.steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    more = run(tmp_path, "--config.train.steps=3")
    assert more.returncode == 0, more.stderr[-3000:]
    assert steps_logged(tmp_path) == [1, 2, 3]


def test_unknown_config_key_is_rejected(tmp_path):
    done = run(tmp_path, "--config.model.no_such_knob=3")
    assert done.returncode != 0
    assert "no_such_knob" in done.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    process = subprocess.Popen(
        longctx(tmp_path, "--config.train.steps=100000", "--config.train.checkpoint_every=100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while len(steps_logged(tmp_path)) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] == steps_logged(tmp_path)[-1] >= 3
    last = saved[-1]
    resumed = run(tmp_path, f"--config.train.steps={last + 1}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert steps_logged(tmp_path)[-2:] == [last, last + 1]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "7" / "state").write_text("not a checkpoint")
    done = run(tmp_path, "--config.train.steps=9")
    assert done.returncode == 1
    assert "cannot restore checkpoint step 7" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
