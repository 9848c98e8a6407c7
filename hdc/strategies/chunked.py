"""chunked: split each buffer into N chunks, each synchronized by the inner strategy; chunk
c's phase j waits for chunk c-inflight's phase j, so phases of successive chunks pipeline (the
reduce-scatter of chunk c+1 runs while chunk c crosses the WAN).

In a training step (`sync_plan`): without overlap_backward every gradient bucket is split into
`chunks` pieces; with overlap_backward the chunks replace the buckets — chunk c starts as soon
as backward has produced that part of the gradients ('bucket:c')."""
from __future__ import annotations

from dataclasses import dataclass

from hdc.config import meta
from hdc.plan import split
from hdc.strategies.base import Strategy, append_chunks, inner_field, register


@register
@dataclass(frozen=True)
class Chunked(Strategy):
    inner: Strategy = inner_field()
    chunks: int = meta("chunked: chunks per gradient bucket (with overlap_backward: of the whole buffer)",
                       default=4, ge=1, le=4096)
    overlap_backward: bool = meta("chunked: the chunks are the gradient buckets; chunk c starts as soon "
                                  "as backward has produced it", default=False)
    inflight: int = meta("chunked: chunks in flight per phase (1 = one stream, as NCCL runs one "
                         "communicator's collectives in order)", default=1, ge=1, le=64)
    name = "chunked"
    order = 30
    summary = "the inner strategy on N chunks, pipelined phase by phase (RS of chunk c+1 during the WAN of c)"

    def describe(self) -> str:
        return (f"{self.name}({self.inner.describe()}, chunks={self.chunks}"
                + (f", inflight={self.inflight}" if self.inflight > 1 else "")
                + (", overlap_backward)" if self.overlap_backward else ")"))

    def build(self, plan, topology, groups):
        sizes = [n for _, n in split(plan.numel, min(self.chunks, plan.numel))]
        append_chunks(plan, self.inner, topology, groups, sizes, triggers=self.overlap_backward,
                      inflight=self.inflight)

    def sync_plan(self, topology, groups, buckets, element_size):
        if not self.overlap_backward:
            return super().sync_plan(topology, groups, buckets, element_size)
        plan = self.plan(topology, groups, sum(buckets), element_size)
        return plan, [n for _, n in split(plan.numel, min(self.chunks, plan.numel))]

    def outer_optimizer(self):
        return self.inner.outer_optimizer()



