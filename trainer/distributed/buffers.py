"""The executor's memory: the caller's buffers addressed as one flat region, and a pool of
scratch tensors reused across calls (fresh 64 MiB scratch page-faults on every call: a site's
reduce-scatter took 2.7x as long; benchmarks/executor_buffers.py)."""
from __future__ import annotations

import bisect
from typing import Optional, Sequence, Union

import torch

Buffers = Union[torch.Tensor, Sequence[torch.Tensor]]


class FlatBuffers:
    """Tensors laid end to end, addressed by (offset, numel) of their concatenation."""

    def __init__(self, buffers: Buffers):
        tensors = [buffers] if isinstance(buffers, torch.Tensor) else list(buffers)
        if not tensors:
            raise ValueError("hdc: executor needs at least one buffer tensor")
        self.parts = []
        for i, t in enumerate(tensors):
            if not t.is_contiguous():
                raise ValueError(f"hdc: buffer {i} must be contiguous")
            self.parts.append(t.view(-1))
        self.starts = [0]
        for t in self.parts:
            self.starts.append(self.starts[-1] + t.numel())
        self.numel = self.starts[-1]
        self.dtype, self.device = self.parts[0].dtype, self.parts[0].device

    def view(self, off: int, n: int) -> Optional[torch.Tensor]:
        """A view of the region if it lies inside one tensor, else None."""
        i = bisect.bisect_right(self.starts, off) - 1
        i = min(i, len(self.parts) - 1)
        if off + n <= self.starts[i + 1]:
            return self.parts[i][off - self.starts[i]: off - self.starts[i] + n]
        return None

    def read(self, off: int, n: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The region: a view if it lies inside one tensor, else a copy (into `out` if given,
        which then must hold n elements; with `out` the copy is always made)."""
        v = self.view(off, n)
        if out is None and v is not None:
            return v
        if out is None:
            out = torch.empty(n, dtype=self.dtype, device=self.device)
        if v is not None:
            return out.copy_(v)
        pos = 0
        for t, s in zip(self.parts, self.starts):
            lo, hi = max(off, s), min(off + n, s + t.numel())
            if lo < hi:
                out[pos: pos + hi - lo] = t[lo - s: hi - s]
                pos += hi - lo
        return out

    def write(self, off: int, src: torch.Tensor) -> None:
        n = src.numel()
        for t, s in zip(self.parts, self.starts):
            lo, hi = max(off, s), min(off + n, s + t.numel())
            if lo < hi:
                t[lo - s: hi - s].copy_(src[lo - off: hi - off])


class ScratchPool:
    """Reusable scratch tensors keyed by (dtype, device, numel). `take` hands out a tensor no
    one else holds (a pooled one or a new one; contents undefined); `give` returns it. An op
    holds its scratch from issue to completion, so concurrent ops never share one."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        free = self._free.get((dtype, device, numel))
        return free.pop() if free else torch.empty(numel, dtype=dtype, device=device)

    def give(self, tensors: Sequence[torch.Tensor]) -> None:
        for t in tensors:
            self._free.setdefault((t.dtype, t.device, t.numel()), []).append(t)

    @property
    def size_bytes(self) -> int:
        """Bytes of the tensors in the pool (all of them between calls)."""
        return sum(t.numel() * t.element_size() for ts in self._free.values() for t in ts)
