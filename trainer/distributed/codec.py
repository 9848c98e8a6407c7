"""hdc.wire's lossy formats in torch, for the executor: the same arithmetic as the numpy
reference, so a compressed plan gives the reference's result bit for bit.

A shard of `sn` values padded to `m` travels as `payload_bytes(m, wire)` bytes (uint8, what
every backend moves): bf16 as its 2m bytes; int8 as its fp32 scale's 4 bytes, then m int8.
"""
from __future__ import annotations

import torch

from hdc.wire import INT8_MAX, SCALE_BYTES, payload_bytes

__all__ = ["decode", "encode_into", "payload_bytes"]


def encode_into(x: torch.Tensor, wire: str, out: torch.Tensor) -> None:
    """Encode fp32 values `x` into the uint8 payload `out` (zero padding after them)."""
    x = x.float()
    if wire == "bf16":
        vals = out.view(torch.bfloat16)
        vals[:x.numel()].copy_(x)  # round to nearest even, as hdc.wire.encode
        vals[x.numel():].zero_()
        return
    if wire == "int8":
        amax = x.abs().max() if x.numel() else torch.zeros((), device=x.device)
        scale = amax / INT8_MAX if float(amax) > 0 else torch.ones((), device=x.device)
        out[:SCALE_BYTES].copy_(scale.reshape(1).to(torch.float32).view(torch.uint8))
        q = out[SCALE_BYTES:].view(torch.int8)
        torch.clamp(torch.round(x / scale), -INT8_MAX, INT8_MAX, out=x)
        q[:x.numel()].copy_(x)
        q[x.numel():].zero_()
        return
    raise ValueError(f"not a lossy wire format: {wire!r}")


def decode(payload: torch.Tensor, wire: str, numel: int) -> torch.Tensor:
    """The first `numel` fp32 values of a payload (a new tensor)."""
    if wire == "bf16":
        return payload.view(torch.bfloat16)[:numel].float()
    if wire == "int8":
        scale = payload[:SCALE_BYTES].clone().view(torch.float32)
        return payload[SCALE_BYTES:SCALE_BYTES + numel].view(torch.int8).float() * scale
    raise ValueError(f"not a lossy wire format: {wire!r}")
