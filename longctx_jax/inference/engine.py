"""A decode loop that can be stopped at any token and resumed to exactly the same output.

    outcome = decode_requests(model_config, params, prompts, lines=lines, max_new_tokens=64,
                              stop_token=10, sampling=Sampling(0.8), seed=0, batch_size=16,
                              log=WriteAheadLog.open(...), should_stop=preemption.requested)

Requests run in fixed batches of `batch_size` rows, in order (batch k holds requests k*rows ..
(k+1)*rows - 1), every batch padded to the same rows and prompt width, so a resumed batch runs the
very computations an uninterrupted one does. A step samples one token per unfinished row
(`sample`, keyed by (seed, line, position): the sampler has no other state), appends it to the
log, then feeds it (`decode_step`, one compiled function for every step). A row is done at
`stop_token` or after `max_new_tokens` tokens; the batch ends when every row is done.

`should_stop()` is asked after every step. When it says yes, the batch's caches are saved beside
the WAL (orbax, with a checksum: they hold the prompt and every token but the last one logged) and
the call returns `preempted=True`. Resuming a batch, the engine takes the WAL as the truth:

- a saved cache that matches (this batch, fewer tokens fed than every unfinished row has logged,
  checksum equal) is restored, and the logged tokens it lacks are fed;
- otherwise -- no cache, a stale or corrupt one: the "fatal error" case -- the prompts are
  prefilled again and every logged token is fed again, one step at a time through the same
  `decode_step`, so the rebuilt cache is bitwise the one the uninterrupted run had (a chunked
  prefill of the logged tokens would be cheaper but differs in the last bits, which can flip a
  near-tie later);
- tokens already logged are never sampled again, and finished requests are never decoded again.

Without a WAL (`log=MemoryLog(n)`) a preemption loses every unfinished request: what the
regenerate-from-scratch strategies of experiments/preemption_bias.py start from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from longctx_jax.inference.generate import as_variables, check_fits, decode_step, prefill_prompts
from longctx_jax.inference.layout import allocate
from longctx_jax.inference.sampling import Sampling, sample
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.model.transformer import DecoderLM, freeze_model_config


@dataclasses.dataclass
class MemoryLog:
    """The log interface of `WriteAheadLog` (tokens, finished, append, sync), in memory only."""

    tokens: list[list[int]]
    finished: dict[int, str]
    directory: Path | None = None

    @classmethod
    def empty(cls, num_requests: int) -> MemoryLog:
        return cls([[] for _ in range(num_requests)], {})

    def append(self, tokens=(), done=()) -> None:
        for line, index, token in tokens:
            assert index == len(self.tokens[line]), (line, index)
            self.tokens[line].append(int(token))
        self.finished.update(done)

    def sync(self) -> None:
        pass


@dataclasses.dataclass
class Outcome:
    """What one call did. `decoded`: tokens sampled; `prefilled`: prompt tokens prefilled;
    `replayed`: logged tokens fed again on resuming, to bring a restored or rebuilt cache up to
    the log (each row's last logged token is not counted: an uninterrupted run feeds it next
    anyway); `restored`: batches resumed from a saved cache; `rebuilt`: batches resumed by
    prefilling again (the reason for each in `notes`)."""

    preempted: bool
    decoded: int = 0
    prefilled: int = 0
    replayed: int = 0
    restored: int = 0
    rebuilt: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)


def decode_requests(
    model_config,
    params,
    prompts: list[np.ndarray],
    *,
    max_new_tokens: int,
    log,
    lines=None,
    stop_token: int | None = None,
    sampling: Sampling | None = None,
    cache: CacheSpec | None = None,
    seed: int = 0,
    batch_size: int = 16,
    should_stop: Callable[[], object] | None = None,
    progress: bool = False,
) -> Outcome:
    """Decodes every request of `prompts` (int token arrays) not finished in `log` (a
    `WriteAheadLog` or `MemoryLog`, indexed by request position); `lines` (default 0..n-1) key
    each request's sampling noise. Completions land in `log.tokens` / `log.finished`."""
    cfg = freeze_model_config(model_config)
    params = as_variables(params)
    spec = (cache or CacheSpec()).validate()
    n = len(prompts)
    lines = np.arange(n) if lines is None else np.asarray(lines)
    rows = min(batch_size, n)
    width = max(len(p) for p in prompts)
    check_fits(cfg, spec, width + max_new_tokens, width + max_new_tokens)
    outcome = Outcome(preempted=False)
    starts = range(0, n, rows)
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        members = list(range(start, min(start + rows, n)))
        if all(i in log.finished for i in members):
            continue
        batch = _Batch(cfg, spec, sampling, stop_token, max_new_tokens, rows, width, seed)
        batch.load(prompts, lines, members)
        if batch.run(params, log, start // rows, should_stop, outcome):
            outcome.preempted = True
            break
    log.sync()
    return outcome


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _start(cfg, spec, max_length, params, prompts, lengths):
    caches = allocate(cfg, prompts.shape[0], spec, max_length)
    return prefill_prompts(DecoderLM(cfg), params, caches, prompts, lengths, prompts.shape[1])


@functools.partial(jax.jit, static_argnums=(0,))
def _feed(cfg, params, caches, tokens, positions):
    return decode_step(DecoderLM(cfg), params, caches, tokens, positions)


@functools.partial(jax.jit, static_argnums=(0,))
def _sample(sampling, logits, seed, request_ids, positions):
    return sample(
        logits, seed=seed, request_ids=request_ids, positions=positions, sampling=sampling
    )


class _Batch:
    """One batch of `rows` requests (padding rows are done from the start)."""

    def __init__(self, cfg, spec, sampling, stop_token, max_new_tokens, rows, width, seed):
        self.cfg, self.spec, self.sampling = cfg, spec, sampling
        self.stop_token, self.max_new_tokens, self.seed = stop_token, max_new_tokens, seed
        self.prompts = np.zeros((rows, width), np.int32)
        self.lengths = np.ones((rows,), np.int32)
        self.ids = np.zeros((rows,), np.int32)
        self.members: list[int | None] = [None] * rows

    def load(self, prompts, lines, members) -> None:
        for row, i in enumerate(members):
            self.prompts[row, : len(prompts[i])] = prompts[i]
            self.lengths[row] = len(prompts[i])
            self.ids[row] = lines[i]
            self.members[row] = i

    def run(self, params, log, index: int, should_stop, outcome: Outcome) -> bool:
        """Decodes this batch to the end (False) or until `should_stop` (True, caches saved)."""
        self._close_finished(log)
        active = self._active(log)
        if not active:
            return False
        logged = min(len(log.tokens[i]) for i in active)
        caches, fed, logits = self._resume(params, log, index, logged, outcome)
        for step in range(fed, logged):  # logged tokens the cache lacks: fed, not sampled
            logits, caches = self._replay(params, caches, log, step, outcome)
        for step in range(logged, self.max_new_tokens):
            tokens = self._next_tokens(logits, log, step, outcome)
            if not self._active(log):
                return False
            if should_stop is not None and should_stop():
                log.sync()
                self._save(log.directory, index, step, caches)
                return True
            logits, caches = _feed(
                self.cfg, params, caches, tokens, jnp.asarray(self.lengths + step)
            )
        return False

    def _active(self, log) -> list[int]:
        """The batch's requests not finished in `log`."""
        return [i for i in self.members if i is not None and i not in log.finished]

    @property
    def _max_length(self) -> int:
        """The length the caches are built for: prompt width + new tokens."""
        return self.prompts.shape[1] + self.max_new_tokens

    def _close_finished(self, log) -> None:
        """Done records for rows whose logged tokens end them (a kill can tear the done record
        off the token record it was written with)."""
        done = []
        for i in self._active(log):
            if not log.tokens[i]:
                continue
            if log.tokens[i][-1] == self.stop_token:
                done.append((i, "stop"))
            elif len(log.tokens[i]) >= self.max_new_tokens:
                done.append((i, "length"))
        log.append((), done)

    def _next_tokens(self, logits, log, step: int, outcome: Outcome) -> np.ndarray:
        """Token `step` of every row (logged, else sampled and logged); done records for rows that
        stop here."""
        missing = [i for i in self._active(log) if len(log.tokens[i]) == step]
        sampled = None
        if missing:
            positions = jnp.asarray(self.lengths + step)
            sampled = np.asarray(_sample(self.sampling, logits, self.seed, self.ids, positions))
        tokens = np.zeros_like(self.lengths)
        new, done = [], []
        for row, i in enumerate(self.members):
            if i is None or i in log.finished:
                continue
            if i in missing:
                tokens[row] = sampled[row]
                new.append((i, step, int(sampled[row])))
            else:
                tokens[row] = log.tokens[i][step]
            if len(log.tokens[i]) <= step + 1 and (
                tokens[row] == self.stop_token or step + 1 == self.max_new_tokens
            ):
                done.append((i, "stop" if tokens[row] == self.stop_token else "length"))
        log.append(new, done)
        outcome.decoded += len(new)
        return tokens

    def _replay(self, params, caches, log, step: int, outcome: Outcome):
        """Feeds logged token `step` of every row that has one (a resumed cache catching up)."""
        tokens = np.zeros_like(self.lengths)
        for row, i in enumerate(self.members):
            if i is not None and step < len(log.tokens[i]):
                tokens[row] = log.tokens[i][step]
                outcome.replayed += step < len(log.tokens[i]) - 1
        return _feed(
            self.cfg, params, caches, jnp.asarray(tokens), jnp.asarray(self.lengths + step)
        )

    def _resume(self, params, log, index: int, logged: int, outcome: Outcome):
        """(caches, tokens fed, logits or None): a saved cache when one fits, else a prefill."""
        if logged > 0:
            caches, fed, why = self._restore(log.directory, index, logged)
            if caches is not None:
                outcome.restored += 1
                return caches, fed, None
            outcome.rebuilt += 1
            outcome.notes.append(f"batch {index}: {why}; prefilled again")
        prompts, lengths = jnp.asarray(self.prompts), jnp.asarray(self.lengths)
        logits, caches = _start(self.cfg, self.spec, self._max_length, params, prompts, lengths)
        active = set(self._active(log))
        outcome.prefilled += sum(
            int(self.lengths[row]) for row, i in enumerate(self.members) if i in active
        )
        return caches, 0, logits

    def _save(self, directory: Path | None, index: int, fed: int, caches) -> None:
        """The batch's caches (every logged token but the last fed) beside the WAL, replacing any
        older ones: written to cache.partial/, then renamed to cache/."""
        if directory is None:
            return
        partial, final = directory / "cache.partial", directory / "cache"
        shutil.rmtree(partial, ignore_errors=True)
        leaves = jax.tree.leaves(caches)
        _checkpointer().save(partial / "leaves", leaves)
        info = {"batch": index, "fed": fed, "sha256": leaves_digest(leaves)}
        (partial / "snapshot.json").write_text(json.dumps(info) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)

    def _restore(self, directory: Path | None, index: int, logged: int):
        """(caches, fed, None) from a saved cache that fits, else (None, 0, why not)."""
        path = None if directory is None else directory / "cache"
        if path is None or not (path / "snapshot.json").exists():
            return None, 0, "no saved cache"
        try:
            info = json.loads((path / "snapshot.json").read_text())
            batch, fed = info["batch"], info["fed"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, 0, f"{path / 'snapshot.json'} unreadable ({error})"
        if batch != index or not 0 <= fed < logged:
            return None, 0, f"the saved cache is of batch {batch} at token {fed}: stale"
        import orbax.checkpoint as ocp

        template = allocate(self.cfg, self.prompts.shape[0], self.spec, self._max_length)
        expected = jax.tree.leaves(template)
        restore = ocp.args.PyTreeRestore(
            item=expected, restore_args=ocp.checkpoint_utils.construct_restore_args(expected)
        )
        try:
            leaves = _checkpointer().restore(path / "leaves", args=restore)
        except Exception as error:  # orbax raises many types; any means "rebuild"
            return None, 0, f"{path} unreadable ({type(error).__name__})"
        if leaves_digest(leaves) != info.get("sha256"):
            return None, 0, f"{path}: checksum mismatch (corrupt)"
        return jax.tree.unflatten(jax.tree.structure(template), leaves), fed, None


@functools.cache
def _checkpointer():
    """One synchronous orbax checkpointer for the process (each new one starts an event loop)."""
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer()


def leaves_digest(leaves, prefix: bytes = b"") -> str:
    """sha256 of `prefix` and every array's bytes, in order: what a saved cache (and a WAL's
    model) is checked against."""
    digest = hashlib.sha256(prefix)
    for leaf in leaves:
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()
