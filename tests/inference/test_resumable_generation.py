"""The write-ahead-logged engine (inference/engine.py, wal.py) through its API, on tiny random
models: interrupted at random tokens -- caches saved, deleted, corrupted, logs torn or truncated --
it writes exactly the uninterrupted tokens and log bytes and never samples a token twice; it
equals `generate`; finished requests are not decoded again; bad logs are refused untouched."""

import os
import shutil

import numpy as np
import pytest
from inference_testlib import config, random_params
from seeding import seed_for

from longctx_jax.inference.engine import MemoryLog, decode_requests
from longctx_jax.inference.generate import generate
from longctx_jax.inference.sampling import Sampling
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.inference.wal import RECORD_BYTES, WriteAheadLog

NEW = 10
STOP = 7
FINGERPRINT = {"model": "tiny", "seed": 3}


@pytest.fixture(scope="module")
def model():
    cfg = config({"vocab_size": 32})
    return cfg, random_params(cfg, 0)


def prompts_for(seed, n=5):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 32, int(rng.integers(1, 7))).astype(np.int32) for _ in range(n)]


def decode(model, prompts, log, **options):
    cfg, params = model
    options = dict(max_new_tokens=NEW, stop_token=STOP, seed=3, batch_size=2) | options
    return decode_requests(cfg, params, prompts, log=log, **options)


def open_wal(directory, n, **options):
    return WriteAheadLog.open(directory, FINGERPRINT, num_requests=n, vocab_size=32, **options)


