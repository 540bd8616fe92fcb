"""Parse human units used in scenario files into integers.

Sizes become bytes, rates bytes per second, durations integer nanoseconds (the
simulator clock). Binary prefixes (KiB, MiB, ...) are powers of 1024, decimal
ones (KB, MB, ...) powers of 1000, as in QEMU's own size suffixes and ``qapi``
documentation (``max-bandwidth`` is bytes per second).
"""

from __future__ import annotations

import re
from fractions import Fraction

SIZE_UNITS = {
    "B": 1,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
# Rates: bytes per second, or bits per second for the network-style units.
RATE_UNITS = {
    **{f"{u}/s": v for u, v in SIZE_UNITS.items()},
    "bit/s": Fraction(1, 8), "Kbit/s": Fraction(10**3, 8), "Mbit/s": Fraction(10**6, 8),
    "Gbit/s": Fraction(10**9, 8), "Tbit/s": Fraction(10**12, 8),
}
DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "min": 60 * 10**9}

_NUMBER = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z/]*)\s*$")


def _parse(text: object, units: dict, what: str, bare_unit: str | None) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a {what}, not a boolean")
    if isinstance(text, int):
        if bare_unit is None:
            raise ValueError(f"a {what} needs a unit")
        text = f"{text}{bare_unit}"
    if not isinstance(text, str):
        raise ValueError(f"expected a {what} string")
    if text.strip().startswith("-"):
        raise ValueError(f"a {what} must not be negative")
    m = _NUMBER.match(text)
    if not m:
        raise ValueError(f"cannot read {text!r} as a {what}")
    unit = m["unit"] or bare_unit
    if unit is None:
        raise ValueError(f"a {what} needs a unit")
    if unit not in units:
        raise ValueError(f"unknown unit {unit!r}")
    value = Fraction(m["num"]) * units[unit]
    if value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of the base unit")
    return int(value)



def parse_size(text: object) -> int:
    """'8GiB' -> 8589934592 bytes. A bare integer is bytes."""
    return _parse(text, SIZE_UNITS, "size", "B")


def parse_rate(text: object) -> int:
    """'128MiB/s' -> 134217728 bytes/s; '10Gbit/s' -> 1250000000 bytes/s."""
    return _parse(text, RATE_UNITS, "rate", None)


def parse_duration(text: object) -> int:
    """'300ms' -> 300000000 ns. Durations always need a unit."""
    return _parse(text, DURATION_UNITS, "duration", None)


def format_size(n: int) -> str:
    """Render bytes with the largest binary unit that divides it exactly."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n and n % SIZE_UNITS[unit] == 0:
            return f"{n // SIZE_UNITS[unit]}{unit}"
    return f"{n}B"
