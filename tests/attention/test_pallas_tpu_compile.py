"""The TPU kernels compile ahead of time with Mosaic's real compiler for v5e, v6e and v5p.

Needs libtpu (a test dependency) but no TPU: `jax.experimental.topologies` describes the slice,
and lowering for its devices selects the compiled kernel, not interpret mode. Mosaic rejects
tiling mistakes that interpret mode accepts; the last test shows it does.
"""

import dataclasses

import pytest

from pallas_kernels.flash_attention import tpu
from pallas_kernels.flash_attention.tpu_compile import compile_for_tpu


@pytest.mark.parametrize(
    "topology,head_dim", [("v5e:2x2", 128), ("v6e:2x2", 64), ("v5p:2x2x1", 128)]
)
def test_forward_and_backward_compile_for_tpu(topology, head_dim):
    stats = compile_for_tpu(topology, length=4096, head_dim=head_dim)
    print(stats)
    assert stats["mosaic_kernels"] == 3, stats  # forward, dQ and dK/dV, all compiled
    assert stats["blocks"] == (512, 512)
    # O(L) state, never the L x L matrix (4096^2 f32 logits of one head alone are 64 MiB); the
    # per-row statistics are stored lane-dense (a [T, 1] layout would add 4 * 128 bytes per row).
    assert 0 < stats["temp_bytes"] < 32 * 2**20, stats


def test_mosaic_rejects_a_64_wide_key_block(monkeypatch):
    """Without our own check, Mosaic's compiler refuses key blocks that are not 128-lane tiles."""
    unchecked = dataclasses.replace(
        tpu.BACKEND, blocks=lambda t, s, h, bq, bkv, backward: (bq, bkv)
    )
    monkeypatch.setattr(tpu, "BACKEND", unchecked)
    with pytest.raises(ValueError, match="divisible by 8 and 128"):
        compile_for_tpu("v5e:2x2", length=1024, block_q=128, block_kv=64)
