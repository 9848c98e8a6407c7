"""hdc.wire's lossy formats in torch, for the executor: the same arithmetic as the numpy
reference, so a compressed plan gives the reference's result bit for bit.

A shard of `sn` values padded to `m` travels as `payload_bytes(m, wire)` bytes (uint8, what
every backend moves): bf16 as its 2m bytes; int8 as one fp32 scale per INT8_BLOCK values (4
bytes each, computed over the zero-padded shard, which leaves every real block's absmax as the
reference computes it), then m int8.
"""
from __future__ import annotations

import torch

from hdc.wire import INT8_BLOCK, INT8_MAX, SCALE_BYTES, payload_bytes

__all__ = ["decode", "encode_into", "payload_bytes"]


def encode_into(x: torch.Tensor, wire: str, out: torch.Tensor, m: int) -> None:
    """Encode fp32 values `x` (at most m) into the uint8 payload `out` of a shard padded to m."""
    if wire == "bf16":
        vals = out.view(torch.bfloat16)
        vals[:x.numel()].copy_(x)  # round to nearest even, as hdc.wire.encode
        vals[x.numel():].zero_()
        return
    if wire == "int8":
        blocks = -(-m // INT8_BLOCK)
        padded = torch.zeros(blocks * INT8_BLOCK, dtype=torch.float32, device=x.device)
        padded[:x.numel()] = x
        rows = padded.view(blocks, INT8_BLOCK)
        amax = rows.abs().amax(dim=1)
        scales = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
        out[:SCALE_BYTES * blocks].copy_(scales.view(torch.uint8))
        q = rows.div_(scales[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX)
        out[SCALE_BYTES * blocks:].view(torch.int8).copy_(q.view(-1)[:m])
        return
    raise ValueError(f"not a lossy wire format: {wire!r}")


def decode(payload: torch.Tensor, wire: str, numel: int, m: int) -> torch.Tensor:
    """The first `numel` fp32 values of a shard's payload (padded to m), as a new tensor."""
    if wire == "bf16":
        return payload.view(torch.bfloat16)[:numel].float()
    if wire == "int8":
        blocks = -(-m // INT8_BLOCK)
        scales = payload[:SCALE_BYTES * blocks].clone().view(torch.float32)
        q = payload[SCALE_BYTES * blocks:SCALE_BYTES * blocks + numel].view(torch.int8).float()
        return q * scales.repeat_interleave(INT8_BLOCK)[:numel]
    raise ValueError(f"not a lossy wire format: {wire!r}")
