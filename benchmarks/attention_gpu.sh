#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and JAX for CUDA installed: compile the Pallas GPU kernel for real,
# check it against the float64 reference (forward and gradients), then time it against cuDNN and
# XLA (bf16, causal, 32768 tokens per measurement) for head_dim 64 and 128.
#   benchmarks/attention_gpu.sh OUTDIR [test|bench64|bench128 ...]   (default: all three)
set -euo pipefail
out=${1:?usage: benchmarks/attention_gpu.sh OUTDIR [test] [bench64] [bench128]}
shift
steps=${*:-test bench128 bench64}
py=${PYTHON:-python3}
mkdir -p "$out"
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
for step in $steps; do
  case $step in
    test)
      JAX_PLATFORMS=cuda "$py" -m pytest -q -p no:cacheprovider -x \
        tests/attention/test_attention_pallas.py -k gpu 2>&1 | tee "$out/gpu_tests.log" ;;
    bench64 | bench128)
      dim=${step#bench}
      "$py" -c 'from longctx_jax.cli import run; run()' bench attention \
        --impls=xla,cudnn,pallas_gpu --dtype=bfloat16 --batch=0 --heads=$((2048 / dim)) \
        --head_dim="$dim" --lengths=4096,8192,16384,32768 --repeats=10 \
        --workdir="$out/h$dim" 2>&1 | grep -v "it/s\]$" | tee "$out/bench_h$dim.log" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
