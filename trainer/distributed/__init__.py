"""The real executor of hdc plans over torch.distributed, and what the trainer builds on it.

    groups.py     ProcessGroups: subgroups from plans and the topology's families (cached)
    executor.py   PlanExecutor: runs any Plan (async, deps, triggers, periods, phases, spans)
    grad_sync.py  DistGradientSync (the trainer's GradientSync)
    sharded_optimizer.py  ShardedOptimizer (ZeRO-1 optimizer state)
    launch.py     torchrun per node on real sites, or every rank on this machine; init_from_env
    local.py      spawn_world: a Python function in a world of local processes (tests, benches)
    (the correctness checks run on it live in trainer/selfcheck/)
    cli.py        `hdc launch` (register(subparsers))
"""
import importlib

_EXPORTS = {
    "PlanExecutor": "executor", "DistGradientSync": "grad_sync", "ShardedOptimizer": "sharded_optimizer",
    "ProcessGroups": "groups", "default_backend": "groups",
    "init_distributed": "groups", "DistEnv": "launch", "init_from_env": "launch",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):  # lazy: `hdc launch` must start without importing torch
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainer.distributed.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainer.distributed' has no attribute {name!r}")
