"""One function decides what a training step's data-parallel sync does, for every executor.

`sync_plans(strategy, topology, groups, param_numels, bucket_cap_numel)` is called by the
simulator's step model (`simulator.step`, with a workload's per-rank parameters) and by the
trainer's `DistGradientSync` (with the model's parameters): bucketing, chunking, periods, the
wire format of every step and what each rank's optimizer owns are decided here, once, so a
prediction and a run execute the same plan step for step and byte for byte.

What the executors read from the result, instead of asking which strategy made it:
  owned(rank)            the regions of the buffer this rank's optimizer updates (all of it,
                         or its shards when the gradient steps reduce-scatter)
  grad_divisor(rank)     how many ranks' gradients are summed into them (sum -> mean)
  param_sync             None, 'gather' (parameter steps hand each owner's updated shards to
                         the others) or 'average' (they sum replicas across sites: the trainer
                         sums pseudo-gradients and applies `outer`, DiLoCo's outer step)
  param_divisor(rank)    replicas summed by the parameter steps ('average')
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from hdc.errors import UserError
from hdc.plan import WIRE_BYTES, Plan, merge_intervals
from hdc.strategies import OuterStep, Strategy
from hdc.topology import Topology

GRAD_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}  # distributed.grad_dtype -> wire format


def bucket_numels(param_numels: Sequence[int], cap_numel: int) -> list[int]:
    """Gradient buckets over parameters in production order (backward's: last layer first):
    a new bucket starts when the next parameter would push this one over `cap_numel`, so a
    bucket never splits a parameter and one larger than the cap is a bucket of its own
    (torch DDP's bucket_cap_mb rule)."""
    if cap_numel < 1:
        raise UserError(f"bucket cap: must be >= 1 element, got {cap_numel}")
    out: list[int] = []
    cur = 0
    for n in param_numels:
        if cur and cur + n > cap_numel:
            out.append(cur)
            cur = 0
        cur += n
    if cur or not out:
        out.append(cur)
    return out


@dataclass(frozen=True)
class SyncPlans:
    """The plan of one training step's sync and what it means for the optimizer."""
    plan: Plan                        # 'grad' steps (bucket triggers) and 'param' steps (after the optimizer)
    buckets: tuple[int, ...]          # elements of each gradient bucket, production order ('bucket:k')
    outer: Optional[OuterStep]        # the outer step on averaged replicas (lr, momentum, alpha)

    def owned(self, rank: int) -> list[tuple[int, int]]:
        return self.plan.owned_regions(rank)

    def sharded(self, rank: int) -> bool:
        return sum(n for _, n in self.owned(rank)) < self.plan.numel

    def grad_divisor(self, rank: int) -> int:
        return max(self.plan.contributors(rank, "grad"), 1)

    @property
    def param_steps(self) -> list:
        return [s for s in self.plan.steps if s.phase == "param"]

    @property
    def param_sync(self) -> Optional[str]:
        ops = {s.op for s in self.param_steps}
        if not ops:
            return None
        return "average" if "all_reduce" in ops or "reduce_scatter" in ops else "gather"

    def param_divisor(self, rank: int) -> int:
        return max(self.plan.contributors(rank, "param"), 1)

    def param_due(self, train_step: int) -> bool:
        return any(s.active(train_step) for s in self.param_steps)

    def due_regions(self, rank: int, train_step: int) -> list[tuple[int, int]]:
        """The buffer regions the parameter steps due at `train_step` cover for `rank`, merged:
        all of it for local_sgd, one fragment for streaming_local_sgd."""
        return merge_intervals((o, o + n) for s in self.param_steps if s.active(train_step)
                               for g, (o, n) in zip(s.groups, s.regions) if rank in g and n > 0)

    @property
    def period(self) -> int:
        return max((s.period for s in self.param_steps), default=1)


def sync_plans(strategy: Strategy, topology: Topology, groups: Sequence[Sequence[int]],
               param_numels: Sequence[int], bucket_cap_numel: int, grad_wire: str = "fp32",
               param_wire: Optional[str] = None) -> SyncPlans:
    """The sync of one training step: `strategy` over data-parallel `groups`, for a per-rank
    gradient buffer made of parameters of `param_numels` elements (production order),
    bucketed at `bucket_cap_numel`. Steps the strategy leaves without a wire format send
    `grad_wire` ('grad' phase) or `param_wire` ('param' phase; default grad_wire)."""
    return bucket_plans(strategy, topology, groups, bucket_numels(param_numels, bucket_cap_numel), grad_wire,
                        param_wire)


def bucket_plans(strategy: Strategy, topology: Topology, groups: Sequence[Sequence[int]],
                 buckets: Sequence[int], grad_wire: str = "fp32", param_wire: Optional[str] = None) -> SyncPlans:
    """sync_plans once the buckets are known (sizes in production order)."""
    for name, w in (("grad_wire", grad_wire), ("param_wire", param_wire or grad_wire)):
        if w not in WIRE_BYTES:
            raise UserError(f"{name}: must be one of {', '.join(WIRE_BYTES)}, got {w!r}")
    groups = [sorted(g) for g in groups]
    plan, triggers = strategy.sync_plan(topology, groups, list(buckets), WIRE_BYTES[grad_wire])
    wires = {"grad": grad_wire, "param": param_wire or grad_wire}
    plan.steps = [s if s.wire else replace(s, wire=wires[s.phase]) for s in plan.steps]
    return SyncPlans(plan, tuple(triggers), strategy.outer_optimizer())


# With distributed.shard_within_site, FSDP2 does every step inside a site (reduce-scatter of
# gradients, all-gather of parameters) and the strategy plans only the cross-site step, over
# the cross-site groups (rank j of every site) and a buffer of one rank's shard.
HSDP_REFUSED = {
    "flat_ring": "one ring over every rank has no in-site phase for FSDP2 to do; use hierarchical",
    "distributed_optimizer": "FSDP2 already shards the optimizer state inside each site; use hierarchical",
    "streaming_local_sgd": "fragment syncs of sharded parameters are not supported yet; use local_sgd",
}


def check_shard_strategy(strategy: Strategy, path: str = "distributed.shard_within_site") -> None:
    """A UserError naming `path` if `strategy` (or a strategy it wraps) cannot run on FSDP2 shards."""
    s: Optional[Strategy] = strategy
    while s is not None:
        if s.name in HSDP_REFUSED:
            raise UserError(f"{path}: true does not work with strategy {strategy.describe()} "
                            f"({s.name}: {HSDP_REFUSED[s.name]})")
        s = getattr(s, "inner", None)


def check_shard_topology(topology: Topology) -> None:
    """Sharding inside sites needs the same number of ranks in every site (rank j of each site
    holds the same shard, so the cross-site groups sum like shards), at least 2 (something to
    shard). FSDP2 pads dim 0 to a multiple of the site size, so no site size is refused for
    the shapes of a model."""
    sizes = [len(topology.site_gpus(s)) for s in range(len(topology.sites))]
    if len(set(sizes)) > 1 or sizes[0] < 2:
        raise UserError(f"distributed.shard_within_site: every site needs the same number of ranks, at least 2; "
                        f"topology {topology.name} has {', '.join(map(str, sizes))}")
