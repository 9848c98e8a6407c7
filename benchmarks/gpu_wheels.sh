#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels benchmarks/gpu_check.sh installs on a GPU
# machine that has none: what the GPU image (torch 2.11+cu130, transformers 5.17, accelerate,
# safetensors, pandas, pyyaml, ... ; docs/distributed.md) lacks for hdc's trainer and TRL's
# GRPOTrainer. --no-deps: nothing the image already has (torch above all) is fetched again.
#   bash benchmarks/gpu_wheels.sh [--python-version 3.11] [--platform manylinux_2_28_x86_64]
# Writes wheels/ (ignored by git; 56 MB for python 3.11, pyarrow alone 55 MB: within the 64 MiB a GPU run may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.11
PLATFORM=manylinux_2_28_x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYV="$2"; shift 2 ;;
        --platform) PLATFORM="$2"; shift 2 ;;
        *) echo "gpu_wheels: unknown option $1 (allowed: --python-version X.Y, --platform TAG)" >&2; exit 2 ;;
    esac
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --platform "$PLATFORM" \
    --implementation cp -d wheels/ \
    trl==1.16.0 datasets==5.2.0 pyarrow==26.0.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 \
    fsspec==2026.9.0 math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 simpy==4.1.2
du -sh wheels/
