"""Two processes on localhost (jax.distributed, 4 CPU devices each) train like one process of 8."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_config import TINY_MODEL_FLAGS

ROOT = Path(__file__).parents[2]
COMMON = [
    *TINY_MODEL_FLAGS,
    "--config.data.batch_size=8",
    "--config.data.process_sharding=batch",  # global batches independent of the process count
    "--config.train.steps=3",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=4",
]


def command(workdir, *extra):
    base = [sys.executable, "-m", "longctx_jax.cli", "train"]
    base += ["--config", str(ROOT / "configs/quickstart.py"), "--workdir", str(workdir)]
    return base + COMMON + list(extra)


def env_with_devices(count):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def losses(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = subprocess.run(
        command(tmp_path / "single"), env=env_with_devices(8), capture_output=True, text=True
    )
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    workers = [
        subprocess.Popen(
            command(
                tmp_path / "multi",
                "--config.distributed.enabled=True",
                f"--config.distributed.coordinator_address=localhost:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ),
            env=env_with_devices(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]

    multi, one = losses(tmp_path / "multi"), losses(tmp_path / "single")
    assert len(multi) == len(one) == 3
    assert multi == pytest.approx(one, rel=1e-5)
    # each process counted its own rows; the file holds their sum, as one process counts them
    stats = [
        json.loads((tmp_path / run / "data_stats.json").read_text()) for run in ("multi", "single")
    ]
    for key in ("batches", "pairs", "piece_lengths"):
        assert stats[0][key] == stats[1][key]
