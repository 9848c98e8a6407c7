"""Human units in, SI out: '400Gbps' -> bytes/s, '21ms' -> s, '1000km' -> m, '1GiB' -> bytes.

Bandwidth: bits (bps, bit/s, Kbps..Tbps) or bytes (B/s, KB/s..TB/s, KiB/s..TiB/s).
Decimal prefixes are powers of 1000, binary (Ki, Mi, Gi, Ti) powers of 1024.
"""
from __future__ import annotations

import re

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_DEC = {"": 1.0, "K": 1e3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
_DIST = {"m": 1.0, "km": 1e3, "mi": 1609.344}
_FLOPS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


class UnitError(ValueError):
    """A quantity that does not parse; the message says what forms are allowed."""


# Physical ranges of a quantity given with a unit (SI inside): a value outside is a typo or an
# attack, not a network. Zero passes (each field says whether it allows 0).
# what -> (smallest non-zero value, largest value, the range as the message reads)
_RANGES = {
    "bandwidth": (0.125, 1e15, "1 bit/s .. 8 Pbit/s"),     # 1 bit/s .. 1 PB/s (>1000x today's NVLink)
    "duration": (1e-12, 1e7, "1 ps .. 1e7 s (116 days)"),
    "distance": (1e-3, 1e8, "1 mm .. 100,000 km"),          # 2.5x around the Earth
    "size": (1, 2.0**60, "1 B .. 1 EiB"),
    "FLOP rate": (1.0, 1e21, "1 FLOP/s .. 1 ZFLOP/s"),
}


def _physical(value: float, what: str, text: object) -> float:
    low, high, shown = _RANGES[what]
    if value != 0 and not low <= value <= high:  # also refuses inf and NaN (1e999 parses as inf)
        raise UnitError(f"{what} {text!r} is outside the physical range {shown}")
    return value


def _split(text: object, what: str, example: str, allow_bare: bool = False) -> tuple[float, str]:
    if isinstance(text, bool):
        raise UnitError(f"expected a {what} such as {example!r}, got {text!r}")
    if isinstance(text, (int, float)):
        raise UnitError(f"expected a {what} with a unit such as {example!r}, got the bare number {text!r}")
    if not isinstance(text, str):
        raise UnitError(f"expected a {what} such as {example!r}, got {text!r}")
    m = re.fullmatch(_NUM + r"\s*(\S*)", text.strip())
    if not m:
        raise UnitError(f"expected a {what} such as {example!r}, got {text!r}")
    if not m.group(2) and not allow_bare:
        raise UnitError(f"expected a {what} with a unit such as {example!r}, got {text!r}")
    return float(m.group(1)), m.group(2)


def _prefix(unit: str, suffixes: tuple[str, ...]) -> tuple[float, str] | None:
    for suf in suffixes:
        if unit.endswith(suf):
            pre = unit[: -len(suf)]
            if pre in _BIN:
                return _BIN[pre], suf
            if pre in _DEC:
                return _DEC[pre], suf
    return None


def parse_bandwidth(text: object) -> float:
    """'400Gbps' -> 5e10 bytes/s; '900GB/s' -> 9e11; '1Gbit/s' -> 1.25e8."""
    value, unit = _split(text, "bandwidth", "400Gbps")
    bits = _prefix(unit, ("bit/s", "bps", "b/s"))
    if bits:
        return _physical(value * bits[0] / 8.0, "bandwidth", text)
    byts = _prefix(unit, ("B/s", "Bps"))
    if byts:
        return _physical(value * byts[0], "bandwidth", text)
    raise UnitError(f"unknown bandwidth unit {unit!r} in {text!r}; use e.g. Gbps, Gbit/s, GB/s, GiB/s")


def parse_time(text: object) -> float:
    """'21ms' -> 0.021 s."""
    value, unit = _split(text, "duration", "21ms")
    if unit not in _TIME:
        raise UnitError(f"unknown time unit {unit!r} in {text!r}; use one of {', '.join(_TIME)}")
    return _physical(value * _TIME[unit], "duration", text)


def parse_distance(text: object) -> float:
    """'1000km' -> 1e6 m."""
    value, unit = _split(text, "distance", "1000km")
    if unit not in _DIST:
        raise UnitError(f"unknown distance unit {unit!r} in {text!r}; use one of {', '.join(_DIST)}")
    return _physical(value * _DIST[unit], "distance", text)


def parse_size(text: object) -> int:
    """'1GiB' -> 1073741824 bytes; '4MB' -> 4000000; '512' (bare integer string) -> 512."""
    value, unit = _split(text, "size", "1GiB", allow_bare=True)
    if unit in ("", "B"):
        factor = 1.0
    else:
        pre = _prefix(unit, ("B",))
        if not pre:
            raise UnitError(f"unknown size unit {unit!r} in {text!r}; use e.g. B, KB, MB, GB, KiB, MiB, GiB")
        factor = pre[0]
    size = _physical(value * factor, "size", text)
    if size != int(size):
        raise UnitError(f"size {text!r} is not a whole number of bytes")
    return int(size)


def parse_flops(text: object) -> float:
    """'989TFLOPS' -> 9.89e14 FLOP/s ('989 TFLOP/s' also accepted)."""
    value, unit = _split(text, "FLOP rate", "989TFLOPS", allow_bare=True)
    for suf in ("FLOPS", "FLOP/s", "flops"):
        if unit.endswith(suf) and unit[: -len(suf)] in _FLOPS:
            return _physical(value * _FLOPS[unit[: -len(suf)]], "FLOP rate", text)
    raise UnitError(f"unknown FLOP-rate unit {unit!r} in {text!r}; use e.g. TFLOPS or PFLOPS")


def fmt_bytes(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.2f} us"


def fmt_bandwidth(bps: float) -> str:
    bits = bps * 8
    for unit, f in (("Tbps", 1e12), ("Gbps", 1e9), ("Mbps", 1e6)):
        if bits >= f:
            return f"{bits / f:.4g} {unit}"
    return f"{bits:.4g} bps"
