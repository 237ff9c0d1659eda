"""Text in, text out: what `longctx generate` runs (the flags are parsed in cli.py).

    generate_file("runs/quickstart", "in.jsonl", "out.jsonl", max_new_tokens=64,
                  sampling=sampling_from(temperature=0.8, top_p=0.9), seed=0)

IN.jsonl holds one request a line, `{"id": ..., "prompt": "..."}` (blank lines are skipped);
OUT.jsonl gets one `{"id": ..., "completion": "..."}` per request, in the input's order. Text is
encoded with the byte vocabulary (data/vocab.py) and the `max_new_tokens` new tokens are decoded
back (invalid UTF-8 is replaced). Requests run `batch_size` rows at a time; every batch is padded
to the same rows and prompt width (the longest prompt in the file), so `generate` compiles once
per file.

A request's sampling noise is keyed by its 0-based line index in the file (`generate`'s
`request_ids`), so its completion does not depend on the batch size or on the other requests in
its batch. The output is written to a temporary file that is renamed at the end: a failed run
leaves no half-written OUT.jsonl, and every input error is raised before anything is generated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from longctx_jax import checks
from longctx_jax.data import vocab
from longctx_jax.inference import engine
from longctx_jax.inference.generate import generate
from longctx_jax.inference.sampling import Sampling
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.inference.wal import WriteAheadLog


@dataclasses.dataclass(frozen=True)
class Request:
    """One line of IN.jsonl: its id, its prompt and its 0-based line index (its sampling key)."""

    id: str | int
    prompt: str
    line: int


def read_requests(path) -> list[Request]:
    """The requests of a JSONL file; ValueError naming the file and line for a line that is not a
    JSON object with an `id` (string or integer, unique in the file) and a non-empty `prompt`
    string, or for a file without requests."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the prompts file ({error})") from None
    requests, seen = [], {}
    for index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:{index + 1}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f'{where}: expected an object {{"id": ..., "prompt": "..."}}')
        missing = [key for key in ("id", "prompt") if key not in record]
        if missing:
            raise ValueError(f"{where}: no {' or '.join(repr(k) for k in missing)} field")
        request_id, prompt = record["id"], record["prompt"]
        if not (isinstance(request_id, str) or checks.is_int(request_id)):
            raise ValueError(f"{where}: id={request_id!r}: expected a string or an integer")
        if request_id in seen:
            raise ValueError(
                f"{where}: id={request_id!r} is already the id of line {seen[request_id] + 1}"
            )
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{where}: prompt={prompt!r}: expected a non-empty string")
        seen[request_id] = index
        requests.append(Request(request_id, prompt, index))
    if not requests:
        raise ValueError(f"{path}: no requests (expected one JSON object a line)")
    return requests


def sampling_from(temperature=None, top_k=None, top_p=None) -> Sampling | None:
    """None (greedy) when no field is given; else a checked `Sampling` (temperature 1 when only
    top_k / top_p are given; temperature 0 is greedy)."""
    if temperature is None and top_k is None and top_p is None:
        return None
    return Sampling(1.0 if temperature is None else temperature, top_k, top_p).validate()


