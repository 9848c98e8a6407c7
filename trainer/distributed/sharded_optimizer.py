"""ZeRO-1: an optimizer whose state covers only this rank's shards of the parameters.

Built by `DistGradientSync.shard_optimizer(torch.optim.AdamW, lr=...)` under the
distributed_optimizer strategy. Element-wise optimizers (SGD, Adam, AdamW, ...) give the
same update on a shard as on the whole buffer, so sharding changes memory, not results.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from hdc.errors import UserError
from trainer.distributed.groups import wait_work


class ShardedOptimizer:
    """(`sync` is the DistGradientSync that built it.) ZeRO-1: an optimizer over this rank's owned shards of the flat parameters (fp32 master
    copy, state only for the shard). step() updates the shard from the averaged gradient shard
    and writes it into the sync's parameter buffers; the sync's after_optimizer_step()
    all-gathers them into the model."""

    def __init__(self, sync, optimizer_cls=torch.optim.AdamW, **kwargs):
        self.sync = sync
        self.regions = [(off, n) for off, n in sync.owned if n > 0]
        init = self._gather(sync.param_buffers).float().clone()
        self.shard = torch.nn.Parameter(init)
        self.inner = optimizer_cls([self.shard], **kwargs)

    @property
    def param_groups(self):
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    def _gather(self, buffers) -> torch.Tensor:
        parts = []
        for off, n in self.regions:
            for b in self.sync.buckets:
                lo, hi = max(off, b.start), min(off + n, b.start + b.numel)
                if lo < hi:
                    parts.append(buffers[b.index][lo - b.start: hi - b.start])
        if not parts:
            return torch.zeros(0, dtype=self.sync.dtype, device=self.sync.device)
        return torch.cat(parts)

    def _scatter(self, buffers, flat: torch.Tensor) -> None:
        pos = 0
        for off, n in self.regions:
            for b in self.sync.buckets:
                lo, hi = max(off, b.start), min(off + n, b.start + b.numel)
                if lo < hi:
                    buffers[b.index][lo - b.start: hi - b.start].copy_(flat[pos: pos + hi - lo])
                    pos += hi - lo

    def grad_norm(self) -> float:
        """L2 norm of the full averaged gradient (shard norms² summed over the DP group)."""
        sq = float(self._gather(self.sync.grad_buffers).float().pow(2).sum())
        t = torch.tensor([sq], dtype=torch.float64, device=self.sync.groups.device)
        pg = self.sync.groups.get(self.sync.dp_group)
        if pg is not None:
            wait_work(dist.all_reduce(t, group=pg, async_op=True), self.sync.timeout_s, "grad-norm all-reduce")
        return float(t.item()) ** 0.5

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale the shard's gradients so the full gradient norm is at most max_norm; returns the norm."""
        norm = self.grad_norm()
        if norm > max_norm > 0:
            for g in self.sync.grad_buffers:
                g.mul_(max_norm / (norm + 1e-6))
        return norm

    @torch.no_grad()
    def step(self, closure=None):
        self.shard.grad = self._gather(self.sync.grad_buffers).float()
        loss = self.inner.step(closure)
        self._scatter(self.sync.param_buffers, self.shard.detach().to(self.sync.dtype))
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)
        for p in self.sync.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        """The inner optimizer's state and the fp32 master copy of the shard (all a resume needs)."""
        return {"inner": self.inner.state_dict(), "regions": self.regions, "master_shard": self.shard.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        if [tuple(r) for r in state["regions"]] != self.regions:
            raise UserError("sharded optimizer state: saved for other shards (different world or buckets)")
        self.inner.load_state_dict(state["inner"])
        with torch.no_grad():
            self.shard.copy_(state["master_shard"])
