"""The run directory through the CLI, as a user meets it: kill -9 and rerun, SIGTERM before and
during the loop, two trainers on one workdir, a diverging learning rate, a resume with another
model. Each case loses nothing: no step logged twice, no checkpoint lost, config.json intact."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from tiny_config import TINY_MODEL_FLAGS, checkpointed_params

from longctx_jax.train.checkpointing import checkpoint_steps

LONGCTX = [str(Path(sys.executable).parent / "longctx")]
QUICKSTART = str(Path(__file__).parents[2] / "configs" / "quickstart.py")
pytestmark = pytest.mark.slow


def command(workdir, steps, *flags):
    return [
        *LONGCTX,
        "train",
        f"--config={QUICKSTART}",
        f"--workdir={workdir}",
        *TINY_MODEL_FLAGS,
        "--config.data.batch_size=4",
        "--config.data.prefetch_batches=0",
        f"--config.train.steps={steps}",
        "--config.train.warmup_steps=2",
        "--config.train.checkpoint_every=2",
        *flags,
    ]


def start(workdir, steps, *flags):
    return subprocess.Popen(
        command(workdir, steps, *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out + err


def run_cli(workdir, steps, *flags):
    return finish(start(workdir, steps, *flags))


def records(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def losses(workdir):
    train_records = [r for r in records(workdir) if "loss" in r]
    steps = [r["step"] for r in train_records]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["step"]: r["loss"] for r in train_records}


def tensorboard_events(workdir):
    """Every event of WORKDIR/tensorboard, file by file in write order (TFRecord framing: length,
    its crc, the record, its crc)."""
    from tensorboardX.proto import event_pb2

    files = sorted((Path(workdir) / "tensorboard").glob("events.out.tfevents.*"))
    out = []
    for path in sorted(files, key=lambda f: f.stat().st_mtime_ns):
        data, at, events = path.read_bytes(), 0, []
        while at + 12 <= len(data):
            length = int.from_bytes(data[at : at + 8], "little")
            events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
        out.append(events)
    return out


def wait_for(predicate, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, finish(process)[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def logged_steps(workdir):
    path = Path(workdir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    code, output = run_cli(workdir, 8)
    assert code == 0, output[-3000:]
    return workdir


def test_kill_9_then_rerun_logs_each_step_once_and_equals_uninterrupted(uninterrupted, tmp_path):
    process = start(tmp_path, 8)
    wait_for(lambda: logged_steps(tmp_path) >= 5, process)  # past the step-4 checkpoint
    process.kill()
    process.wait()
    assert max(losses(tmp_path)) >= 5  # steps after the last checkpoint were logged ...
    code, output = run_cli(tmp_path, 8)
    assert code == 0, output[-3000:]
    assert "resumed from step" in output
    assert losses(tmp_path) == losses(uninterrupted)  # ... and are logged once, bitwise equal
    # TensorBoard: the resumed writer starts with a purge of the steps it redoes.
    restored = int(output.split("resumed from step ")[1].split()[0])
    _, second = tensorboard_events(tmp_path)  # the killed writer's file, the resumed one's
    starts = [e.step for e in second if e.HasField("session_log")]
    assert starts == [restored + 1], starts
    assert min(e.step for e in second if e.summary.value) == restored + 1
    jax.tree.map(
        np.testing.assert_array_equal,
        checkpointed_params(tmp_path, 8),
        checkpointed_params(uninterrupted, 8),
    )


def test_sigterm_before_the_loop_exits_0_with_a_message(tmp_path):
    process = start(tmp_path, 8)
    wait_for(lambda: catches_sigterm(process.pid), process)  # JAX is still starting
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 0, output[-3000:]
    assert "SIGTERM after step 0: no checkpoint yet" in output, output[-3000:]
    assert "rerun the same command to resume" in output


def catches_sigterm(pid) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: /proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_sigterm_during_the_loop_checkpoints_and_resumes(uninterrupted, tmp_path):
    process = start(tmp_path, 8)
    wait_for(lambda: logged_steps(tmp_path) >= 3, process)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 0, output[-3000:]
    saved = checkpoint_steps(tmp_path)[-1]
    assert saved >= 3 and f"checkpoint step {saved}" in output
    code, output = run_cli(tmp_path, 8)
    assert code == 0 and f"resumed from step {saved}" in output, output[-3000:]
    assert losses(tmp_path) == losses(uninterrupted)


def test_second_trainer_on_a_workdir_is_refused_and_the_first_is_unharmed(tmp_path):
    first = start(tmp_path, 100_000)  # stopped by SIGTERM below
    wait_for(lambda: logged_steps(tmp_path) >= 1, first)
    code, output = run_cli(tmp_path, 100_000)
    assert code == 1 and "in use by a running trainer" in output, output[-3000:]
    assert len(output.strip().splitlines()) <= 3  # a message, not a traceback
    first.send_signal(signal.SIGTERM)
    code, output = finish(first)
    assert code == 0, output[-3000:]
    assert checkpoint_steps(tmp_path)  # the first trainer's checkpoint is there
    losses(tmp_path)  # and every step once


def test_diverging_learning_rate_stops_and_the_last_checkpoint_is_finite(tmp_path):
    code, output = run_cli(tmp_path, 8, "--config.train.learning_rate=1e30")
    assert code == 1 and "not finite" in output, output[-3000:]
    steps = checkpoint_steps(tmp_path)
    assert steps, "the finite steps before divergence were checkpointed"
    params = checkpointed_params(tmp_path, steps[-1])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_resume_with_another_embed_dim_is_refused_and_config_json_intact(tmp_path):
    code, output = run_cli(tmp_path, 2)
    assert code == 0, output[-3000:]
    before = (tmp_path / "config.json").read_bytes()
    code, output = run_cli(tmp_path, 4, "--config.model.embed_dim=96")
    assert code == 1 and "model.embed_dim: 64 -> 96" in output, output[-3000:]
    assert (tmp_path / "config.json").read_bytes() == before
    assert checkpoint_steps(tmp_path) == [2]


def test_no_libtpu_noise_on_a_cpu_machine(uninterrupted):
    hidden = ("JAX_PLATFORMS", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD")
    env = {k: v for k, v in os.environ.items() if k not in hidden}  # as a user's shell has it
    done = subprocess.run(
        command(uninterrupted, 8), capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hostname" not in done.stderr.lower() and "libtpu" not in done.stderr.lower()
