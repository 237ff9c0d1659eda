"""`longctx generate` and inference/requests.py on a tiny trained run: the command's greedy
completions of a prompts file equal `generate` called here request by request; a request's sampled
completion does not depend on the batch size or its neighbours; ids and order are kept; bad input
is refused with one line before anything is written."""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from seeding import seed_for

from longctx_jax.config import base_config
from longctx_jax.data import vocab
from longctx_jax.inference import requests
from longctx_jax.inference.generate import generate
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.inference.wal import RECORD_BYTES
from longctx_jax.run import load_model
from longctx_jax.train.loop import train

ROOT = Path(__file__).parents[2]
NEW = 6
# Prompts of different lengths, one multi-byte; ids of both kinds, not in sorted order.
PROMPTS = [
    ("b", "def main():\n    "),
    (7, "import "),
    ("a", "naïve = "),
    (3, "for i in range(10):\n        print(i"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run trained for 2 steps (seconds); a peaked init (init_std 0.3) keeps greedy choices far
    from ties, so differently shaped batches pick the same tokens."""
    config = base_config()
    config.model.update(
        dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
    )
    config.model.init_std = 0.3
    config.data.update(dict(seq_len=32, batch_size=2, prefetch_batches=0))
    config.train.update(dict(steps=2, warmup_steps=1, checkpoint_every=2))
    workdir = tmp_path_factory.mktemp("run")
    train(config, workdir)
    return workdir


def write_prompts(path, pairs):
    path.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in pairs))
    return path


def read_out(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def longctx(*args):
    command = [sys.executable, "-m", "longctx_jax.cli", "generate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_greedy_completions_equal_generate_per_request(run, tmp_path):
    prompts = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    out = tmp_path / "sub" / "out.jsonl"
    done = longctx(
        "--workdir", run, "--prompts_file", prompts, "--out", out, "--max_new_tokens", NEW,
        "--batch_size", 3,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}: 4 completions" in done.stdout
    lines = read_out(out)
    assert [line["id"] for line in lines] == [i for i, _ in PROMPTS]

    model_config, params = load_model(run)
    for (_, prompt), line in zip(PROMPTS, lines, strict=True):
        tokens = jnp.asarray(vocab.encode(prompt))[None]
        new = generate(model_config, {"params": params}, tokens, max_new_tokens=NEW)
        assert new.shape == (1, NEW)
        assert line["completion"] == vocab.decode(np.asarray(new[0]))
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left


def test_prompt_flag_prints_the_completion_of_request_zero(run, tmp_path):
    prompt = PROMPTS[0][1]
    done = longctx("--workdir", run, "--prompt", prompt, "--max_new_tokens", NEW)
    assert done.returncode == 0, done.stderr[-3000:]
    # The first line of a file is request 0 too.
    file = write_prompts(tmp_path / "in.jsonl", PROMPTS[:1])
    requests.generate_file(run, file, tmp_path / "out.jsonl", max_new_tokens=NEW)
    assert done.stdout == read_out(tmp_path / "out.jsonl")[0]["completion"] + "\n"


def test_sampled_completion_is_independent_of_batching(run, tmp_path):
    seed = seed_for("test_sampled_completion_is_independent_of_batching") % 2**31
    options = dict(
        max_new_tokens=8, sampling=requests.sampling_from(temperature=1.5, top_p=0.95), seed=seed
    )
    file = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    outputs = {}
    for batch_size in (1, 3):
        out = tmp_path / f"out{batch_size}.jsonl"
        assert requests.generate_file(run, file, out, batch_size=batch_size, **options) == 4
        outputs[batch_size] = read_out(out)
    assert outputs[1] == outputs[3]
    assert [line["id"] for line in outputs[1]] == [i for i, _ in PROMPTS]

    # Other neighbours (request 2 keeps its line; the longest prompt keeps its length, so the
    # compiled batch is reused): the same completion for request 2.
    longest = "# " + "x" * (len(PROMPTS[3][1]) - 2)
    others = [(10, "x"), (11, "while True:"), PROMPTS[2], (12, longest)]
    write_prompts(file, others)
    requests.generate_file(run, file, tmp_path / "others.jsonl", batch_size=3, **options)
    assert read_out(tmp_path / "others.jsonl")[2] == outputs[1][2]

    # The noise is the seed's: another seed changes some completion.
    write_prompts(file, PROMPTS)
    requests.generate_file(
        run, file, tmp_path / "reseeded.jsonl", batch_size=3, **(options | dict(seed=seed + 1))
    )
    assert read_out(tmp_path / "reseeded.jsonl") != outputs[3]


# Runs `longctx generate` in a process that signals itself on its Nth append to the WAL: a real
# SIGTERM or SIGKILL through the CLI, at a chosen token. "torn" writes half of that append first.
INTERRUPTED = """
import os, signal, sys
after, how = int(sys.argv[1]), sys.argv[2]
write, appends = os.write, [0]
def interrupting_write(fd, data):
    if not os.readlink(f"/proc/self/fd/{fd}").endswith("tokens.wal"):
        return write(fd, data)
    appends[0] += 1
    if appends[0] == after and how == "torn":
        write(fd, data[: len(data) // 2 + 3])
        os.kill(os.getpid(), signal.SIGKILL)
    written = write(fd, data)
    if appends[0] == after:
        os.kill(os.getpid(), getattr(signal, how))
    return written
os.write = interrupting_write
from longctx_jax import cli
sys.argv = ["longctx", "generate", *sys.argv[3:]]
cli.run()
"""


def test_cli_wal_resumes_exactly_after_sigterm_and_kill(run, tmp_path):
    """SIGTERM (caches saved, exit 0, nothing written), then kill -9 in the middle of an append,
    at random tokens; rerunning the same command writes exactly the uninterrupted completions;
    a WAL written for another seed, or held by another engine, is refused, untouched."""
    rng = np.random.default_rng(seed_for("test_cli_wal_resumes_exactly_after_sigterm_and_kill"))
    prompts = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    out, wal = tmp_path / "out.jsonl", tmp_path / "wal"
    args = [
        "--workdir", run, "--prompts_file", prompts, "--out", out, "--max_new_tokens", 12,
        "--batch_size", 2, "--temperature", 1.5, "--seed", 5, "--stop_token", 10, "--wal", wal,
    ]  # fmt: skip
    expected = tmp_path / "expected.jsonl"
    options = dict(max_new_tokens=12, batch_size=2, seed=5, stop_token=10)
    sampling = requests.sampling_from(temperature=1.5)
    requests.generate_file(run, prompts, expected, sampling=sampling, **options)

    def interrupted(after, how):
        command = [sys.executable, "-c", INTERRUPTED, str(after), how, *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)

    # Each process counts its own appends (one per decode step); a batch decodes <= 12 steps.
    first, second = rng.integers(1, 6, size=2)
    stopped = interrupted(first, "SIGTERM")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "longctx generate: preempted after" in stopped.stderr
    assert (wal / "cache" / "snapshot.json").exists() and not out.exists()
    killed = interrupted(second, "torn")
    assert killed.returncode == -9 and not out.exists()
    assert (wal / "tokens.wal").stat().st_size % RECORD_BYTES != 0  # the torn record
    done = longctx(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_text() == expected.read_text()

    log = (wal / "tokens.wal").read_bytes()
    reseeded = [str(a) for a in args]
    reseeded[reseeded.index("--seed") + 1] = "6"
    refused = longctx(*reseeded)
    assert refused.returncode == 1
    assert "meta.json: this WAL was written for seed=5, this command has seed=6" in refused.stderr
    assert (wal / "tokens.wal").read_bytes() == log and out.read_text() == expected.read_text()

    with open(wal / "lock", "r+") as held:  # another engine holds the WAL
        fcntl.flock(held, fcntl.LOCK_EX)
        locked = longctx(*args)
    assert locked.returncode == 1 and "another engine (pid " in locked.stderr


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": 1, "prompt": "a"}', '{"id": 2, "prompt": "b"'], ":2: not valid JSON"),
        (['{"id": 1, "prompt": "a"}', "", '{"prompt": "b"}'], ":3: no 'id' field"),
        (['{"id": "x", "text": "a"}'], ":1: no 'prompt' field"),
        (['{"id": 1, "prompt": "a"}', '{"id": 1, "prompt": "b"}'], ":2: id=1 is already"),
        (['{"id": 1, "prompt": ""}'], ":1: prompt='': expected a non-empty string"),
        (['{"id": 1, "prompt": 5}'], ":1: prompt=5"),
        (['{"id": [1], "prompt": "a"}'], ":1: id=[1]: expected a string or an integer"),
        (['["a"]'], ":1: expected an object"),
        ([""], "no requests"),
    ],
)
def test_bad_prompts_file_names_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as error:
        requests.read_requests(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_blank_lines_are_skipped_and_request_ids_are_line_indices(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('\n{"id": "a", "prompt": "x"}\n\n{"id": 2, "prompt": "yz"}\n\n')
    got = requests.read_requests(path)
    assert got == [requests.Request("a", "x", 1), requests.Request(2, "yz", 3)]


def test_sampling_from_flags():
    assert requests.sampling_from() is None
    assert requests.sampling_from(top_p=0.5).temperature == 1.0
    assert requests.sampling_from(temperature=0.0).greedy
    for bad in (dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0)):
        with pytest.raises(ValueError, match=f"sampling.{next(iter(bad))}="):
            requests.sampling_from(**bad)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(cache=CacheSpec(bits=3)), "cache.bits=3"),
        (dict(cache=CacheSpec(policy="lru")), "cache.policy='lru'"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(seed=2**31), "seed=2147483648"),
        (dict(workdir="missing"), "no "),  # no config.json
        (dict(workdir="no_checkpoint"), "no checkpoint"),
        (dict(step=99), "step=99: no such checkpoint"),
        # The longest prompt is in the last batch; it is refused before any batch runs.
        (dict(cache=CacheSpec(capacity=30), batch_size=1), "cache.capacity=30"),
    ],
)
def test_bad_input_writes_nothing(run, tmp_path, monkeypatch, options, message):
    (tmp_path / "no_checkpoint").mkdir()
    (tmp_path / "no_checkpoint" / "config.json").write_text((run / "config.json").read_text())
    workdir = options.pop("workdir", None)
    workdir = run if workdir is None else tmp_path / workdir
    calls = []
    monkeypatch.setattr(requests, "generate", lambda *a, **k: calls.append(a) or generate(*a, **k))
    file = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        requests.generate_file(workdir, file, out, **(dict(max_new_tokens=NEW) | options))
    assert not out.exists() and len(calls) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "no_checkpoint"]


def test_cli_bad_input_is_one_line_exit_1(run, tmp_path):
    prompts = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    out = tmp_path / "out.jsonl"
    cases = [
        (("--prompt", "x", "--prompts_file", prompts, "--out", out), "needs one of --prompt"),
        (("--prompts_file", prompts), "--prompts_file needs --out"),
        (("--prompt", "x", "--temperature=-1"), "sampling.temperature=-1.0"),
        (("--prompts_file", prompts, "--out", out, "--cache_bits=3"), "cache.bits=3"),
    ]
    for args, message in cases:
        done = longctx("--workdir", run, "--max_new_tokens", NEW, *args)
        assert done.returncode == 1, (args, done.stderr[-3000:])
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("longctx generate: "), done.stderr
        assert message in lines[0]
        assert not out.exists()
    missing = longctx("--workdir", tmp_path / "nothing", "--prompt", "x", "--max_new_tokens", 2)
    assert missing.returncode == 1
    assert missing.stderr.startswith("longctx generate: workdir=") and "\n" == missing.stderr[-1]
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_streaming_perplexity_script(run, capsys):
    """experiments/streaming_perplexity.py: one line of buckets per cache; with room for every
    token (capacity >= length) every cache gives the full cache's numbers."""
    import importlib.util

    path = Path(__file__).parents[2] / "experiments" / "streaming_perplexity.py"
    spec = importlib.util.spec_from_file_location("streaming_perplexity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--workdir", str(run), "--capacity", "40", "--length", "33"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("mean NLL (nats/byte) per 16-token bucket, 4 rows")
    numbers = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(numbers) == {"full", "window", "sinks=4", "sinks=1"}
    assert all(len(v) == 2 and v == numbers["full"] for v in numbers.values())
