#!/usr/bin/env bash
# GPU check of the real executor on NCCL: every strategy against hdc's reference, then
# timings, with world size = number of GPUs on this machine (sites emulated inside the box:
# 2 GPUs -> 2 sites x 1, 4 -> 2 x 2, 8 -> 2 x 4; other counts -> one site).
#   bash benchmarks/gpu_check.sh            (from anywhere; uses .venv/bin/python if present)
# Skips with a message (exit 0) where no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi

N="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)"
if [ "${N:-0}" -lt 1 ]; then
    echo "gpu_check: skip: no GPU visible to torch (torch.cuda.device_count() == 0)"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: $N GPU(s): $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sort | uniq -c | xargs)"
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", torch.cuda.nccl.version())'

export HDC_BACKEND=nccl
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

echo "== correctness: every strategy case on NCCL, world $N =="
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc-per-node="$N" -m trainer.distributed.checks

echo "== timings: real executor vs torch all_reduce on NCCL, world $N =="
if [ "$N" -lt 2 ]; then
    echo "(one GPU: every group has one member, so the plans move no data; timings show executor overhead only)"
fi
timeout 300 "$PY" benchmarks/real_collectives.py --backend nccl --world "$N" \
    --sizes 1MiB 16MiB 128MiB --repeats 10 --spans
echo "gpu_check: done"
