"""`DistGradientSync`: the trainer's GradientSync over torch.distributed, driven by a plan.

Gradients are flattened into buckets (parameters in reverse registration order, the order
backward produces them, as DDP does). A post-accumulate-grad hook on every parameter counts
the gradients of its bucket; on the micro-batch that syncs, the bucket is copied into its
flat buffer as soon as it is complete and the executor is told `fire('bucket:k')`, so its
collectives overlap the rest of backward. `finish(step)` fires what is left, waits, and
writes the averaged gradients (sum / DP group size) back into `param.grad`.

Strategies:
  flat_ring, hierarchical, chunked  all-reduce semantics (chunked: one bucket per chunk)
  distributed_optimizer             reduce-scatter: each rank owns shards of every bucket.
                                    With `shard_optimizer(...)` the optimizer state is truly
                                    sharded and `after_optimizer_step` all-gathers the params;
                                    without it, finish() also all-gathers the gradients.
  local_sgd                         gradients averaged inside the site every step; every
                                    `every` steps `after_optimizer_step` averages parameters
                                    across sites (optional Nesterov outer step, DiLoCo).

Call order per update (see trainer/sync.py):
    attach(model) once; then per update: backward + after_backward(model) per micro-batch,
    finish(step), optimizer.step(), after_optimizer_step(model, optimizer, step).
"""
from __future__ import annotations

import datetime
import time
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
import torch.distributed as dist

from hdc.errors import UserError
from hdc.plan import Plan, split
from hdc.reference import owned_regions
from hdc.strategies import (Chunked, DistributedOptimizer, LocalSGD, Strategy, append_chunks, by_site,
                            make_strategy)
from hdc.topology import Topology
from trainer.distributed.executor import PlanExecutor
from trainer.distributed.groups import DEFAULT_TIMEOUT_S, ProcessGroups

if TYPE_CHECKING:
    from trainer.distributed.sharded_optimizer import ShardedOptimizer


