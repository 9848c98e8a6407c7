"""`DistGradientSync`: the trainer's GradientSync over torch.distributed, driven by a plan.

The plan is `hdc.sync.sync_plans(...)` over the model's trainable parameters — the same call
the simulator makes for a workload — so a run executes exactly the plan its prediction times.
Gradients are laid out in one flat order (parameters in reverse registration order, the order
backward produces them, as DDP does), cut into the plan's buckets: element ranges, which may
cut a parameter (chunked with overlap_backward cuts the buffer into equal chunks). A
post-accumulate-grad hook on every parameter counts the parameters of each bucket it
touches; on the micro-batch that syncs, a bucket is copied into its flat buffer as soon as
all of them are done and the executor is told `fire('bucket:k')`, so its collectives overlap
the rest of backward. `finish(step)` fires what is left, waits, and writes the averaged
gradients (sum / contributors) back into `param.grad`.

What happens around the optimizer is read from the plan (hdc.sync.SyncPlans), never from the
strategy's class:
  owned regions      all of the buffer, or this rank's shards (the 'grad' steps reduce-scatter):
                     then `make_optimizer` gives a ShardedOptimizer (ZeRO-1) and
                     `after_optimizer_step` runs the 'param' steps (all-gather) on the updated
                     parameters; with a plain optimizer finish() all-gathers the gradients.
  param_sync average the 'param' steps sum replicas across sites every `period` steps: the
                     sync sums pseudo-gradients (anchor - parameters), divides, and applies the
                     outer step (plain average, or DiLoCo's Nesterov SGD) to the anchor; steps
                     with a `lag` overlap the next steps (on their own process groups) and are
                     applied `lag` steps later (streaming_local_sgd's delay).

Call order per update (see trainer/sync.py):
    attach(model) once; then per update: backward + after_backward(model) per micro-batch,
    finish(step), optimizer.step(), after_optimizer_step(model, optimizer, step).
"""
from __future__ import annotations

import contextlib
import time
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist

from hdc.errors import UserError
from hdc.plan import WIRE_BYTES, WIRE_OF_ELEMENT_SIZE
from hdc.strategies import OuterStep, Strategy, make_strategy
from hdc.sync import GRAD_DTYPES, SyncPlans, sync_plans
from hdc.topology import Topology
from trainer.distributed.executor import PlanExecutor
from trainer.distributed.groups import DEFAULT_TIMEOUT_S, ProcessGroups, wait_work


