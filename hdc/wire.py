"""Lossy wire formats, defined once: what a step sends when its wire is narrower than the buffer.

A lossy step (`Plan.lossy(step)`: the wire has fewer bytes per element than the buffer) runs
as (every executor, the same arithmetic — the numpy reference is the oracle, bit for bit):
  reduce_scatter  every member encodes each shard of its region; the owner of shard j decodes
                  the p payloads and sums them in fp32 in member order (0, 1, ..., p-1)
  all_gather      the owner of shard j encodes it; every member, the owner included, writes the
                  decoded shard (so all members hold the same values)
An all-reduce on a lossy wire is planned as reduce_scatter + all_gather (the strategy that sets
the wire does that; `Step` refuses a lossy all_reduce) — the bytes of a ring all-reduce.

Formats (values are fp32 before encoding):
  bf16  round to nearest even on the upper 16 bits (torch's float -> bfloat16)
  int8  one fp32 scale per encoded shard, absmax / 127 (1 when the shard is all zeros);
        q = clip(round_half_even(x / scale), -127, 127); decoded as q * scale. This is the
        per-tensor absmax int8 that INTELLECT-1 used for DiLoCo's pseudo-gradients, per shard.
"""
from __future__ import annotations

import numpy as np

INT8_MAX = 127.0
SCALE_BYTES = 4  # an int8 payload carries its fp32 scale


def encode(x: np.ndarray, wire: str) -> tuple[np.ndarray, np.float32]:
    """(payload, scale) of fp32 values `x` on `wire` ('bf16': uint16 bits; 'int8': int8, scale)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if wire == "bf16":
        u = x.view(np.uint32)
        rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
        return (rounded >> np.uint32(16)).astype(np.uint16), np.float32(1.0)
    if wire == "int8":
        scale = int8_scale(x)
        q = np.clip(np.rint(x / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
        return q, scale
    raise ValueError(f"not a lossy wire format: {wire!r}")


def decode(payload: np.ndarray, scale: np.float32, wire: str) -> np.ndarray:
    """fp32 values of an encoded payload."""
    if wire == "bf16":
        return (payload.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if wire == "int8":
        return payload.astype(np.float32) * np.float32(scale)
    raise ValueError(f"not a lossy wire format: {wire!r}")


def int8_scale(x: np.ndarray) -> np.float32:
    amax = np.float32(np.max(np.abs(x))) if x.size else np.float32(0.0)
    return np.float32(amax / np.float32(INT8_MAX)) if amax > 0 else np.float32(1.0)


def roundtrip(x: np.ndarray, wire: str) -> np.ndarray:
    return decode(*encode(x, wire), wire)


def payload_bytes(numel: int, wire: str) -> int:
    """Bytes of one encoded shard of `numel` elements."""
    return numel * (2 if wire == "bf16" else 1) + (SCALE_BYTES if wire == "int8" else 0)
