"""Checks of DistGradientSync inside a world: data-parallel gradients, the sharded optimizer
and local SGD against single-process training on the concatenated batch.

Each function runs on every rank and returns a list of result dicts; the tests assert on
them. A small nn.Linear stack is the model; rank r trains on rows [r·B, (r+1)·B) of a batch
every rank can rebuild from a seed, and every rank also trains the single-process
reference on the whole batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from hdc.strategies import Chunked, DistributedOptimizer, FlatRing, Hierarchical, LocalSGD
from trainer.selfcheck.executor import topology_for_world
from trainer.distributed.grad_sync import DistGradientSync, model_sync_plans
from trainer.distributed.groups import ProcessGroups

ROWS_PER_RANK = 4


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def make_batch(world: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(world * ROWS_PER_RANK, 5, generator=g), torch.randn(world * ROWS_PER_RANK, 3, generator=g)


def _local_backward(model, sync, x, y, micro_batches: int) -> None:
    for xm, ym in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = nn.functional.mse_loss(model(xm), ym) / micro_batches
        loss.backward()
        sync.after_backward(model)


def _rows(rank: int, t: torch.Tensor) -> torch.Tensor:
    return t[rank * ROWS_PER_RANK:(rank + 1) * ROWS_PER_RANK]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def gradient_cases(rank: int, world: int) -> list[dict]:
    """Averaged gradients after finish() equal the full-batch gradient (1 and 2 micro-batches)."""
    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    x, y = make_batch(world, 0)
    ref = make_model()
    nn.functional.mse_loss(ref(x), y).backward()
    ref_grads = [p.grad.clone() for p in ref.parameters()]
    out = []
    strategies = [("flat_ring", FlatRing()), ("hierarchical", Hierarchical()),
                  ("chunked", Chunked(Hierarchical(), chunks=3)),
                  ("distributed_optimizer", DistributedOptimizer())]
    for name, strategy in strategies:
        for micro_batches in (1, 2):
            model = make_model()
            sync = DistGradientSync(topo, strategy, rank, world, groups=groups, bucket_cap_bytes=256,
                                    micro_batches=micro_batches)
            sync.attach(model)
            _local_backward(model, sync, _rows(rank, x), _rows(rank, y), micro_batches)
            sync.finish(0)
            err = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), ref_grads))
            out.append({"case": name, "micro_batches": micro_batches, "rank": rank, "max_err": err,
                        "buckets": len(sync.buckets), "spans": len(sync.last_spans),
                        "plan_is_sync_plans": sync.plans.plan.steps == model_sync_plans(
                            strategy, topo, [list(range(world))], make_model(), 256).plan.steps,
                        "first_start_s": min(sp["start_s"] for sp in sync.last_spans),
                        "finish_called_s": sync.last_finish_s,
                        "span_keys": sorted(sync.last_spans[0]) if sync.last_spans else []})
    total = sync.all_reduce_sum([1.0, float(rank)])
    out.append({"case": "all_reduce_sum", "rank": rank, "value": total})
    return out


def grad_dtype_cases(rank: int, world: int) -> list[dict]:
    """distributed.grad_dtype: bf16 buckets send half the bytes and average to within bf16's precision."""
    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    x, y = make_batch(world, 0)
    ref = make_model()
    nn.functional.mse_loss(ref(x), y).backward()
    out = []
    for grad_dtype in ("float32", "bfloat16"):
        model = make_model()
        sync = DistGradientSync(topo, Hierarchical(), rank, world, groups=groups, bucket_cap_bytes=256,
                                grad_dtype=grad_dtype)
        sync.attach(model)
        _local_backward(model, sync, _rows(rank, x), _rows(rank, y), 1)
        sync.finish(0)
        rel = max(float((p.grad - r.grad).abs().max() / r.grad.abs().max()) for p, r in zip(model.parameters(),
                                                                                          ref.parameters()))
        out.append({"grad_dtype": grad_dtype, "rank": rank, "max_rel_err": rel,
                    "bytes": sum(sp["bytes"] for sp in sync.last_spans),
                    "grad_dtypes": sorted({str(p.grad.dtype) for p in model.parameters()}),
                    "wires": sorted({sync.plans.plan.wire(st) for st in sync.plans.plan.steps})})
    return out


