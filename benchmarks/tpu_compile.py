"""Compiles the TPU flash-attention kernels ahead of time for v5e, v6e and v5p from this host and
writes the compiled memory analysis to docs/figures/tpu_compile.json (needs libtpu, no TPU).

    JAX_PLATFORMS=cpu python benchmarks/tpu_compile.py
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from longctx_jax.provenance import write_results  # noqa: E402
from pallas_kernels.flash_attention.tpu_compile import compile_for_tpu  # noqa: E402

TOPOLOGIES = ("v5e:2x2", "v6e:2x2", "v5p:2x2x1")


def main(out="docs/figures/tpu_compile.json"):
    rows = []
    for topology in TOPOLOGIES:
        for head_dim in (64, 128):
            for length in (8192, 32768):
                row = compile_for_tpu(topology, length=length, head_dim=head_dim)
                rows.append(row)
                print(
                    f"{topology:10s} L={length:6d} H={head_dim:3d} blocks={row['blocks']} "
                    f"kernels={row['mosaic_kernels']} compile={row['compile_seconds']:5.1f}s "
                    f"temp={row['temp_bytes'] / 2**20:8.1f} MiB "
                    f"args={row['argument_bytes'] / 2**20:7.1f} MiB",
                    flush=True,
                )
    write_results(out, {"rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
