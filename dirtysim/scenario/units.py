"""Parse human units used in scenario files into integers, and write them back.

Sizes become bytes, rates bytes per second, durations integer nanoseconds (the
simulator clock). Binary prefixes (KiB, MiB, ...) are powers of 1024, decimal
ones (KB, MB, ...) powers of 1000. QEMU's own size suffixes are accepted too:
``qemu_strtosz`` (``util/cutils.c``) reads one letter B, K, M, G, T, P or E in
either case as a power of 1024, so ``16G`` is 16 GiB and ``4k`` 4 KiB.
``max-bandwidth`` is bytes per second (``qapi/migration.json``).
"""

from __future__ import annotations

import re
from fractions import Fraction

SIZE_UNITS = {
    "B": 1,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}
QEMU_SUFFIXES = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
# Rates: bytes per second, or bits per second for the network-style units.
BIT_RATE_UNITS = {
    "bit/s": Fraction(1, 8), "Kbit/s": Fraction(10**3, 8), "Mbit/s": Fraction(10**6, 8),
    "Gbit/s": Fraction(10**9, 8), "Tbit/s": Fraction(10**12, 8),
}
RATE_UNITS = {**{f"{u}/s": v for u, v in SIZE_UNITS.items()}, **BIT_RATE_UNITS}
DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "min": 60 * 10**9}
MAX_DIGITS = 64  # a number's digits: far more than any value below MAX_VALUE needs
MAX_VALUE = (1 << 63) - 1  # every quantity is an int64 in the event log

_NUMBER = re.compile(r"^\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z/]*)\s*$")


def _scale(unit: str, units: dict, qemu_suffix: str | None) -> Fraction | int | None:
    """The unit's multiplier; with ``qemu_suffix`` ("" or "/s") also QEMU's one-letter suffixes."""
    if unit in units:
        return units[unit]
    if qemu_suffix is not None and unit.endswith(qemu_suffix):
        letter = unit[: len(unit) - len(qemu_suffix)].upper()
        return QEMU_SUFFIXES.get(letter) if len(letter) == 1 else None
    return None


def _parse(text: object, units: dict, what: str, bare_unit: str | None, qemu_suffix: str | None = None) -> int:
    if isinstance(text, bool):
        raise ValueError(f"expected a {what}, not a boolean")
    if isinstance(text, int):
        if bare_unit is None:
            raise ValueError(f"a {what} needs a unit")
        if text > MAX_VALUE:  # before any str(): Python refuses to print an int of over 4300 digits
            raise ValueError(f"a {what} this large is not supported")
        text = f"{text}{bare_unit}"
    if isinstance(text, float):
        raise ValueError(f"a {what} needs a unit" if bare_unit is None else f"a {what} must be a whole number")
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
    scale = _scale(unit, units, qemu_suffix)
    if scale is None:
        raise ValueError(f"unknown unit {unit!r}")
    if len(m["num"]) > MAX_DIGITS:
        raise ValueError(f"a {what} this large is not supported" if "." not in m["num"]
                         else f"{text[:20]!r}... has more digits than any {what} needs")
    value = Fraction(m["num"]) * scale
    if value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of the base unit")
    if value > MAX_VALUE:
        raise ValueError(f"a {what} this large is not supported")
    return int(value)


def parse_size(text: object) -> int:
    """'8GiB' -> 8589934592 bytes; QEMU's '16G' -> 16 GiB. A bare integer is bytes."""
    return _parse(text, SIZE_UNITS, "size", "B", "")


def parse_rate(text: object) -> int:
    """'128MiB/s' -> 134217728 bytes/s; '10Gbit/s' -> 1250000000 bytes/s; '1G/s' -> 1 GiB/s."""
    return _parse(text, RATE_UNITS, "rate", None, "/s")


def parse_duration(text: object) -> int:
    """'300ms' -> 300000000 ns. Durations always need a unit."""
    return _parse(text, DURATION_UNITS, "duration", None)


def _exact(n: int, units: list[tuple[str, int | Fraction]], zero: str) -> str:
    """``n`` in the first unit that represents it exactly."""
    if n == 0:
        return zero
    for name, scale in units:
        q = Fraction(n) / scale
        if q.denominator == 1:
            return f"{q.numerator}{name}"
    raise AssertionError("the last unit is the base unit")


def format_size(n: int) -> str:
    """Bytes with the largest binary unit that divides them exactly: 17179869184 -> '16GiB'."""
    return _exact(n, [(u, SIZE_UNITS[u]) for u in ("TiB", "GiB", "MiB", "KiB", "B")], "0B")


def format_rate(n: int) -> str:
    """Bytes/s as '128MiB/s' or, for network speeds, '10Gbit/s'."""
    order = ["TiB/s", "GiB/s", "MiB/s", "KiB/s", "Tbit/s", "Gbit/s", "Mbit/s", "Kbit/s", "B/s"]
    return _exact(n, [(u, RATE_UNITS[u]) for u in order], "0B/s")


def format_duration(ns: int) -> str:
    """Nanoseconds as '300ms', '2s', '100us'."""
    return _exact(ns, [(u, DURATION_UNITS[u]) for u in ("s", "ms", "us", "ns")], "0s")