def sharded_adamw_cases(rank: int, world: int, steps: int = 3) -> list[dict]:
    """ZeRO-1 AdamW over owned shards == single-process AdamW on the full batch."""
    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    out = []
    for name, strategy in [("distributed_optimizer", DistributedOptimizer()),
                           ("distributed_optimizer-flat", DistributedOptimizer(hierarchical=False)),
                           ("chunked-distopt", Chunked(DistributedOptimizer(), chunks=3))]:
        model, ref = make_model(), make_model()
        sync = DistGradientSync(topo, strategy, rank, world, groups=groups, bucket_cap_bytes=512)
        sync.attach(model)
        opt = sync.shard_optimizer(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
        norm_err = 0.0
        for step in range(steps):
            x, y = make_batch(world, step)
            _local_backward(model, sync, _rows(rank, x), _rows(rank, y), 1)
            sync.finish(step)
            nn.functional.mse_loss(ref(x), y).backward()
            ref_norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in ref.parameters()])))
            norm_err = max(norm_err, abs(opt.grad_norm() - ref_norm))
            opt.step()
            sync.after_optimizer_step(model, opt, step)
            opt.zero_grad()
            ref_opt.step()
            ref_opt.zero_grad()
        err = float((_flat(model) - _flat(ref)).abs().max())
        moved = float((_flat(model) - _flat(make_model())).abs().max())
        out.append({"case": name, "rank": rank, "max_err": err, "moved": moved, "grad_norm_err": norm_err,
                    "shard_numel": opt.shard.numel(), "total_numel": _flat(model).numel(),
                    "state_numel": sum(v.numel() for s in opt.state.values() for v in s.values()
                                       if torch.is_tensor(v) and v.dim() > 0)})
    return out


def local_sgd_cases(rank: int, world: int, steps: int = 4) -> list[dict]:
    """Local SGD: sites drift between syncs, agree after each one; the outer step is DiLoCo's."""
    topo = topology_for_world(world)
    groups = ProcessGroups(topo, timeout_s=60)
    out = []
    for outer_lr, momentum in ((1.0, 0.0), (0.7, 0.5)):
        model = make_model()
        sync = DistGradientSync(topo, LocalSGD(Hierarchical(), every=2, outer_lr=outer_lr, outer_momentum=momentum),
                                rank, world, groups=groups, bucket_cap_bytes=512)
        sync.attach(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        anchor, mom_buf = _flat(model).clone(), None
        for step in range(steps):
            x, y = make_batch(world, 100 + step)
            _local_backward(model, sync, _rows(rank, x), _rows(rank, y), 1)
            sync.finish(step)
            opt.step()
            before = _flat(model)
            every = [torch.empty_like(before) for _ in range(world)]
            dist.all_gather(every, before)
            sync.after_optimizer_step(model, opt, step)
            opt.zero_grad()
            after = _flat(model)
            sync_step = step % 2 == 0
            expected_err = None
            if sync_step:  # ranks of a site are equal, so the mean over ranks is the mean over sites
                avg = torch.stack(every).mean(0)
                delta = anchor - avg
                mom_buf = delta if mom_buf is None else momentum * mom_buf + delta
                step_dir = delta + momentum * mom_buf if momentum > 0 else delta
                expected = anchor - outer_lr * step_dir
                expected_err = float((after - expected).abs().max())
                anchor = expected
            now = [torch.empty_like(after) for _ in range(world)]
            dist.all_gather(now, after)
            spread = max(float((t - after).abs().max()) for t in now)
            out.append({"case": f"local_sgd(lr={outer_lr},m={momentum})", "rank": rank, "step": step,
                        "sync_step": sync_step, "divergence": sync.last_divergence,
                        "expected_err": expected_err, "spread": spread,
                        "param_spans": len(sync.last_param_spans) if sync_step else None})
    return out


def all_cases(rank: int, world: int) -> dict:
    return {"grads": gradient_cases(rank, world), "adamw": sharded_adamw_cases(rank, world),
            "grad_dtype": grad_dtype_cases(rank, world),
            "local_sgd": local_sgd_cases(rank, world)}
