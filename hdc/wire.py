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
  int8  one fp32 scale per block of INT8_BLOCK values, absmax / 127 (1 for an all-zero
        block); q = clip(round_half_even(x / scale), -127, 127); decoded as q * scale. Absmax
        int8 as INTELLECT-1 used for DiLoCo's pseudo-gradients, in blocks: one scale per shard
        of 500k heavy-tailed values (Student-t, 3 dof) gave 32% relative L2 error, blocks of
        1024 give 3.8% (benchmarks/wire_error.py, docs/distributed.md), for 0.4% more bytes.
"""
from __future__ import annotations

import numpy as np

INT8_MAX = 127.0
INT8_BLOCK = 1024  # values per fp32 scale
SCALE_BYTES = 4


def encode(x: np.ndarray, wire: str) -> tuple[np.ndarray, np.ndarray]:
    """(payload, scales) of fp32 values `x` on `wire` ('bf16': uint16 bits; 'int8': int8 and
    one fp32 scale per INT8_BLOCK values)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if wire == "bf16":
        u = x.view(np.uint32)
        rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
        return (rounded >> np.uint32(16)).astype(np.uint16), np.ones(0, np.float32)
    if wire == "int8":
        scales = int8_scales(x)
        q = np.clip(np.rint(x / np.repeat(scales, INT8_BLOCK)[:x.size]), -INT8_MAX, INT8_MAX).astype(np.int8)
        return q, scales
    raise ValueError(f"not a lossy wire format: {wire!r}")


def decode(payload: np.ndarray, scales: np.ndarray, wire: str) -> np.ndarray:
    """fp32 values of an encoded payload."""
    if wire == "bf16":
        return (payload.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if wire == "int8":
        return payload.astype(np.float32) * np.repeat(scales, INT8_BLOCK)[:payload.size]
    raise ValueError(f"not a lossy wire format: {wire!r}")


def int8_scales(x: np.ndarray) -> np.ndarray:
    """absmax / 127 per block of INT8_BLOCK values (the last block may be short); 1 if all zero."""
    blocks = -(-x.size // INT8_BLOCK)
    padded = np.zeros(blocks * INT8_BLOCK, np.float32)
    padded[:x.size] = np.abs(x)
    amax = padded.reshape(blocks, INT8_BLOCK).max(axis=1) if blocks else np.zeros(0, np.float32)
    return np.where(amax > 0, amax / np.float32(INT8_MAX), np.float32(1.0)).astype(np.float32)


def roundtrip(x: np.ndarray, wire: str) -> np.ndarray:
    return decode(*encode(x, wire), wire)


def payload_bytes(numel: int, wire: str) -> int:
    """Bytes of one encoded shard of `numel` elements (int8: its scales first, then the values)."""
    if wire == "bf16":
        return 2 * numel
    return SCALE_BYTES * -(-numel // INT8_BLOCK) + numel