def model_sync_plans(strategy: Strategy, topology: Topology, dp_groups, model: torch.nn.Module,
                     bucket_cap_bytes: int, grad_wire: Optional[str] = None,
                     param_wire: Optional[str] = None) -> SyncPlans:
    """hdc.sync.sync_plans for a model: its trainable parameters in backward's order (reverse
    registration), the cap in elements of their dtype, wire formats by default the parameters'
    dtype. Only sizes are read (meta tensors work)."""
    order = [p for p in reversed(list(model.parameters())) if p.requires_grad]
    esize = order[0].element_size()
    native = WIRE_OF_ELEMENT_SIZE.get(esize, "fp32")
    grad_wire = grad_wire or native  # the cap counts gradient elements, as DDP's bucket_cap_mb
    cap = max(bucket_cap_bytes // WIRE_BYTES[grad_wire], 1)
    return sync_plans(strategy, topology, dp_groups, [p.numel() for p in order], cap, grad_wire, param_wire or native)


def outer_step(anchor: torch.Tensor, momentum_buf: torch.Tensor, mean: torch.Tensor,
               regions: Sequence[tuple[int, int]], outer: Optional[OuterStep]) -> None:
    """The outer step on the averaged pseudo-gradient `mean`, in place on `regions` of the
    anchor (fp32): SGD with Nesterov momentum, torch.optim.SGD's update (buf = m·buf + g;
    p -= lr·(g + m·buf)); lr 1 and m 0 (no `outer`) is a plain average (anchor - mean)."""
    lr, momentum = (outer.lr, outer.momentum) if outer else (1.0, 0.0)
    for off, n in regions:
        sl = slice(off, off + n)
        update = mean[sl]
        if momentum > 0:
            momentum_buf[sl].mul_(momentum).add_(update)
            update = update + momentum * momentum_buf[sl]
        anchor[sl] -= lr * update


def divergence(local: torch.Tensor, anchor: torch.Tensor, mean: torch.Tensor,
               regions: Sequence[tuple[int, int]]) -> float:
    """||local parameters - replica average|| over `regions`, before the outer step (the
    average is anchor - mean pseudo-gradient)."""
    return sum(float(torch.sum((local[o:o + n] - (anchor[o:o + n] - mean[o:o + n])) ** 2))
               for o, n in regions) ** 0.5


class _Bucket:
    """Elements [start, start + numel) of the flat gradient order, and the parameter slices in it:
    (param, offset in the param, offset in the bucket, length)."""

    def __init__(self, index: int, start: int, numel: int):
        self.index, self.start, self.numel = index, start, numel
        self.slices: list[tuple[torch.nn.Parameter, int, int, int]] = []
        self.ready = 0
        self.fired = False


class DistGradientSync:
    """GradientSync for one process of a torch.distributed world (rank r = GPU r of `topology`).

    topology, strategy -- the hdc topology and strategy (object or name)
    rank, world_size   -- checked against torch.distributed (default: taken from it)
    dp_groups          -- data-parallel groups (default: one group of every rank)
    bucket_cap_bytes   -- gradient bucket size cap (DDP's bucket_cap_mb; hdc.sync.bucket_numels)
    micro_batches      -- backward passes per update; buckets sync during the last one
                          (override per pass with set_sync(True/False))
    timeout_s          -- timeout of every collective (a dead peer ends the run with an error)
    backend            -- 'gloo' or 'nccl' (default: the world's backend)
    broadcast_params   -- make every replica start from the first DP member's parameters
    grad_dtype         -- 'float32' or 'bfloat16': the gradient buckets' dtype, so what the
                          gradient steps send (bf16 halves the bytes; Megatron's bf16 grad
                          reduction); the averaged gradient is written back in the parameters' dtype
    """

    def __init__(self, topology: Topology, strategy: Union[Strategy, str], rank: Optional[int] = None,
                 world_size: Optional[int] = None, *, dp_groups: Optional[Sequence[Sequence[int]]] = None,
                 bucket_cap_bytes: int = 25 * 2 ** 20, micro_batches: int = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S, backend: Optional[str] = None,
                 groups: Optional[ProcessGroups] = None, broadcast_params: bool = True,
                 grad_dtype: str = "float32"):
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
        if grad_dtype not in GRAD_DTYPES:
            raise UserError(f"grad_dtype: must be one of {', '.join(GRAD_DTYPES)}, got {grad_dtype!r}")
        self.grad_dtype = grad_dtype
        self.plans: Optional[SyncPlans] = None
        self.last_divergence: Optional[float] = None   # average: ||params - replica average|| before the last outer sync
        self.last_spans: list[dict] = []                # executor spans of the last finish()
        self.last_param_spans: list[dict] = []          # ... of the last parameter sync
        self.last_finish_s = 0.0  # when finish() was called, on the spans' clock (t0 = first bucket fired)
        self._explicit: Optional[bool] = None
        self._backward_count = 0
        self._late: Optional[str] = None
        self._sharded = None  # the ShardedOptimizer, once make_optimizer/shard_optimizer built it
        self._pending: Optional[dict] = None  # an outer sync in flight: started on one step, applied `lag` later
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

    # ------------------------------------------------------------------ what the plan says
    @property
    def optimizer_is_sharded(self) -> bool:
        """This rank's optimizer updates only its shards (the plan's gradient steps reduce-scatter)."""
        return self.plans is not None and self.plans.sharded(self.rank)

    @property
    def supports_resume(self) -> bool:
        """Checkpoints hold everything this sync needs to continue exactly (an outer anchor and
        its momentum are not in them yet)."""
        return self.plans is None or self.plans.param_sync != "average"

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
        order = list(reversed(params))  # backward's production order
        self.plans = model_sync_plans(self.strategy, self.topology, self.dp_groups, model, self.bucket_cap_bytes,
                                      grad_wire=GRAD_DTYPES[self.grad_dtype])
        self._make_buckets(order, self.plans.buckets)
        plan = self.plans.plan
        self.owned = self.plans.owned(self.rank)
        self.divisor = self.plans.grad_divisor(self.rank)
        self.grad_exec = PlanExecutor(plan, self.groups, timeout_s=self.timeout_s)
        # a parameter sync that overlaps later steps (lag) runs on its own process groups, so its
        # collectives never interleave with the gradient syncs issued meanwhile
        overlapped = any(s.lag for s in self.plans.param_steps)
        self.param_exec = (PlanExecutor(plan, self.groups, timeout_s=self.timeout_s, kind="dp_param",
                                        stream="param" if overlapped else "")
                           if self.plans.param_sync else None)
        grad_dtype = getattr(torch, self.grad_dtype) if self.grad_dtype != "float32" else self.dtype
        self.grad_buffers = [torch.zeros(b.numel, dtype=grad_dtype, device=self.device) for b in self.buckets]
        if self.broadcast_params:
            self._broadcast_parameters()
        self.param_buffers = None
        if self.plans.param_sync:
            self.param_buffers = [torch.zeros(b.numel, dtype=self.dtype, device=self.device) for b in self.buckets]
            self.reload_parameters()
        for p in params:
            p.register_post_accumulate_grad_hook(self._hook(self._touching[id(p)]))

    def reload_parameters(self) -> None:
        """Take the model's current parameters as the sync's copy of them (after loading a
        checkpoint): the parameter buffers and, for replica averaging, the outer anchor."""
        if self.param_buffers is None:
            return
        self._params_to(self.param_buffers)
        if self.plans.param_sync == "average":  # the anchor: parameters at the last outer sync (fp32)
            self._anchor = torch.cat(self.param_buffers).float().clone()
            self._momentum = torch.zeros_like(self._anchor)  # the outer SGD's momentum buffer

    def after_backward(self, model: torch.nn.Module) -> None:
        self._backward_count += 1
        if self._pending is not None:  # let an overlapped parameter sync issue its next steps
            self.param_exec.poll()

    def full_parameters(self, model: torch.nn.Module):
        """Every replica already holds its full parameters."""
        return contextlib.nullcontext(model)

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
            b.ready, b.fired = 0, False
        self._backward_count = 0
        if self._late:
            late, self._late = self._late, None
            raise RuntimeError(f"hdc: {late} received more gradient after its bucket was synchronized: "
                               f"pass micro_batches=N (backward passes per update) or call set_sync(False) "
                               f"before all but the last micro-batch")
        if self.optimizer_is_sharded:
            for off, n in self.owned:
                self._region(self.grad_buffers, off, n, lambda t: t.div_(self.divisor))
            if self._sharded is None:  # plain optimizer: complete the all-reduce (AG of the grads)
                self.last_spans += [dict(s, train_step=step) for s in
                                    self.grad_exec.run(self.grad_buffers, 0, "param")]
            else:
                for off, n in self._outside_owned():
                    self._region(self.grad_buffers, off, n, lambda t: t.zero_())
        else:
            for g in self.grad_buffers:
                g.div_(self.divisor)
        self._buffers_to_grads()

    def after_optimizer_step(self, model: torch.nn.Module, optimizer, step: int) -> None:
        """The plan's parameter steps after optimizer.step(): the all-gather of updated shards
        (sharded optimizer), or the periodic outer sync of replicas. A no-op otherwise."""
        kind = self.plans.param_sync
        if kind == "gather" and self._sharded is not None:
            self.last_param_spans = [dict(s, train_step=step) for s in
                                     self.param_exec.run(self.param_buffers, step, "param")]
            self._buffers_to_params()
        elif kind == "average":
            if self._pending is not None and step >= self._pending["apply_at"]:
                self._finish_outer_sync()
            if self.plans.param_due(step):
                self._start_outer_sync(step)
                if self._pending["apply_at"] <= step:
                    self._finish_outer_sync()

    def flush(self) -> None:
        """Complete an outer sync still overlapping the steps after it (call after the last
        step: the replicas then agree on every fragment)."""
        if self._pending is not None:
            self._finish_outer_sync()

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
        """The trainer's optimizer: sharded (ZeRO-1) when this rank owns shards, else a plain one."""
        if self.optimizer_is_sharded:
            return self.shard_optimizer(optimizer_cls, **kwargs)
        return optimizer_cls(params, **kwargs)

    # ------------------------------------------------------------------ distributed optimizer
    def shard_optimizer(self, optimizer_cls=torch.optim.AdamW, **kwargs):
        """An optimizer (e.g. AdamW) over this rank's shards only: its state is 1/dp of the full one."""
        if not self.optimizer_is_sharded:
            raise UserError(f"shard_optimizer: needs a plan whose gradient steps reduce-scatter (e.g. the "
                            f"distributed_optimizer strategy), got {self.strategy.describe()}")
        from trainer.distributed.sharded_optimizer import ShardedOptimizer

        self._sharded = ShardedOptimizer(self, optimizer_cls, **kwargs)
        return self._sharded

    # ------------------------------------------------------------------ internals
    def _make_buckets(self, order: list[torch.nn.Parameter], sizes: Sequence[int]) -> None:
        """Buckets as element ranges of the flat order, and which buckets each parameter touches."""
        self.buckets, start = [], 0
        for k, n in enumerate(sizes):
            self.buckets.append(_Bucket(k, start, n))
            start += n
        self._touching: dict[int, list[_Bucket]] = {id(p): [] for p in order}
        off = 0
        for p in order:
            lo, hi = off, off + p.numel()
            for b in self.buckets:
                a, z = max(lo, b.start), min(hi, b.start + b.numel)
                if a < z:
                    b.slices.append((p, a - lo, a - b.start, z - a))
                    self._touching[id(p)].append(b)
            off = hi

    def _sync_now(self) -> bool:
        if self._explicit is not None:
            return self._explicit
        return self._backward_count == self.micro_batches - 1

    def _hook(self, buckets: list[_Bucket]):
        def hook(param: torch.Tensor) -> None:
            if not self._sync_now():
                return
            for bucket in buckets:
                if bucket.fired:
                    self._late = self._late or f"bucket {bucket.index}"
                    continue
                bucket.ready += 1
                if bucket.ready == len(bucket.slices):
                    if not self.grad_exec.running:
                        self._start()
                    self._fire(bucket)
        return hook

    def _start(self) -> None:
        self._t0 = time.perf_counter()
        self.grad_exec.start(self.grad_buffers, 0, "grad", t0=self._t0)

    def _fire(self, b: _Bucket) -> None:
        buf = self.grad_buffers[b.index]
        for p, p_off, b_off, n in b.slices:
            if p.grad is None:
                buf[b_off: b_off + n].zero_()
            else:
                buf[b_off: b_off + n].copy_(p.grad.reshape(-1)[p_off: p_off + n])
        b.fired = True
        self.grad_exec.fire(f"bucket:{b.index}")

    def _buffers_to_grads(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for b in self.buckets:
            buf = self.grad_buffers[b.index]
            for p, p_off, b_off, n in b.slices:
                p.grad.view(-1)[p_off: p_off + n].copy_(buf[b_off: b_off + n])

    def _params_to(self, buffers) -> None:
        with torch.no_grad():
            for b in self.buckets:
                for p, p_off, b_off, n in b.slices:
                    buffers[b.index][b_off: b_off + n].copy_(p.reshape(-1)[p_off: p_off + n])

    def _buffers_to_params(self) -> None:
        with torch.no_grad():
            for b in self.buckets:
                for p, p_off, b_off, n in b.slices:
                    p.view(-1)[p_off: p_off + n].copy_(self.param_buffers[b.index][b_off: b_off + n])

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

    def _region(self, buffers, off: int, n: int, fn) -> None:
        """Apply fn in place to elements [off, off + n) of the flat order, across buckets."""
        for b in self.buckets:
            lo, hi = max(off, b.start), min(off + n, b.start + b.numel)
            if lo < hi:
                fn(buffers[b.index][lo - b.start: hi - b.start])

    def _outside_owned(self) -> list[tuple[int, int]]:
        out, pos = [], 0
        for off, n in sorted(self.owned):
            if off > pos:
                out.append((pos, off - pos))
            pos = max(pos, off + n)
        if pos < self.plans.plan.numel:
            out.append((pos, self.plans.plan.numel - pos))
        return out

    def _start_outer_sync(self, step: int) -> None:
        """Start summing the replicas' pseudo-gradients (anchor - parameters) with the plan's
        parameter steps due at `step` (all of the buffer for local_sgd, one fragment for
        streaming_local_sgd); they are applied by `_finish_outer_sync`, now or `lag` steps later."""
        self._params_to(self.param_buffers)
        local = torch.cat(self.param_buffers).float()
        self._split_into(self.param_buffers, self._anchor - local)
        lag = max(s.lag for s in self.plans.param_steps if s.active(step))
        self.param_exec.start(self.param_buffers, step, "param")
        self._pending = {"step": step, "apply_at": step + lag, "regions": self.plans.due_regions(self.rank, step),
                         "local": local}

    def _finish_outer_sync(self) -> None:
        """Wait for the pseudo-gradient sum, average it, step the anchor where it ran
        (`outer_step`), and set those parameters to (1 - alpha) x the new anchor + alpha x their
        current local values (torchft's fragment_update_alpha; 0 by default)."""
        pending, self._pending = self._pending, None
        step, local = pending["step"], pending["local"]
        self.last_param_spans = [dict(s, train_step=step) for s in self.param_exec.wait()]
        summed = torch.cat(self.param_buffers).float()
        self._params_to(self.param_buffers)
        now = torch.cat(self.param_buffers).float()  # the local parameters after the overlapped steps
        mean = summed / self.plans.param_divisor(self.rank)
        self.last_divergence = divergence(local, self._anchor, mean, pending["regions"])
        outer_step(self._anchor, self._momentum, mean, pending["regions"], self.plans.outer)
        alpha = self.plans.outer.alpha if self.plans.outer else 0.0
        for off, n in pending["regions"]:
            sl = slice(off, off + n)
            now[sl] = torch.lerp(self._anchor[sl], now[sl], alpha) if alpha else self._anchor[sl]
        self._split_into(self.param_buffers, now)
        self._buffers_to_params()

    def _split_into(self, buffers, flat: torch.Tensor) -> None:
        off = 0
        for b in self.buckets:
            buffers[b.index].copy_(flat[off: off + b.numel])
            off += b.numel
