"""Exact top-k as a native CPU custom call (`native/topk_cpu.cc`, radix selection per row).

`make venv` compiles the library into this folder (`make native` rebuilds it). `native_topk`
calls it through `jax.ffi` when the computation runs on a CPU, and the pure-JAX threshold search
(`threshold.py`) on any other platform, so a selection written with method="native" runs
everywhere and gives the same keys: the k best visible scores, ascending indices, ties to the
lowest index, subnormal scores compared as 0.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from longctx_jax.attention.sparse.threshold import compact_words, topk_words

LIBRARY = Path(__file__).with_name("libtopk_cpu.so")
TARGET = "longctx_topk_cpu"


@functools.cache
def _register() -> None:
    if not LIBRARY.exists():
        raise RuntimeError(
            f"{LIBRARY} is missing: method='native' needs the compiled CPU top-k "
            "(run `make native`, which needs g++)"
        )
    library = ctypes.cdll.LoadLibrary(str(LIBRARY))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.LongctxTopK), platform="cpu")


def native_topk(scores_RS, k: int):
    """(indices int32 [R, k] ascending, valid bool [R, k]) of each row's k best visible scores."""
    scores_RS = jnp.asarray(scores_RS, jnp.float32)
    r, s = scores_RS.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= s:
        raise ValueError(f"k={k!r}: expected an int in [1, {s}]")

    def on_cpu(scores):
        _register()
        shapes = (jax.ShapeDtypeStruct((r, k), jnp.int32), jax.ShapeDtypeStruct((r, k), jnp.bool_))
        return jax.ffi.ffi_call(TARGET, shapes, vmap_method="sequential")(scores)

    def elsewhere(scores):
        return compact_words(topk_words(scores, k), k)

    return lax.platform_dependent(scores_RS, cpu=on_cpu, default=elsewhere)
