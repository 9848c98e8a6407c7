"""Correctness checks and harnesses shipped with hdc, clearly apart from the code they check.

    executor.py  every strategy's plan on the real executor against hdc.reference and against
                 torch's all_reduce; `python -m trainer.selfcheck.executor` under `hdc launch`
                 or torchrun checks a new cluster (benchmarks/gpu_check.sh runs it on NCCL)
    sync.py      DistGradientSync against single-process training (gradients, ZeRO-1, local SGD)
    grpo.py      data-parallel (and sharded) GRPO against single-process GRPO
    assets.py    tiny local models and data, built once per process (nothing is downloaded)
    runs.py      whole `hdc train` runs as subprocesses: start, kill -9, resume, compare

The tests (tests/) and benchmarks (benchmarks/) import these; they never import each other.
"""
