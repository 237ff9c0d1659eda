"""Prefill, decode and `generate` (DESIGN §6): a model, its parameters and per-layer caches.

    new_tokens = generate(model_config, params, prompts, max_new_tokens=64,
                          prompt_lengths=lengths, sampling=Sampling(temperature=0.8, top_p=0.9),
                          cache=CacheSpec(policy="sinks", capacity=512, bits=8), seed=0)

Prompts are left-aligned int32 [B, P]; row b's prompt is its first `prompt_lengths[b]` tokens
(the rest is padding: segment id PAD, never attended to or written). Prefill feeds the prompt
through `DecoderLM.extend` in chunks of `chunk_size` tokens (None: all at once); each row's first
new token is sampled from the logits at its own last prompt token; decode then feeds one token
per step, each row at its own position, so rows of different lengths never wait on each other
and never see each other. Everything after the arguments are checked runs under one `jax.jit`
(prefill, then a `lax.scan` over the new tokens).

`cached_logits` runs the same cache path teacher-forced over given tokens (logits at every
position): what the tests compare with the full forward, and what streaming perplexity uses.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from longctx_jax import checks
from longctx_jax.inference.cache import PAD
from longctx_jax.inference.layout import allocate, resolve_spec
from longctx_jax.inference.sampling import Sampling, sample
from longctx_jax.inference.spec import CacheSpec
from longctx_jax.model.transformer import DecoderLM, freeze_model_config


def generate(
    model_config,
    params,
    prompts,
    *,
    max_new_tokens: int,
    prompt_lengths=None,
    sampling: Sampling | None = None,
    cache: CacheSpec | None = None,
    seed: int = 0,
    request_ids=None,
    chunk_size: int | None = None,
) -> jax.Array:
    """New tokens int32 [B, max_new_tokens] (module docstring). `params`: the model's variables
    ({"params": ...}) or the parameter tree itself (what `run.load_model` returns).
    `request_ids` int [B] (default the row index) name each request's sampling noise: a request
    gives the same tokens alone or in any batch at any row."""
    cfg = freeze_model_config(model_config)
    params = as_variables(params)
    prompts, prompt_lengths = _check_prompts(cfg, prompts, prompt_lengths)
    checks.check_positive_int("generate", "max_new_tokens", max_new_tokens)
    spec = (cache or CacheSpec()).validate()
    if sampling is not None:
        sampling = sampling.validate()
    b, p = prompts.shape
    max_length = p + max_new_tokens
    check_fits(cfg, spec, int(prompt_lengths.max()) + max_new_tokens, max_length)
    chunk = _check_chunk(chunk_size, p)
    if request_ids is None:
        request_ids = np.arange(b, dtype=np.int32)
    request_ids = jnp.asarray(request_ids, jnp.int32)
    if request_ids.shape != (b,):
        raise ValueError(f"request_ids has shape {request_ids.shape}: expected [batch] = ({b},)")
    return _generate(
        cfg,
        spec,
        sampling,
        chunk,
        max_new_tokens,
        params,
        prompts,
        prompt_lengths,
        request_ids,
        jnp.asarray(seed, jnp.int32),
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _generate(cfg, spec, sampling, chunk, steps, params, prompts, lengths, request_ids, seed):
    b, p = prompts.shape
    model = DecoderLM(cfg)
    caches = allocate(cfg, b, spec, p + steps)
    last, caches = prefill_prompts(model, params, caches, prompts, lengths, chunk)

    def step(carry, i):
        last_logits, caches = carry
        position = lengths + i
        token = sample(
            last_logits, seed=seed, request_ids=request_ids, positions=position, sampling=sampling
        )
        return decode_step(model, params, caches, token, position), token

    _, tokens = jax.lax.scan(step, (last, caches), jnp.arange(steps, dtype=jnp.int32))
    return tokens.T


def prefill_prompts(model, params, caches, prompts, lengths, chunk: int):
    """(logits float32 [B, V] at each row's last prompt token, caches) after feeding the prompts
    `chunk` tokens at a time: how every generation starts."""
    logits, caches = _prefill(model, params, caches, prompts, lengths, chunk)
    return jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0], caches


def decode_step(model, params, caches, tokens, positions):
    """(logits float32 [B, V] after, caches): one token int32 [B] per row fed at its position."""
    logits, caches = model.apply(
        params,
        tokens[:, None],
        positions=positions[:, None],
        segment_ids=jnp.zeros((tokens.shape[0], 1), jnp.int32),
        caches=caches,
        method="extend",
    )
    return logits[:, 0], caches


def _prefill(model, params, caches, tokens, lengths, chunks: int | tuple[int, ...]):
    """Logits float32 [B, P, V] of the prompt, fed in chunks (a size, or sizes in turn with the
    last repeated: the repeats run as one `lax.scan`, so one compiled step serves them all);
    the caches after it."""
    b, p = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    segment_ids = jnp.where(positions < lengths[:, None], 0, PAD).astype(jnp.int32)
    *leading, size = chunks if isinstance(chunks, tuple) else (chunks,)

    def extend(caches, part):
        return model.apply(
            params,
            tokens[:, part],
            positions=positions[:, part],
            segment_ids=segment_ids[:, part],
            caches=caches,
            method="extend",
        )

    outputs, start = [], 0
    for lead in leading:
        if start < p:
            logits, caches = extend(caches, slice(start, min(start + lead, p)))
            outputs.append(logits)
            start += lead
    repeats = max(p - start, 0) // size
    if repeats > 1:

        def step(caches, i):
            index = start + i * size + jnp.arange(size)
            logits, caches = model.apply(
                params,
                tokens[:, index],
                positions=positions[:, index],
                segment_ids=segment_ids[:, index],
                caches=caches,
                method="extend",
            )
            return caches, logits

        caches, logits = jax.lax.scan(step, caches, jnp.arange(repeats))
        outputs.append(jnp.moveaxis(logits, 0, 1).reshape(b, repeats * size, -1))
        start += repeats * size
    while start < p:
        logits, caches = extend(caches, slice(start, min(start + size, p)))
        outputs.append(logits)
        start += size
    return jnp.concatenate(outputs, axis=1), caches


def cached_logits(
    model_config,
    params,
    tokens,
    *,
    cache: CacheSpec | None = None,
    chunk_size=1,
    lengths=None,
    max_length: int | None = None,
    return_caches: bool = False,
):
    """Logits float32 [B, T, V] of `tokens` int [B, T] fed through the cache `chunk_size` tokens
    at a time, or a tuple of chunk sizes in turn (the last repeated), teacher-forced; `lengths`
    [B] marks the rest of each row as padding; `return_caches` also returns the caches after;
    `max_length` (default T) is the length the caches are built for (RoPE's `rope_length`)."""
    cfg = freeze_model_config(model_config)
    params = as_variables(params)
    tokens, lengths = _check_prompts(cfg, tokens, lengths)
    spec = (cache or CacheSpec()).validate()
    t = tokens.shape[1]
    max_length = t if max_length is None else max_length
    check_fits(cfg, spec, int(lengths.max()), max_length)
    if isinstance(chunk_size, list | tuple):
        chunks = tuple(_check_chunk(size, t) for size in chunk_size)
    else:
        chunks = _check_chunk(chunk_size, t)
    logits, caches = _cached_logits(cfg, spec, chunks, max_length, params, tokens, lengths)
    return (logits, caches) if return_caches else logits


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _cached_logits(cfg, spec, chunk, max_length, params, tokens, lengths):
    caches = allocate(cfg, tokens.shape[0], spec, max_length)
    return _prefill(DecoderLM(cfg), params, caches, tokens, lengths, chunk)


def as_variables(params) -> dict:
    """{"params": tree} whether given the variables or the bare parameter tree."""
    return params if "params" in params else {"params": params}


def cache_logits_fn(model_config, cache: CacheSpec | None = None, chunk_size=1):
    """An eval `LogitsFn` (params, tokens [B, T], positions [B, T]) -> logits, computed through
    the cache (`cached_logits`): what the task evaluators' scorers take, so any evaluation can
    run under a cache policy. `positions` must be 0..T-1 (the cache numbers tokens itself)."""
    cfg = freeze_model_config(model_config)
    spec = (cache or CacheSpec()).validate()

    def logits_fn(params, tokens, positions):
        del positions
        b, t = tokens.shape
        caches = allocate(cfg, b, spec, t)
        lengths = jnp.full((b,), t, jnp.int32)
        chunks = chunk_size if isinstance(chunk_size, tuple) else min(chunk_size, t)
        return _prefill(DecoderLM(cfg), {"params": params}, caches, tokens, lengths, chunks)[0]

    return logits_fn


def _check_prompts(cfg, prompts, prompt_lengths):
    prompts = np.asarray(prompts) if not isinstance(prompts, jax.Array) else prompts
    if prompts.ndim != 2 or not jnp.issubdtype(prompts.dtype, jnp.integer):
        raise ValueError(
            f"prompts has shape {prompts.shape} and dtype {prompts.dtype}: expected int "
            "[batch, len]"
        )
    b, p = prompts.shape
    if b < 1 or p < 1:
        raise ValueError(f"prompts has shape {prompts.shape}: expected at least one token per row")
    if prompt_lengths is None:
        prompt_lengths = np.full((b,), p, np.int32)
    prompt_lengths = np.asarray(prompt_lengths)
    if prompt_lengths.shape != (b,) or not np.issubdtype(prompt_lengths.dtype, np.integer):
        raise ValueError(
            f"prompt_lengths has shape {prompt_lengths.shape}: expected int [batch] = ({b},)"
        )
    if prompt_lengths.min() < 1 or prompt_lengths.max() > p:
        raise ValueError(
            f"prompt_lengths {prompt_lengths.tolist()}: expected each in [1, prompt width {p}]"
        )
    host = np.asarray(prompts)
    if host.min() < 0 or host.max() >= cfg.vocab_size:
        raise ValueError(
            f"prompts hold token ids in [{host.min()}, {host.max()}]: expected ids in "
            f"[0, vocab_size={cfg.vocab_size})"
        )
    return jnp.asarray(prompts, jnp.int32), jnp.asarray(prompt_lengths, jnp.int32)


def check_fits(cfg, spec: CacheSpec, needed: int, max_length: int) -> None:
    """ValueError, before compiling, when a "full" cache cannot hold the sequence."""
    spec = resolve_spec(cfg, spec, max_length)
    if spec.policy == "full" and spec.capacity < needed and cfg.attention.kind != "linear":
        raise ValueError(
            f"cache.capacity={spec.capacity}: a prompt plus new tokens of {needed} tokens does "
            "not fit a cache without eviction; expected capacity >= that, or an evicting policy"
        )


def _check_chunk(chunk_size, length: int) -> int:
    if chunk_size is None:
        return length
    checks.check_positive_int("generate", "chunk_size", chunk_size)
    return min(chunk_size, length)
