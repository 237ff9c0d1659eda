"""Shared pytest set-up: 8 simulated CPU devices, CPU only, and a fresh random seed per test."""

import os

# Before JAX starts: multi-device tests run on 8 simulated CPU devices, and an installed libtpu or
# CUDA plugin must not claim a device. JAX_PLATFORMS=cuda pytest ... runs a test file on a GPU.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (installed for the ahead-of-time TPU compile tests) is loaded by each test worker: let
# several processes load it, and skip its TPU host discovery.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")

import numpy as np
import pytest


@pytest.fixture
def seed() -> int:
    """A fresh random seed per test, printed (shown on failure); replay with LONGCTX_TEST_SEED=."""
    fixed = os.environ.get("LONGCTX_TEST_SEED")
    value = int(fixed) if fixed else int(np.random.default_rng().integers(2**32))
    print(f"seed={value} (replay: LONGCTX_TEST_SEED={value})")
    return value