def wait_work(work, timeout_s: float, what: str) -> None:
    """Wait for one async collective with a deadline; a clear RuntimeError if it fails."""
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        raise RuntimeError(f"hdc: {what} failed after {timeout_s:g} s timeout or error: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


class _Bucket:
    def __init__(self, index: int, params: list[torch.nn.Parameter], start: int):
        self.index, self.params, self.start = index, params, start
        self.offsets, n = [], 0
        for p in params:
            self.offsets.append(n)
            n += p.numel()
        self.numel = n
        self.ready: set[int] = set()
        self.fired = False


def bucket_groups(params: list, strategy, bucket_cap_bytes: int) -> list[list]:
    """The gradient buckets over `params` (in the order backward produces them: reverse
    registration): chunked strategies get one bucket per chunk of near-equal numel; the others
    start a new bucket when the next parameter would push this one over `bucket_cap_bytes`."""
    groups: list[list] = []
    if isinstance(strategy, Chunked):  # one bucket per chunk, near-equal numel
        total = sum(p.numel() for p in params)
        chunks = min(strategy.chunks, len(params))
        bounds = [off + n for off, n in split(total, chunks)]
        cur, acc, k = [], 0, 0
        for i, p in enumerate(params):
            cur.append(p)
            acc += p.numel()
            left = len(params) - i - 1
            if (acc >= bounds[k] or left == chunks - k - 1) and k < chunks - 1 and left > 0:
                groups.append(cur)
                cur, k = [], k + 1
        groups.append(cur)
    else:
        cur, size = [], 0
        for p in params:
            if cur and size + p.numel() * p.element_size() > bucket_cap_bytes:
                groups.append(cur)
                cur, size = [], 0
            cur.append(p)
            size += p.numel() * p.element_size()
        groups.append(cur)
    return groups


class DistGradientSync:
    """GradientSync for one process of a torch.distributed world (rank r = GPU r of `topology`).

    topology, strategy -- the hdc topology and strategy (object or name)
    rank, world_size   -- checked against torch.distributed (default: taken from it)
    dp_groups          -- data-parallel groups (default: one group of every rank)
    bucket_cap_bytes   -- bucket size cap (ignored by 'chunked': one bucket per chunk)
    micro_batches      -- backward passes per update; buckets sync during the last one
                          (override per pass with set_sync(True/False))
    timeout_s          -- timeout of every collective (a dead peer ends the run with an error)
    backend            -- 'gloo' or 'nccl' (default: the world's backend)
    outer_lr, outer_momentum -- local_sgd outer optimizer (default: the strategy's)
    broadcast_params   -- make every replica start from the first DP member's parameters
    """

    def __init__(self, topology: Topology, strategy: Union[Strategy, str], rank: Optional[int] = None,
                 world_size: Optional[int] = None, *, dp_groups: Optional[Sequence[Sequence[int]]] = None,
                 bucket_cap_bytes: int = 25 * 2 ** 20, micro_batches: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None,
                 groups: Optional[ProcessGroups] = None, outer_lr: Optional[float] = None,
                 outer_momentum: Optional[float] = None, broadcast_params: bool = True):
        self.strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy
        self.groups = groups or ProcessGroups(topology, backend=backend, timeout_s=timeout_s)
        self.topology = topology
        self.rank, self.world_size = self.groups.rank, self.groups.world_size
        if rank is not None and rank != self.rank:
            raise UserError(f"rank: {rank} given but torch.distributed says {self.rank}")
        if world_size is not None and world_size != self.world_size:
            raise UserError(f"world_size: {world_size} given but torch.distributed says {self.world_size}")
        if micro_batches < 1:
            raise UserError(f"micro_batches: must be >= 1, got {micro_batches}")
        if bucket_cap_bytes < 1:
            raise UserError(f"bucket_cap_bytes: must be >= 1, got {bucket_cap_bytes}")
        self.dp_groups = [sorted(g) for g in (dp_groups or [range(self.world_size)])]
        mine = [g for g in self.dp_groups if self.rank in g]
        if len(mine) != 1:
            raise UserError(f"dp_groups: rank {self.rank} must be in exactly one group, got {self.dp_groups}")
        self.dp_group = mine[0]
        self.bucket_cap_bytes, self.micro_batches = bucket_cap_bytes, micro_batches
        self.timeout_s = self.groups.timeout_s
        self.broadcast_params = broadcast_params
        s = self.strategy
        self.mode = ("local" if isinstance(s, LocalSGD) else
                     "zero" if isinstance(s.inner if isinstance(s, Chunked) else s, DistributedOptimizer)
                     else "allreduce")
        self.outer_lr = outer_lr if outer_lr is not None else getattr(s, "outer_lr", 1.0)
        self.outer_momentum = outer_momentum if outer_momentum is not None else getattr(s, "outer_momentum", 0.0)
        self.last_divergence: Optional[float] = None   # local_sgd: ||params - site average|| before the last outer sync
        self.last_spans: list[dict] = []                # executor spans of the last finish()
        self.last_param_spans: list[dict] = []          # ... of the last parameter sync
        self.last_finish_s = 0.0  # when finish() was called, on the spans' clock (t0 = first bucket fired)
        self._explicit: Optional[bool] = None
        self._backward_count = 0
        self._late: Optional[str] = None
        self._sharded: Optional["ShardedOptimizer"] = None
        self.buckets: list[_Bucket] = []

    @classmethod
    def from_env(cls, strategy: Union[Strategy, str], **kwargs) -> "DistGradientSync":
        """Initialize torch.distributed from `hdc launch`'s environment (HDC_TOPOLOGY, RANK, ...)
        and build the sync for that topology."""
        from trainer.distributed.launch import init_from_env

        env = init_from_env(timeout_s=kwargs.get("timeout_s"), backend=kwargs.get("backend"))
        if env.topology is None:
            raise UserError("HDC_TOPOLOGY: not set; start the job with `hdc launch` or set it to a topology")
        kwargs.setdefault("timeout_s", env.timeout_s)
        return cls(env.topology, strategy, env.rank, env.world_size, **kwargs)

    # ------------------------------------------------------------------ GradientSync
    def attach(self, model: torch.nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise UserError("model: has no parameters that require grad")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1:
            raise UserError(f"model: all trainable parameters must share one dtype, got {sorted(map(str, dtypes))}")
        self.params, self.dtype = params, params[0].dtype
        self.device = params[0].device
        self._make_buckets(list(reversed(params)))
        esize = params[0].element_size()
        numels = [b.numel for b in self.buckets]
        topo = self.topology
        s = self.strategy
        if self.mode == "local":
            site_groups = [part for g in self.dp_groups for part in by_site(topo, g, s.name)]
            self.site_group = [g for g in site_groups if self.rank in g][0]
            self.grad_plan = _chunk_plan(s.inner, topo, site_groups, numels, esize, 1)
            self.param_plan = s.plan(topo, self.dp_groups, sum(numels), esize)
            self.sites_in_group = len(by_site(topo, self.dp_group, s.name))
            self.divisor = len(self.site_group)
        else:
            inner, inflight = (s.inner, s.inflight) if isinstance(s, Chunked) else (s, 1)
            self.grad_plan = _chunk_plan(inner, topo, self.dp_groups, numels, esize, inflight)
            self.param_plan = self.grad_plan
            self.divisor = len(self.dp_group)
        self.grad_exec = PlanExecutor(self.grad_plan, self.groups, timeout_s=self.timeout_s)
        self.param_exec = (PlanExecutor(self.param_plan, self.groups, timeout_s=self.timeout_s, kind="dp_param")
                           if self.param_plan is not self.grad_plan else self.grad_exec)
        self.grad_buffers = [torch.zeros(b.numel, dtype=self.dtype, device=self.device) for b in self.buckets]
        self.owned = owned_regions(self.grad_plan, self.rank) if self.mode == "zero" else None
        if self.broadcast_params:
            self._broadcast_parameters()
        self.param_buffers = None
        if self.mode != "allreduce":
            self.param_buffers = [torch.zeros(b.numel, dtype=self.dtype, device=self.device) for b in self.buckets]
            self._params_to_buffers()
        if self.mode == "local":  # the anchor: parameters at the last outer sync (fp32)
            self._anchor = torch.nn.Parameter(torch.cat(self.param_buffers).float().clone())
            self._outer = None
            if not (self.outer_lr == 1.0 and self.outer_momentum == 0.0):
                self._outer = torch.optim.SGD([self._anchor], lr=self.outer_lr, momentum=self.outer_momentum,
                                              nesterov=self.outer_momentum > 0)
        for b in self.buckets:
            for i, p in enumerate(b.params):
                p.register_post_accumulate_grad_hook(self._hook(b, i))

    def after_backward(self, model: torch.nn.Module) -> None:
        self._backward_count += 1

    def set_sync(self, enabled: Optional[bool]) -> None:
        """Force (True) or suppress (False) bucket sync in the following backward passes, like
        DDP's no_sync(); None goes back to counting `micro_batches`."""
        self._explicit = enabled

    def finish(self, step: int) -> None:
        ex = self.grad_exec
        if not ex.running:
            self._start()
        self.last_finish_s = time.perf_counter() - self._t0
        for b in self.buckets:
            if not b.fired:
                self._fire(b)
        self.last_spans = [dict(s, train_step=step) for s in ex.wait()]
        for b in self.buckets:
            b.ready.clear()
            b.fired = False
        self._backward_count = 0
        if self._late:
            late, self._late = self._late, None
            raise RuntimeError(f"hdc: {late} received more gradient after its bucket was synchronized: "
                               f"pass micro_batches=N (backward passes per update) or call set_sync(False) "
                               f"before all but the last micro-batch")
        if self.mode == "zero":
            for off, n in self.owned:
                self._region_div(self.grad_buffers, off, n)
            if self._sharded is None:  # plain optimizer: complete the all-reduce (AG of the grads)
                self.last_spans += [dict(s, train_step=step) for s in
                                    self.grad_exec.run(self.grad_buffers, 0, "param")]
            else:
                self._zero_outside_owned(self.grad_buffers)
        else:
            for g in self.grad_buffers:
                g.div_(self.divisor)
        self._buffers_to_grads()

    def after_optimizer_step(self, model: torch.nn.Module, optimizer, step: int) -> None:
        """Parameter-phase work after optimizer.step(): the distributed optimizer's all-gather of
        updated shards, local_sgd's outer sync every `every` steps. A no-op otherwise."""
        if self.mode == "zero" and self._sharded is not None:
            self.last_param_spans = [dict(s, train_step=step) for s in
                                     self.param_exec.run(self.param_buffers, step, "param")]
            self._buffers_to_params()
        elif self.mode == "local" and any(s.phase == "param" and s.active(step) for s in self.param_plan.steps):
            self._outer_sync(step)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not values:
            return []
        t = torch.tensor(values, dtype=torch.float64, device=self.groups.device)
        work = dist.all_reduce(t, group=self.groups.world(), async_op=True)
        wait_work(work, self.timeout_s, f"all_reduce_sum over the world "
                                        f"({self.groups.describe(range(self.world_size))}, rank {self.rank} in "
                                        f"{self.groups.describe([self.rank])})")
        return t.tolist()

    def make_optimizer(self, optimizer_cls, params, **kwargs):
        """The trainer's optimizer: sharded (ZeRO-1) for the distributed optimizer, else a plain one."""
        if self.mode == "zero":
            return self.shard_optimizer(optimizer_cls, **kwargs)
        return optimizer_cls(params, **kwargs)

    # ------------------------------------------------------------------ distributed optimizer
    def shard_optimizer(self, optimizer_cls=torch.optim.AdamW, **kwargs) -> "ShardedOptimizer":
        """An optimizer (e.g. AdamW) over this rank's shards only: its state is 1/dp of the full one."""
        if self.mode != "zero":
            raise UserError(f"shard_optimizer: needs the distributed_optimizer strategy, got {self.strategy.describe()}")
        from trainer.distributed.sharded_optimizer import ShardedOptimizer

        self._sharded = ShardedOptimizer(self, optimizer_cls, **kwargs)
        return self._sharded

    # ------------------------------------------------------------------ internals
    def _make_buckets(self, params: list[torch.nn.Parameter]) -> None:
        start = 0
        self.buckets = []
        for k, ps in enumerate(bucket_groups(params, self.strategy, self.bucket_cap_bytes)):
            b = _Bucket(k, ps, start)
            self.buckets.append(b)
            start += b.numel

    def _sync_now(self) -> bool:
        if self._explicit is not None:
            return self._explicit
        return self._backward_count == self.micro_batches - 1

    def _hook(self, bucket: _Bucket, index: int):
        def hook(param: torch.Tensor) -> None:
            if not self._sync_now():
                return
            if bucket.fired:
                self._late = self._late or f"bucket {bucket.index}"
                return
            bucket.ready.add(index)
            if len(bucket.ready) == len(bucket.params):
                if not self.grad_exec.running:
                    self._start()
                self._fire(bucket)
        return hook

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self.grad_exec.start(self.grad_buffers, 0, "grad", t0=self._t0)

    def _fire(self, b: _Bucket) -> None:
        buf = self.grad_buffers[b.index]
        for p, off in zip(b.params, b.offsets):
            if p.grad is None:
                buf[off: off + p.numel()].zero_()
            else:
                buf[off: off + p.numel()].copy_(p.grad.reshape(-1))
        b.fired = True
        self.grad_exec.fire(f"bucket:{b.index}")

    def _buffers_to_grads(self) -> None:
        for b in self.buckets:
            buf = self.grad_buffers[b.index]
            for p, off in zip(b.params, b.offsets):
                src = buf[off: off + p.numel()].view_as(p)
                if p.grad is None:
                    p.grad = src.clone()
                else:
                    p.grad.copy_(src)

    def _params_to_buffers(self) -> None:
        with torch.no_grad():
            for b in self.buckets:
                for p, off in zip(b.params, b.offsets):
                    self.param_buffers[b.index][off: off + p.numel()].copy_(p.reshape(-1))

    def _buffers_to_params(self) -> None:
        with torch.no_grad():
            for b in self.buckets:
                for p, off in zip(b.params, b.offsets):
                    p.copy_(self.param_buffers[b.index][off: off + p.numel()].view_as(p))

    def _broadcast_parameters(self) -> None:
        """Every DP group starts from its first member's parameters (as DDP does)."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self.params])
            for g in self.dp_groups:
                pg = self.groups.get(g)
                if pg is not None and self.rank in g:
                    wait_work(dist.broadcast(flat, src=g[0], group=pg, async_op=True), self.timeout_s,
                          f"parameter broadcast in group {g}")
            off = 0
            for p in self.params:
                p.copy_(flat[off: off + p.numel()].view_as(p))
                off += p.numel()
        # COLLECTIVE note: groups are created for all dp groups on every rank above

    def _region_div(self, buffers, off: int, n: int) -> None:
        for b in self.buckets:
            lo, hi = max(off, b.start), min(off + n, b.start + b.numel)
            if lo < hi:
                buffers[b.index][lo - b.start: hi - b.start].div_(self.divisor)

    def _zero_outside_owned(self, buffers) -> None:
        if not hasattr(self, "_outside"):
            keep, out, pos = sorted(self.owned), [], 0
            for off, n in keep:
                if off > pos:
                    out.append((pos, off - pos))
                pos = max(pos, off + n)
            if pos < self.grad_plan.numel:
                out.append((pos, self.grad_plan.numel - pos))
            self._outside = out
        for off, n in self._outside:
            for b in self.buckets:
                lo, hi = max(off, b.start), min(off + n, b.start + b.numel)
                if lo < hi:
                    buffers[b.index][lo - b.start: hi - b.start].zero_()

    def _outer_sync(self, step: int) -> None:
        self._params_to_buffers()
        local = torch.cat(self.param_buffers).float()
        self.last_param_spans = [dict(s, train_step=step) for s in
                                 self.param_exec.run(self.param_buffers, step, "param")]
        avg = torch.cat(self.param_buffers).float() / self.sites_in_group
        self.last_divergence = float(torch.linalg.vector_norm(local - avg))
        with torch.no_grad():
            if self._outer is None:
                new = avg
            else:  # DiLoCo: pseudo-gradient = anchor - average, Nesterov SGD on the anchor
                self._anchor.grad = self._anchor.detach() - avg
                self._outer.step()
                new = self._anchor.detach()
            self._anchor.data.copy_(new)
            off = 0
            for b in self.buckets:
                self.param_buffers[b.index].copy_(new[off: off + b.numel])
                off += b.numel
        self._buffers_to_params()


def _chunk_plan(inner: Strategy, topology: Topology, groups, numels: list[int], element_size: int,
                inflight: int) -> Plan:
    """hdc.strategies.bucketed, with the chunked strategy's `inflight`."""
    plan = Plan(numel=sum(numels), element_size=element_size,
                strategy=f"bucketed({inner.describe()}, buckets={len(numels)})",
                ranks=tuple(sorted(r for g in groups for r in g)))
    append_chunks(plan, inner, topology, [sorted(g) for g in groups], numels, triggers=True, inflight=inflight)
    return plan
