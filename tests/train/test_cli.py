"""`longctx train` as scripts drive it: config overrides, bad keys, bad checkpoints (SIGTERM,
kill -9 and the other run-directory cases: test_run_directory.py)."""

import json
import os
import subprocess
import sys
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


def test_unknown_config_key_is_one_line_with_the_closest_key(tmp_path):
    done = run(tmp_path / "run", "--config.train.stpes=5")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "longctx train: --config.train.stpes: unknown config field; did you mean train.steps?"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.steps=0", "train.steps=0: expected an integer >= 1"),
        ("--config.train.checkpoint_every=0", "train.checkpoint_every=0: expected an integer >= 1"),
        (
            "--config.train.learning_rate=-1",
            "train.learning_rate=-1.0: expected a finite number > 0",
        ),
    ],
)
def test_invalid_value_is_one_line_before_anything_is_written(tmp_path, override, message):
    done = run(tmp_path / "run", override)
    assert done.returncode == 1
    assert done.stderr.strip() == f"longctx train: {message}"
    assert not (tmp_path / "run").exists()


def test_a_flag_of_another_command_is_refused(tmp_path):
    done = run(tmp_path / "run", "--top_k=3")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("longctx train: --top_k is not a flag of this command")


# --- The installed `longctx`, run from a directory that is not the repository ---------------

LONGCTX = Path(sys.executable).with_name("longctx")
installed = pytest.mark.skipif(not LONGCTX.exists(), reason="the longctx script is not installed")


def installed_longctx(cwd, *args, jax_env=True):
    """Runs the installed script in `cwd`; jax_env=False drops the test suite's JAX_PLATFORMS and
    libtpu settings, as on a user's machine."""
    env = dict(os.environ)
    if not jax_env:
        for name in ("JAX_PLATFORMS", "TPU_WORKER_HOSTNAMES", "ALLOW_MULTIPLE_LIBTPU_LOAD"):
            env.pop(name, None)
    return subprocess.run(
        [str(LONGCTX), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@installed
def test_help_lists_commands_flags_and_config_fields(tmp_path):
    from longctx_jax.cli import COMMANDS

    done = installed_longctx(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    for name, command in COMMANDS.items():
        assert f"  {name} " in done.stdout
        assert command.usage.splitlines()[0] in done.stdout
    for text in ("--config.KEY=VALUE", "train.steps", "mesh.{data,fsdp,tensor,sequence}"):
        assert text in done.stdout
    assert "USAGE: " not in done.stdout


@installed
def test_command_help_lists_only_its_flags(tmp_path):
    sparse = installed_longctx(tmp_path, "bench", "sparse", "--help")
    assert sparse.returncode == 0
    assert "--top_k" in sparse.stdout and "--override" not in sparse.stdout
    ablate = installed_longctx(tmp_path, "ablate", "--help")
    assert "--override " in ablate.stdout and "--dry_run" in ablate.stdout
    assert "--top_k" not in ablate.stdout
    assert "main config fields" in ablate.stdout


@installed
def test_version(tmp_path):
    from importlib.metadata import version

    done = installed_longctx(tmp_path, "--version")
    assert done.stdout.strip() == f"longctx {version('longctx-jax')}"


@installed
def test_ablation_check_runs_from_any_directory_without_libtpu_noise(tmp_path):
    config = ROOT / "configs/ablations/position_extrapolation.py"
    done = installed_longctx(
        tmp_path,
        "ablate",
        f"--config={config}:demo",
        "--override=model.num_layers=1",
        "--override=train.steps=1",
        "--override_declared",
        "--dry_run",
        jax_env=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "position_extrapolation_demo: 5 variants, checked" in done.stdout
    assert str((ROOT / "experiments/position_extrapolation.py").resolve()) in done.stdout
    assert "override-" in done.stdout
    assert "worker hostname" not in done.stderr and "TPU" not in done.stderr, done.stderr
    assert not (tmp_path / "runs").exists()


@installed
def test_ablate_refuses_an_override_of_a_declared_field(tmp_path):
    config = ROOT / "configs/ablations/sparse_attention.py"
    done = installed_longctx(
        tmp_path, "ablate", f"--config={config}:demo", "--override=train.steps=5"
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "declare train.steps" in done.stderr and "--override_declared" in done.stderr


def test_main_config_fields_in_the_help_exist():
    from longctx_jax.attention import IMPLEMENTATIONS
    from longctx_jax.cli import MAIN_CONFIG_FIELDS
    from longctx_jax.config import base_config, field_names
    from longctx_jax.model.config import POSITION_KINDS
    from longctx_jax.positions import ROPE_KINDS

    names = set(field_names(base_config()))
    for fields, text in MAIN_CONFIG_FIELDS:
        assert set(fields) <= names, fields
        if fields == ("model.attention.impl",):
            assert set(text.split(" | ")) == set(IMPLEMENTATIONS)
        if fields == ("model.position.kind",):
            assert tuple(text.split(" | ")) == POSITION_KINDS
        if fields == ("model.position.rope_kind",):
            assert tuple(text.split(";")[0].split(" | ")) == ROPE_KINDS


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "7" / "state").write_text("not a checkpoint")
    done = run(tmp_path, "--config.train.steps=9")
    assert done.returncode == 1
    assert "no checkpoint in" in done.stderr and "step 7:" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert (tmp_path / "corrupt_checkpoints" / "7" / "state").read_text() == "not a checkpoint"
