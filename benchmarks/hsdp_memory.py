"""Bytes each rank holds for parameters, gradients and optimizer state, with and without
`distributed.shard_within_site` (FSDP2 inside each site), measured on the real tensors after one
GRPO update on 2 sites x 2 ranks (CPU, gloo):

    .venv/bin/python benchmarks/hsdp_memory.py [--full-size]

Parameters and gradients are counted as this rank's storage (a DTensor's local shard), the
optimizer state as every tensor in AdamW's state; the sync's own buffers (gradient buckets of
the unsharded sync, the flat shard buffer of the sharded one) are a separate column. The
reference model (beta > 0) is not counted: it is a full copy on every rank either way.
"""
from __future__ import annotations

import argparse
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
    from trainer.distributed.checks_grpo import build

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full-size", action="store_true", help="the 3.3M-parameter tiny model (default: the small test model)")
    args = ap.parse_args()
    from trainer.testing import tiny_assets

    assets = tiny_assets(sft_steps=1, small=not args.full_size, num_train=200)
    rows = compare(str(assets.root))
    print(f"{'per rank (largest), bytes':28s} {'params':>11s} {'grads':>11s} {'optimizer':>11s} {'p+g+opt':>11s} "
          f"{'sync buffers':>13s}")
    for name, r in rows.items():
        total = r["params"] + r["grads"] + r["optimizer"]
        print(f"{name:28s} {r['params']:11,d} {r['grads']:11,d} {r['optimizer']:11,d} {total:11,d} {r['sync_buffers']:13,d}")
    base, hsdp = (sum(r[k] for k in ("params", "grads", "optimizer")) for r in rows.values())
    print(f"sharded / unsharded (params + grads + optimizer): {hsdp / base:.3f}  (2 ranks per site: 0.5 is ideal)")


if __name__ == "__main__":
    main()
