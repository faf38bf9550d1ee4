#!/usr/bin/env bash
# The diffusion GPU check of DESIGN §5, prepared for a lent H100/H200 (the device tool):
# an SD-1.5-sized random-weight pipeline at 512x512, 20 steps, fp16: the service through gRPC vs
# the same diffusers call in-process (target: the service keeps >= 0.97x the raw it/s).
#
#   scripts/gpu_check.sh wheels   here: fetches the Python 3.12 wheels the device image lacks into .whl/
#   scripts/gpu_check.sh run      there: installs them into /tmp/site and runs the benchmark
#
# With the device tool: run `scripts/gpu_check.sh wheels` first, then
#   run(command="bash scripts/gpu_check.sh run", carry=[".whl"], timeout_s=480)
# The results land in $OUT/gpu_check.txt (and the output's tail).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the device image (Python 3.12, torch 2.11, transformers 5.17) lacks or has too old for
# lumiserve: the versions this project is tested with (constraints.txt).
WHEELS=(
  diffusers==0.42.1 transformers==5.24.0 huggingface_hub==2.4.0 importlib_metadata==10.2.0
  grpcio==1.85.3 grpcio-health-checking==1.85.1 grpcio-reflection==1.85.1 grpcio-status==1.85.1
  protobuf==7.36.2 googleapis-common-protos==1.76.0
)

case "${1:-}" in
  wheels)
    rm -rf .whl && mkdir .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "${WHEELS[@]}"
    du -sh .whl
    ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    out="${OUT:-/tmp}/gpu_check.txt"
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c 'import torch, diffusers, grpc; print("torch", torch.__version__, "diffusers", diffusers.__version__, "grpc", grpc.__version__)'
      python3 benchmarks/bench_diffusion.py --device cuda --sd15-sized --size 512 --steps 20 \
        --threads 4 --repeats 20 --batch-repeats 1
    } 2>&1 | grep -v -e "it/s\]" -e "Warning" | tee "$out"
    ;;
  *)
    echo "usage: scripts/gpu_check.sh wheels|run" >&2
    exit 2
    ;;
esac
