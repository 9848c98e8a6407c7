"""Bytes each rank holds for parameters, gradients and optimizer state after one GRPO update,
counted on the real tensors (local shards of DTensors): sharded (HSDP) against unsharded
(benchmarks/hsdp_memory.py prints it; tests/test_hsdp.py checks the half)."""
from __future__ import annotations

import tempfile

import torch


def local_bytes(t: torch.Tensor) -> int:
    """Bytes of this rank's storage of `t` (the local shard of a DTensor)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def held_bytes(trainer) -> dict:
    """Per-rank bytes of the model's parameters, their gradients, the optimizer's state tensors and the sync's buffers."""
    params = list(trainer.model.parameters())
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    sync = trainer.grad_sync
    buffers = list(getattr(sync, "grad_buffers", None) or []) + list(getattr(sync, "param_buffers", None) or [])
    if getattr(sync, "flat", None) is not None:
        buffers.append(sync.flat)
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_bytes(v) for v in state),
            "sync_buffers": sum(local_bytes(b) for b in buffers)}


def measure(rank: int, world: int, assets_root: str, out: str, sharded: bool) -> dict:
    """One GRPO update (gradients kept: zero_grad is skipped for the count), then the bytes this rank holds."""
    from trainer.selfcheck.grpo import build

    trainer = build(rank, world, assets_root, out, "hierarchical", 2, {"max_steps": 1}, sharded)
    trainer.optimizer.zero_grad = lambda set_to_none=True: None  # keep this update's gradients to count them
    trainer.train_step()
    return held_bytes(trainer)


def compare(assets_root: str) -> dict[str, dict]:
    from trainer.distributed.local import spawn_world

    rows = {}
    for name, sharded in (("unsharded (hierarchical)", False), ("shard_within_site", True)):
        per_rank = spawn_world(measure, 4, args=(assets_root, tempfile.mkdtemp(), sharded), timeout_s=600)
        rows[name] = max(per_rank, key=lambda r: r["params"] + r["grads"] + r["optimizer"])  # the largest rank
    return rows