def uninterrupted(model, prompts, tmp_path, **options):
    """(tokens, finished, tokens.wal bytes, tokens sampled) of a run never stopped."""
    with open_wal(tmp_path / "reference", len(prompts)) as log:
        outcome = decode(model, prompts, log, **options)
    data = (tmp_path / "reference" / "tokens.wal").read_bytes()
    return log.tokens, log.finished, data, outcome.decoded


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(sampling=Sampling(1.0, top_p=0.9)),
        dict(sampling=Sampling(0.8), cache=CacheSpec(policy="h2o", capacity=8, bits=8)),
    ],
    ids=["greedy", "top_p", "h2o_int8"],
)
def test_interrupted_at_random_tokens_equals_uninterrupted(model, tmp_path, options, request):
    """Stops at random steps; between runs the saved cache is kept, deleted (re-prefill) or
    corrupted (re-prefill); the last log record is sometimes torn. The tokens, the log's bytes
    and the number of tokens sampled in all equal one uninterrupted run's."""
    rng = np.random.default_rng(seed_for(request.node.nodeid))
    prompts = prompts_for(rng.integers(1 << 30))
    tokens, finished, data, decoded = uninterrupted(model, prompts, tmp_path, **options)
    directory = tmp_path / "wal"
    sampled, ways, runs = 0, set(), 0
    schedule = [0, *rng.permutation([1, 2, 3])]  # after each stop: keep, delete, corrupt, tear
    while True:
        runs += 1
        with open_wal(directory, len(prompts)) as log:
            outcome = decode(model, prompts, log, should_stop=lambda: rng.random() < 0.3, **options)
        sampled += outcome.decoded
        ways.update(["restored"] * outcome.restored + ["rebuilt"] * outcome.rebuilt)
        if not outcome.preempted:
            break
        way = schedule[(runs - 1) % 4]
        if way == 1:
            shutil.rmtree(directory / "cache")
        elif way == 2:  # flip one byte of one saved array: the checksum catches it
            files = sorted(p for p in (directory / "cache").rglob("*") if p.is_file())
            victim = max(files, key=lambda p: p.stat().st_size)
            blob = bytearray(victim.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            victim.write_bytes(bytes(blob))
        elif way == 3:  # a kill -9 mid-append: part of the last record written
            path = directory / "tokens.wal"
            blob = path.read_bytes()
            if blob:
                os.truncate(path, len(blob) - int(rng.integers(1, RECORD_BYTES)))
                sampled -= blob[-RECORD_BYTES] == 1  # a token record: sampled again
    assert runs >= 3 and ways == {"restored", "rebuilt"}, (runs, ways)
    assert log.tokens == tokens and log.finished == finished
    assert (directory / "tokens.wal").read_bytes() == data
    assert sampled == decoded == sum(len(t) for t in tokens)


def test_truncated_log_resumes_to_the_same_bytes(model, tmp_path):
    """A log cut anywhere (whole records lost, or part of one) regenerates what it lost."""
    prompts = prompts_for(1)
    tokens, finished, data, _ = uninterrupted(model, prompts, tmp_path, sampling=Sampling(1.0))
    directory = tmp_path / "wal"
    for cut in (0, RECORD_BYTES * 3, RECORD_BYTES * 7 + 5, len(data) - 1):
        shutil.rmtree(directory, ignore_errors=True)
        with open_wal(directory, len(prompts)) as log:
            pass
        (directory / "tokens.wal").write_bytes(data[:cut])
        with open_wal(directory, len(prompts)) as log:
            decode(model, prompts, log, sampling=Sampling(1.0))
        assert log.tokens == tokens and log.finished == finished, cut
        assert (directory / "tokens.wal").read_bytes() == data


@pytest.mark.parametrize("sampling", [None, Sampling(1.0, top_k=5)], ids=["greedy", "top_k"])
def test_engine_equals_generate(model, sampling):
    """Step by step through the engine equals `generate` (one compiled scan), cut at the stop."""
    cfg, params = model
    prompts = prompts_for(2, n=4)
    log = MemoryLog.empty(len(prompts))
    decode(model, prompts, log, sampling=sampling, batch_size=4, lines=[5, 1, 9, 2])
    width = max(len(p) for p in prompts)
    padded = np.zeros((4, width), np.int32)
    for row, p in enumerate(prompts):
        padded[row, : len(p)] = p
    lengths = np.array([len(p) for p in prompts], np.int32)
    new = np.asarray(
        generate(
            cfg, params, padded, max_new_tokens=NEW, prompt_lengths=lengths, sampling=sampling,
            seed=3, request_ids=np.array([5, 1, 9, 2]),
        )
    )  # fmt: skip
    for row in range(4):
        expected = list(new[row])
        if STOP in expected:
            expected = expected[: expected.index(STOP) + 1]
            assert log.finished[row] == "stop"
        else:
            assert log.finished[row] == "length"
        assert log.tokens[row] == expected


def test_finished_requests_are_not_decoded_again(model, tmp_path, monkeypatch):
    prompts = prompts_for(3)
    calls = iter([False, False, True])  # stop after the third step of the first batch
    monkeypatch.chdir(tmp_path)
    with open_wal("wal", len(prompts)) as log:  # a relative path: the caches land beside it
        first = decode(model, prompts, log, stop_token=None, should_stop=lambda: next(calls, False))
    assert (tmp_path / "wal" / "cache" / "snapshot.json").exists()
    shutil.rmtree(tmp_path / "wal")
    calls = iter([False, False, True])
    with open_wal(tmp_path / "wal", len(prompts)) as log:
        first = decode(model, prompts, log, stop_token=None, should_stop=lambda: next(calls, False))
    assert first.preempted and first.decoded == 2 * 3
    with open_wal(tmp_path / "wal", len(prompts)) as log:
        second = decode(model, prompts, log, stop_token=None)
    assert not second.preempted and second.restored == 1 and second.replayed == 0
    assert second.decoded == NEW * len(prompts) - first.decoded
    with open_wal(tmp_path / "wal", len(prompts)) as log:
        third = decode(model, prompts, log, stop_token=None)
    assert third.decoded == third.replayed == third.restored == third.rebuilt == 0
    assert len(log.finished) == len(prompts)


def test_torn_done_record_is_written_again(model, tmp_path):
    """A kill between a stop token's record and its done record: the done record is added."""
    prompts = prompts_for(4)
    tokens, finished, data, _ = uninterrupted(model, prompts, tmp_path)
    assert data[-RECORD_BYTES] == 2  # the log ends with a done record
    directory = tmp_path / "wal"
    with open_wal(directory, len(prompts)):
        pass
    (directory / "tokens.wal").write_bytes(data[: len(data) - RECORD_BYTES])
    with open_wal(directory, len(prompts)) as log:
        outcome = decode(model, prompts, log)
    assert outcome.decoded == 0 and log.finished == finished
    assert (directory / "tokens.wal").read_bytes() == data


def test_bad_logs_are_refused_and_left_untouched(model, tmp_path):
    prompts = prompts_for(5)
    _, _, data, _ = uninterrupted(model, prompts, tmp_path)
    directory = tmp_path / "wal"
    shutil.copytree(tmp_path / "reference", directory)
    path = directory / "tokens.wal"

    def refused(blob, message, n=None):
        path.write_bytes(blob)
        with pytest.raises(ValueError, match=message):
            open_wal(directory, n or len(prompts))
        assert path.read_bytes() == blob

    corrupt = bytearray(data)
    corrupt[3 * RECORD_BYTES + 9] ^= 0x01
    refused(bytes(corrupt), r"tokens.wal: record 3 \(byte 60\): checksum mismatch")
    skipped = data[:RECORD_BYTES] + data[2 * RECORD_BYTES :]  # valid records, one missing
    refused(skipped, r"tokens.wal: record 2 .*expected token 0")
    refused(data, r"record \d+ .*request \d+, but the prompts file has 2", n=2)
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"meta.json: this WAL was written for seed=3"):
        WriteAheadLog.open(
            directory, {**FINGERPRINT, "seed": 4}, num_requests=len(prompts), vocab_size=32
        )
    with pytest.raises(ValueError, match="expected None or an int >= 1"):
        open_wal(directory, len(prompts), fsync_every=0)
    with pytest.raises(ValueError, match=r"no/wal.: its parent .*/no does not exist"):
        open_wal(tmp_path / "no" / "wal", len(prompts))
    with pytest.raises(ValueError, match="is a file"):
        open_wal(path, len(prompts))
    assert path.read_bytes() == data


def test_two_engines_cannot_share_a_log(tmp_path):
    with open_wal(tmp_path / "wal", 3):
        with pytest.raises(ValueError, match=rf"wal/lock: another engine \(pid {os.getpid()}\)"):
            open_wal(tmp_path / "wal", 3)
    with open_wal(tmp_path / "wal", 3):  # released on close
        pass


@pytest.mark.parametrize("every, syncs", [(1, 6), (2, 3), (None, 1)])
def test_fsync_policy(tmp_path, monkeypatch, every, syncs):
    """fsync after every append, every N appends, or only at close (plus the open's own)."""
    log = open_wal(tmp_path / "wal", 5, fsync_every=every)
    calls = []
    monkeypatch.setattr(os, "fsync", calls.append)
    for line in range(5):
        log.append([(line, 0, 1)])
    log.close()
    assert len(calls) == syncs
