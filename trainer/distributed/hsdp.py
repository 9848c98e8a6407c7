"""`HSDPGradientSync`: FSDP2 shards the model inside each site, the hdc strategy crosses sites.

`distributed.shard_within_site: true`. Every decoder layer (the model's `_no_split_modules`,
transformers' own list of blocks not to split) and then the root are wrapped with
`torch.distributed.fsdp.fully_shard` on a one-dimensional mesh of this rank's site, so
parameters, gradients and AdamW state are DTensors holding 1/ranks-per-site of each tensor
(dim-0 shards, padded to a multiple of the site size; any site size works).

In backward FSDP2 reduce-scatters each layer's gradients inside the site (an average) and
calls the all-reduce hook (`FSDPModule.set_all_reduce_hook`) with that layer's
reduce-scatter output: this rank's padded shard of the layer's gradients, flat, in the
reduce dtype; once per FSDP group, after its reduce-scatter, on FSDP's all-reduce stream;
FSDP itself then divides by nothing more (torch 2.13, `foreach_reduce`). The hook copies it
into its region of one flat shard buffer and fires the plan's bucket. The plan is
`hdc.sync.bucket_plans(strategy, topology, cross_site_groups, group_shard_numels)`: the strategy
over the cross-site groups (rank j of every site) for a buffer of one rank's shard, one bucket
per FSDP group in backward order. For groups of one rank per site, hierarchical's plan is the
WAN all-reduce alone; chunked cuts it into pipelined chunks; compressed sends it on a lossy
wire; local_sgd has no gradient steps there (FSDP2 is its inner sync) and every `every` steps
averages the sites' parameter shards with its outer step. `finish()` waits for the plan,
divides by the sites summed and writes the result into the sharded gradients.

Not supported (refused by the config, hdc.sync.HSDP_REFUSED): flat_ring (no in-site phase to
hand to FSDP2), distributed_optimizer (FSDP2 already shards the optimizer state inside the
site) and streaming_local_sgd (fragment syncs of sharded parameters).
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from hdc.errors import UserError
from hdc.plan import WIRE_OF_ELEMENT_SIZE
from hdc.strategies import Strategy, make_strategy
from hdc.sync import GRAD_DTYPES, SyncPlans, bucket_plans, check_shard_strategy, check_shard_topology
from hdc.topology import Topology
from trainer.distributed.executor import PlanExecutor
from trainer.distributed.grad_sync import DistGradientSync, divergence, outer_step
from trainer.distributed.groups import DEFAULT_TIMEOUT_S, ProcessGroups, wait_work


def padded_shard_numel(shape: Sequence[int], shards: int) -> int:
    """Elements of one rank's FSDP2 shard of a tensor: dim 0 padded to a multiple of `shards`
    (torch fsdp `_get_dim0_padded_size`), divided by `shards`."""
    rows = math.ceil(shape[0] / shards) if shape else 1
    return rows * math.prod(shape[1:])


class _Group:
    """One FSDP group (a fully_shard module's own parameters): its region [start, start + numel)
    of the flat shard buffer, and each parameter's padded slot in it."""

    def __init__(self, params: list[torch.nn.Parameter], start: int, shards: int):
        self.start = start
        self.slots = []  # (param, offset in the flat buffer)
        off = start
        for p in params:
            self.slots.append((p, off))
            off += padded_shard_numel(p.shape, shards)
        self.numel = off - start
        self.copied = False


class HSDPGradientSync:
    """GradientSync of a sharded-inside-sites run (see the module docstring).

    topology, strategy -- the hdc topology and the cross-site strategy (object or name)
    micro_batches      -- backward passes per update: FSDP2 reduces only in the last one
                          (set_requires_gradient_sync), so the hook runs once per update
    grad_dtype         -- 'float32' or 'bfloat16': FSDP2's reduce dtype, so what both the
                          in-site reduce-scatter and the cross-site step send
    """

    # the same world-wide count and launch as the unsharded sync (attributes: groups, rank, timeout_s)
    all_reduce_sum = DistGradientSync.all_reduce_sum
    from_env = classmethod(DistGradientSync.from_env.__func__)
    optimizer_is_sharded = True  # AdamW over DTensor shards: its checkpoint is per rank

    def __init__(self, topology: Topology, strategy: Union[Strategy, str], rank: Optional[int] = None,
                 world_size: Optional[int] = None, *, micro_batches: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None,
                 groups: Optional[ProcessGroups] = None, grad_dtype: str = "float32"):
        self.strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
        check_shard_strategy(self.strategy)
        check_shard_topology(topology)
        if grad_dtype not in GRAD_DTYPES:
            raise UserError(f"grad_dtype: must be one of {', '.join(GRAD_DTYPES)}, got {grad_dtype!r}")
        if micro_batches < 1:
            raise UserError(f"micro_batches: must be >= 1, got {micro_batches}")
        self.groups = groups or ProcessGroups(topology, backend=backend, timeout_s=timeout_s)
        self.topology, self.grad_dtype, self.micro_batches = topology, grad_dtype, micro_batches
        self.rank, self.world_size = self.groups.rank, self.groups.world_size
        if (rank is not None and rank != self.rank) or (world_size is not None and world_size != self.world_size):
            raise UserError(f"rank/world_size: {rank}/{world_size} given but torch.distributed says "
                            f"{self.rank}/{self.world_size}")
        self.timeout_s = self.groups.timeout_s
        self.cross_groups = self.groups.cross_site_ranks()
        self.plans: Optional[SyncPlans] = None
        self.last_spans: list[dict] = []
        self.last_param_spans: list[dict] = []
        self.last_divergence: Optional[float] = None
        self._backward_count = 0

    @property
    def supports_resume(self) -> bool:
        """Like the unsharded sync: local_sgd's outer anchor and momentum are not in checkpoints."""
        return self.plans is None or self.plans.param_sync != "average"

    # ------------------------------------------------------------------ GradientSync
    def attach(self, model: torch.nn.Module) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError("model: has no parameters that require grad")
        self.dtype = params[0].dtype
        if self.dtype == torch.float16 and self.grad_dtype == "float32":  # FSDP2 pre/post-scales fp16 reductions
            raise UserError("model.dtype: float16 with distributed.shard_within_site reduces gradients in float16, "
                            "which FSDP2 scales around the hook; use bfloat16 or float32")
        self._broadcast(model)  # every replica starts from rank 0's weights (as DDP does)
        site = self.groups.my_site()
        site_pgs = [self.groups.get(ranks) for ranks in self.groups.site_ranks()]  # every rank, same order
        self.shards = len(self.groups.site_ranks()[site])
        mesh = _mesh(site_pgs[site], self.groups.device.type)
        reduce_dtype = getattr(torch, self.grad_dtype) if self.grad_dtype != "float32" else self.dtype
        policy = MixedPrecisionPolicy(reduce_dtype=reduce_dtype)
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        self.layers = [m for m in model.modules() if type(m).__name__ in blocks]
        for layer in self.layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        self.model = model
        # flat order = backward's: the last layer's group reduces first, the root's (embeddings) last
        owned, self.fsdp_groups, start = set(), [], 0
        for module in list(reversed(self.layers)) + [model]:
            mine = [p for p in module.parameters() if p.requires_grad and id(p) not in owned]
            owned |= {id(p) for p in mine}
            if mine:
                g = _Group(mine, start, self.shards)
                self.fsdp_groups.append(g)
                start += g.numel
                module.set_all_reduce_hook(self._hook(g))
        wire = WIRE_OF_ELEMENT_SIZE.get(torch.empty(0, dtype=reduce_dtype).element_size(), "fp32")
        self.plans = bucket_plans(self.strategy, self.topology, self.cross_groups,
                                  [g.numel for g in self.fsdp_groups], grad_wire=wire,
                                  param_wire=WIRE_OF_ELEMENT_SIZE.get(params[0].element_size(), "fp32"))
        self._bucket_ranges = []  # plan bucket k: its elements and the FSDP groups that overlap it
        pos = 0
        for n in self.plans.buckets:
            self._bucket_ranges.append([g for g in self.fsdp_groups if g.start < pos + n and pos < g.start + g.numel])
            pos += n
        self._fired: set[int] = set()
        self.divisor = self.plans.grad_divisor(self.rank)
        self.flat = torch.zeros(self.plans.plan.numel, dtype=reduce_dtype, device=self.groups.device)
        plan = self.plans.plan
        self.grad_exec = PlanExecutor(plan, self.groups, timeout_s=self.timeout_s)
        self.param_exec = (PlanExecutor(plan, self.groups, timeout_s=self.timeout_s, kind="dp_param")
                           if self.plans.param_sync else None)
        self._set_gradient_sync()
        self.reload_parameters()

    def after_backward(self, model: torch.nn.Module) -> None:
        self._backward_count += 1
        self._set_gradient_sync()

    def finish(self, step: int) -> None:
        if not self.grad_exec.running:
            self._start()
        for g in self.fsdp_groups:  # a group FSDP did not reduce (no gradient) adds zeros
            if not g.copied:
                self.flat[g.start: g.start + g.numel].zero_()
                g.copied = True
        for k in range(len(self.plans.buckets)):
            self._fire(k)
        self.last_spans = [dict(s, train_step=step) for s in self.grad_exec.wait()]
        self.flat.div_(self.divisor)  # the sites' sum of site means -> the mean over every rank
        with torch.no_grad():
            for g in self.fsdp_groups:
                for p, off in g.slots:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    local = p.grad.to_local()
                    local.copy_(self.flat[off: off + local.numel()].view_as(local))
                g.copied = False
        self._fired = set()
        self._backward_count = 0
        self._set_gradient_sync()

    def after_optimizer_step(self, model: torch.nn.Module, optimizer, step: int) -> None:
        if self.plans.param_sync == "average" and self.plans.param_due(step):
            self._outer_sync(step)

    def flush(self) -> None:
        """Parameter syncs complete on the step they are due (no lagged ones: see hdc.sync.HSDP_REFUSED)."""

    def make_optimizer(self, optimizer_cls, params, **kwargs):
        """The optimizer over the DTensor parameters: its state holds this rank's shards only."""
        return optimizer_cls(params, **kwargs)

    def reload_parameters(self) -> None:
        """local_sgd: the anchor (the shard at the last outer sync, fp32) is the current shard."""
        if self.plans.param_sync != "average":
            return
        self._anchor = self._shard_of_params().float()
        self._momentum = torch.zeros_like(self._anchor)  # the outer SGD's momentum buffer

    @contextlib.contextmanager
    def full_parameters(self, model: torch.nn.Module):
        """Every rank holds the full parameters inside the block: generation runs the model a
        different number of times on each rank, so the per-forward all-gathers of FSDP2 (one
        collective per layer and call) cannot pair up. One all-gather per group here instead."""
        modules = [model] + self.layers
        for m in modules:
            m.unshard()
        for layer in self.layers:
            layer.set_reshard_after_forward(False, recurse=False)
        try:
            yield model
        finally:
            for layer in self.layers:
                layer.set_reshard_after_forward(True, recurse=False)
            for m in modules:
                m.reshard()

    # ------------------------------------------------------------------ internals
    def _set_gradient_sync(self) -> None:
        """FSDP2 reduces (and calls the hook) only in the backward of an update's last micro-batch;
        before it, the gradients accumulate unsharded (torch's no_sync)."""
        self.model.set_requires_gradient_sync(self._backward_count == self.micro_batches - 1)

    def _hook(self, g: _Group):
        def hook(reduce_output: torch.Tensor) -> None:
            if reduce_output.numel() != g.numel:
                raise RuntimeError(f"hdc: FSDP reduced {reduce_output.numel()} gradient elements for a group the "
                                   f"plan sized at {g.numel} (a parameter without a gradient?)")
            if not self.grad_exec.running:
                self._start()
            self.flat[g.start: g.start + g.numel].copy_(reduce_output)
            g.copied = True
            for k, overlapping in enumerate(self._bucket_ranges):
                if all(o.copied for o in overlapping):
                    self._fire(k)
        return hook

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self.grad_exec.start(self.flat, 0, "grad", t0=self._t0)

    def _fire(self, k: int) -> None:
        if k not in self._fired:
            self._fired.add(k)
            self.grad_exec.fire(f"bucket:{k}")

    def _shard_of_params(self) -> torch.Tensor:
        """This rank's parameter shards in the flat layout (padding zeros), in the parameters' dtype."""
        flat = torch.zeros(self.plans.plan.numel, dtype=self.dtype, device=self.groups.device)
        for g in self.fsdp_groups:
            for p, off in g.slots:
                local = p.detach().to_local().reshape(-1)
                flat[off: off + local.numel()].copy_(local)
        return flat

    def _shard_to_params(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for g in self.fsdp_groups:
                for p, off in g.slots:
                    local = p.to_local()
                    local.copy_(flat[off: off + local.numel()].view_as(local))

    def _outer_sync(self, step: int) -> None:
        """The sites average their shards: the plan's parameter steps sum the pseudo-gradients
        (anchor - shard), then the outer step on the anchor (grad_sync.outer_step, as unsharded)."""
        local = self._shard_of_params().float()
        delta = (self._anchor - local).to(self.dtype)
        self.last_param_spans = [dict(s, train_step=step) for s in self.param_exec.run(delta, step, "param")]
        mean = delta.float() / self.plans.param_divisor(self.rank)
        whole = [(0, self.plans.plan.numel)]
        self.last_divergence = divergence(local, self._anchor, mean, whole)
        outer_step(self._anchor, self._momentum, mean, whole, self.plans.outer)
        self._shard_to_params(self._anchor.to(self.dtype))

    def _broadcast(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for p in model.parameters():
                wait_work(dist.broadcast(p.data, src=0, group=self.groups.world(), async_op=True), self.timeout_s,
                          "parameter broadcast over the world")


def _mesh(pg, device_type: str):
    """A one-dimensional DeviceMesh over this rank's site group (hdc's own process group)."""
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(pg, device_type)