def encode_prompts(model_config, prompts: list[str]) -> list[np.ndarray]:
    """The byte tokens of each prompt; ValueError for a model without the byte vocabulary, no
    prompts, or an empty one."""
    if model_config.vocab_size != vocab.VOCAB_SIZE:
        raise ValueError(
            f"model.vocab_size={model_config.vocab_size}: expected {vocab.VOCAB_SIZE} (prompts "
            "and completions are byte-level text)"
        )
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    encoded = [vocab.encode(p) for p in prompts]
    empty = [i for i, tokens in enumerate(encoded) if tokens.size == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty: expected at least one byte")
    return encoded


def complete(
    model_config,
    params,
    prompts: list[str],
    *,
    max_new_tokens: int,
    request_ids=None,
    sampling: Sampling | None = None,
    cache: CacheSpec | None = None,
    seed: int = 0,
    batch_size: int = 16,
    stop_token: int | None = None,
    progress: bool = False,
) -> list[str]:
    """The completions (text of `max_new_tokens` new tokens, cut before any `stop_token`) of
    text `prompts`.

    `params` as `DecoderLM.apply` takes them (`{"params": ...}`). `request_ids` (default
    0, 1, ...) key each prompt's sampling noise. All batches have min(batch_size, len(prompts))
    rows and the longest prompt's width (padding rows are dropped), so this compiles once.
    """
    checks.check_positive_int("generate", "max_new_tokens", max_new_tokens)
    checks.check_positive_int("generate", "batch_size", batch_size)
    encoded = encode_prompts(model_config, prompts)
    n = len(prompts)
    request_ids = np.arange(n) if request_ids is None else np.asarray(request_ids)
    if request_ids.shape != (n,):
        raise ValueError(f"request_ids has shape {request_ids.shape}: expected ({n},)")
    lengths = np.array([tokens.size for tokens in encoded], np.int32)
    rows, width = min(batch_size, n), int(lengths.max())

    # The batch holding the longest prompt runs first: `generate` refuses a prompt that does
    # not fit the cache before compiling, so such a request fails before any work is done.
    starts = list(range(0, n, rows))
    first = int(lengths.argmax()) // rows * rows
    starts.remove(first)
    starts.insert(0, first)

    completions: list[str | None] = [None] * n
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        stop = min(start + rows, n)
        tokens_BP = np.zeros((rows, width), np.int32)
        lengths_B = np.ones((rows,), np.int32)  # padding rows: one token, thrown away
        ids_B = np.zeros((rows,), np.int32)
        for row, i in enumerate(range(start, stop)):
            tokens_BP[row, : lengths[i]] = encoded[i]
            lengths_B[row] = lengths[i]
            ids_B[row] = request_ids[i]
        new_BT = generate(
            model_config,
            params,
            tokens_BP,
            max_new_tokens=max_new_tokens,
            prompt_lengths=lengths_B,
            sampling=sampling,
            cache=cache,
            seed=seed,
            request_ids=ids_B,
        )
        new_BT = np.asarray(new_BT)
        for row, i in enumerate(range(start, stop)):
            completions[i] = completion_text(new_BT[row], stop_token)
    return completions


def completion_text(tokens, stop_token: int | None) -> str:
    """The text of new tokens, up to (not including) the first `stop_token`."""
    tokens = [int(t) for t in tokens]
    if stop_token in tokens:
        tokens = tokens[: tokens.index(stop_token)]
    return vocab.decode(np.asarray(tokens, np.int32))


def _load(workdir, step):
    from longctx_jax.run import load_model

    model_config, params = load_model(workdir, step)
    return model_config, {"params": params}


def _check_options(max_new_tokens, sampling, cache, seed, batch_size, stop_token=None):
    checks.check_positive_int("generate", "max_new_tokens", max_new_tokens)
    checks.check_positive_int("generate", "batch_size", batch_size)
    if stop_token is not None:
        checks.check_int("generate", "stop_token", stop_token, minimum=0, below=vocab.VOCAB_SIZE)
    # `generate` keys the noise with an int32 seed.
    checks.check_int("generate", "seed", seed, minimum=-(2**31), below=2**31)
    if sampling is not None:
        sampling.validate()
    (cache or CacheSpec()).validate()


def generate_text(
    workdir,
    prompt: str,
    *,
    max_new_tokens: int,
    step: int | None = None,
    sampling: Sampling | None = None,
    cache: CacheSpec | None = None,
    seed: int = 0,
    stop_token: int | None = None,
) -> str:
    """The completion of one prompt (request id 0) by the run in `workdir` at `step`."""
    _check_options(max_new_tokens, sampling, cache, seed, 1, stop_token)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt={prompt!r}: expected a non-empty string")
    model_config, params = _load(workdir, step)
    (completion,) = complete(
        model_config,
        params,
        [prompt],
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        cache=cache,
        seed=seed,
        stop_token=stop_token,
    )
    return completion


def generate_file(
    workdir,
    prompts_file,
    out,
    *,
    max_new_tokens: int,
    step: int | None = None,
    sampling: Sampling | None = None,
    cache: CacheSpec | None = None,
    seed: int = 0,
    batch_size: int = 16,
    stop_token: int | None = None,
    wal=None,
    wal_fsync_every: int | None = 1,
    should_stop=None,
    progress: bool = False,
) -> int:
    """Writes `out` (JSONL, one completion per request of `prompts_file`, in its order) with the
    run in `workdir` at `step`; returns the number of requests. Every input is checked (options,
    the whole prompts file, the checkpoint) before anything is generated, and `out` appears only
    once complete.

    With `wal` (a directory) the requests run through the resumable engine (engine.py, wal.py):
    when `should_stop()` turns true it saves the running batch's caches, logs, and raises
    `Preempted`; calling again with the same arguments resumes and writes exactly what an
    uninterrupted call writes, without decoding finished requests again."""
    _check_options(max_new_tokens, sampling, cache, seed, batch_size, stop_token)
    out = Path(out)
    if out.exists() and out.resolve() == Path(prompts_file).resolve():
        raise ValueError(f"out={str(out)!r}: is the prompts file; expected another path")
    if out.is_dir():
        raise ValueError(f"out={str(out)!r}: is a directory; expected a file path")
    requests = read_requests(prompts_file)
    model_config, params = _load(workdir, step)
    options = dict(
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        cache=cache,
        seed=seed,
        batch_size=batch_size,
        stop_token=stop_token,
    )
    prompts = [r.prompt for r in requests]
    if wal is None:
        completions = complete(
            model_config,
            params,
            prompts,
            request_ids=[r.line for r in requests],
            progress=progress,
            **options,
        )
    else:
        completions = _complete_with_wal(
            model_config, params, requests, wal, wal_fsync_every, should_stop, progress, options
        )
    lines = [
        json.dumps({"id": r.id, "completion": c}, ensure_ascii=False) + "\n"
        for r, c in zip(requests, completions, strict=True)
    ]
    _write_atomically(out, "".join(lines))
    return len(requests)


class Preempted(Exception):
    """`generate_file` stopped on request; its WAL holds everything needed to resume."""

    def __init__(self, outcome: engine.Outcome, wal):
        super().__init__(
            f"preempted after {outcome.decoded} new tokens; the running batch's caches and the "
            f"log are in {wal}; rerun the same command to resume"
        )
        self.outcome = outcome


def _complete_with_wal(
    model_config, params, requests, wal, fsync_every, should_stop, progress, options
):
    """The completions of `requests` decoded through the WAL in directory `wal`."""
    encoded = encode_prompts(model_config, [r.prompt for r in requests])
    sampling, cache = options["sampling"], options["cache"] or CacheSpec()
    fingerprint = {
        "model_sha256": _params_digest(model_config, params),
        "requests_sha256": hashlib.sha256(
            json.dumps([[r.id, r.prompt, r.line] for r in requests]).encode()
        ).hexdigest(),
        "requests": len(requests),
        **{k: v for k, v in options.items() if k not in ("sampling", "cache")},
        "sampling": None if sampling is None else dataclasses.asdict(sampling.validate()),
        "cache": dataclasses.asdict(cache.validate()),
    }
    with WriteAheadLog.open(
        wal,
        fingerprint,
        num_requests=len(requests),
        vocab_size=vocab.VOCAB_SIZE,
        fsync_every=fsync_every,
    ) as log:
        outcome = engine.decode_requests(
            model_config,
            params,
            encoded,
            log=log,
            lines=[r.line for r in requests],
            should_stop=should_stop,
            progress=progress,
            **options,
        )
    if outcome.preempted:
        raise Preempted(outcome, wal)
    return [completion_text(tokens, options["stop_token"]) for tokens in log.tokens]


def _params_digest(model_config, params) -> str:
    """sha256 of the model config and every parameter's bytes: which model a WAL belongs to."""
    config = model_config.to_json_best_effort(sort_keys=True).encode()
    return engine.leaves_digest(jax.tree.leaves(params), prefix=config)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
