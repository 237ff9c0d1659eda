"""Shared pytest set-up: 8 simulated CPU devices, CPU only, a fixed seed per test (seeding.py)."""

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

import pytest
from seeding import seed_for


@pytest.fixture
def seed(request) -> int:
    """A fixed seed per test (crc32 of its node id), printed (shown on failure).

    LONGCTX_TEST_SEED=random draws a fresh one; LONGCTX_TEST_SEED=<int> replays a printed seed.
    """
    return seed_for(request.node.nodeid)
