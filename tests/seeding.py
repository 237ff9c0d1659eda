"""Test seeds (DESIGN.md §3 "Deterministic tests"): fixed by default, random only when asked.

LONGCTX_TEST_SEED unset (or empty): each seed is crc32 of a stable key (a test's node id), so tests
differ from each other but the same code is green or red on every run.
LONGCTX_TEST_SEED=random: a fresh random seed per key (printed, so a failure can be replayed).
LONGCTX_TEST_SEED=<int>: that seed for every key (replays a printed seed).
"""

from __future__ import annotations

import os
import zlib

import numpy as np

ENV = "LONGCTX_TEST_SEED"


def seed_for(key: str) -> int:
    """The seed for `key` under LONGCTX_TEST_SEED (see the module docstring); printed."""
    setting = os.environ.get(ENV, "").strip()
    if not setting:
        value = zlib.crc32(key.encode())
    elif setting.lower() == "random":
        value = int(np.random.default_rng().integers(2**32))
    else:
        try:
            value = int(setting)
        except ValueError:
            raise ValueError(
                f"{ENV}={setting!r}: expected unset (fixed seeds), 'random' or an integer"
            ) from None
        if not 0 <= value < 2**32:
            raise ValueError(f"{ENV}={setting!r}: expected an integer in [0, 2**32)")
    print(f"{key}: seed={value} (replay: {ENV}={value})")
    return value
