#!/usr/bin/env bash
# GPU check, one script (<= 8 minutes on one H200): the GRPO trainer on cuda, its step time
# against TRL's GRPOTrainer, then the real executor on NCCL.
#   1. `hdc train` of recipes/tiny-arith.yaml on cuda for 30 steps: reward rises, tokens/s;
#      the trainer's GPU options (bf16, checkpointing, bf16 offloaded reference) placed right;
#   2. GRPO s/step, hdc vs TRL, same Qwen2-shaped model (hidden 896, 24 layers, random init,
#      built here), same batch and generation length, HF generation, bf16 on both; the ratio;
#   3. every strategy against hdc's reference on NCCL, then timings, with world size = number
#      of GPUs here (2 GPUs -> 2 sites x 1, 4 -> 2 x 2, 8 -> 2 x 4; other counts -> one site).
#   bash benchmarks/gpu_check.sh            (from anywhere; uses .venv/bin/python if present)
# Packages the GPU image lacks (trl, datasets, math-verify, simpy, ...) are installed from
# wheels/ (no index) into .gpu-site/, never over the image's torch: fetch them beforehand with
# benchmarks/gpu_wheels.sh (docs/distributed.md). Without wheels/ the TRL comparison is skipped.
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

# ---- packages from carried wheels (no index on the GPU machine), kept out of the image's site-packages
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "wheels/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-deps --no-index --target .gpu-site wheels/*.whl
    export PYTHONPATH="$PWD/.gpu-site:$PYTHONPATH"
fi
"$PY" -c 'import transformers; print("transformers", transformers.__version__)'
HDC=("$PY" -m trainer.cli)   # the trainer's commands without installing hdc (no entry points needed)
WORK="$(mktemp -d -t hdc-gpu-check-XXXXXX)"

echo "== 1. hdc train recipes/tiny-arith.yaml on cuda, 30 steps =="
timeout 60 "${HDC[@]}" make-tiny-model --out "$WORK/tiny" >/dev/null
timeout 30 "${HDC[@]}" make-arith-data --out "$WORK/arith" >/dev/null
timeout 90 "${HDC[@]}" sft --model "$WORK/tiny" --data "$WORK/arith/sft.jsonl" --out "$WORK/tiny-sft" \
    --set max_steps=1000 --set device=cuda
timeout 150 "${HDC[@]}" train recipes/tiny-arith.yaml --out "$WORK/run" --no-progress \
    --set model.name_or_path="$WORK/tiny-sft" --set data.train_file="$WORK/arith/train.jsonl" \
    --set data.eval_file="$WORK/arith/heldout.jsonl" --set model.device=cuda --set grpo.max_steps=30 \
    --set grpo.eval_steps=null --set grpo.save_steps=30
timeout 20 "$PY" benchmarks/gpu_trainer_check.py summary "$WORK/run"
echo "-- the trainer's GPU options: bf16, gradient checkpointing, bf16 reference offloaded to the CPU"
timeout 90 "$PY" benchmarks/gpu_trainer_check.py options

echo "== 2. GRPO step time, hdc vs TRL, Qwen2-shaped model (hidden 896, 24 layers), bf16 =="
if "$PY" -c 'import trl, datasets' 2>/dev/null; then
    timeout 240 "$PY" benchmarks/grpo_step.py --device cuda --bf16 --shape qwen2-0.5b --steps 8 --warmup 3
else
    echo "(trl/datasets not importable: bring wheels/ (benchmarks/gpu_wheels.sh); hdc alone:)"
    timeout 120 "$PY" benchmarks/grpo_step.py --device cuda --bf16 --shape qwen2-0.5b --steps 6 --warmup 2 --no-trl
fi

export HDC_BACKEND=nccl
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"

echo "== 3. correctness: every strategy case on NCCL, world $N =="
timeout 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node="$N" -m trainer.selfcheck.executor

echo "== 3. timings: real executor vs torch all_reduce on NCCL, world $N =="
if [ "$N" -lt 2 ]; then
    echo "(one GPU: every group has one member, so the plans move no data; timings show executor overhead only)"
fi
timeout 60 "$PY" benchmarks/real_collectives.py --backend nccl --world "$N" \
    --sizes 1MiB 16MiB 128MiB --repeats 10 --spans
echo "gpu_check: done"
