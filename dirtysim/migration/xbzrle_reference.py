"""Slow, obviously correct XBZRLE on real page bytes: the twin of ``xbzrle.py``.

The kernel there counts changed bytes and keeps only tags and ages; this keeps
copies of the pages in the cache and encodes real bytes with a plain loop over
the format of ``migration/xbzrle.c`` (a page is zero-run length, non-zero-run
length, the non-zero run's bytes, repeated; lengths are ULEB128; the last zero
run is left out), with the encoder's bounds checks. ``decode`` undoes it, so
tests can check that an encoding rebuilds the page. Tests drive both on the same
guest writes (``tests/test_xbzrle.py``).
"""

from __future__ import annotations

import numpy as np

from ..dirty.kernels import NORMAL_PAGE_BYTES, PAGE_HEADER, PAGE_SIZE, ZERO_PAGE_BYTES
from .xbzrle import (CACHE_MISS_NORMAL, CACHED_PAGE_LIFETIME, NORMAL_PAGES, NTOTALS, OVERFLOW_NORMAL, SKIPPED_PAGES,
                     SKIPPED_UNCHANGED, WIRE_BYTES, XBZRLE_BYTES, XBZRLE_CACHE_MISS, XBZRLE_OVERFLOW, XBZRLE_PAGES,
                     XBZRLE_RECORD_BYTES, XBZRLE_SENT, ZERO_PAGE, ZERO_PAGES)


def uleb128(n: int) -> bytes:
    """ULEB128: 7 bits a byte, low bits first, the top bit set on every byte but the last."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(old: np.ndarray, new: np.ndarray, dlen: int = PAGE_SIZE) -> bytes | None:
    """XBZRLE of ``new`` against ``old``; None when it does not fit in ``dlen`` bytes.

    Before each length the encoder wants room for two more bytes, and before a
    run's bytes room for all of them; an unchanged page encodes to nothing.
    """
    out = bytearray()
    i, n = 0, len(new)
    while i < n:
        if len(out) + 2 > dlen:
            return None
        j = i
        while j < n and old[j] == new[j]:
            j += 1
        if j == n:
            break  # the last zero run is not sent
        out += uleb128(j - i)
        if len(out) + 2 > dlen:
            return None
        k = j
        while k < n and old[k] != new[k]:
            k += 1
        out += uleb128(k - j)
        if len(out) + (k - j) > dlen:
            return None
        out += bytes(new[j:k])
        i = k
    return bytes(out)


def decode(data: bytes, old: np.ndarray) -> np.ndarray:
    """Apply an encoding to a copy of ``old``."""
    page, pos, at = old.copy(), 0, 0

    def length() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while pos < len(data):
        at += length()
        run = length()
        page[at:at + run] = np.frombuffer(data[pos:pos + run], dtype=np.uint8)
        pos += run
        at += run
    return page


class ReferenceXbzrle:
    """``XbzrleCache`` with a dict of page copies for the cache and real encodings."""

    def __init__(self, cache_size: int):
        self.nslots = cache_size // PAGE_SIZE
        self.cache: dict[int, tuple[int, int, np.ndarray]] = {}  # slot -> (page, age, copy)
        self.totals = [0] * NTOTALS

    def insert(self, page: int, data: np.ndarray, age: int) -> None:
        slot = page % self.nslots
        held = self.cache.get(slot)
        if held is not None and held[0] != page and held[1] + CACHED_PAGE_LIFETIME > age:
            return
        self.cache[slot] = (page, age, data.copy())

    def send(self, page: int, data: np.ndarray, age: int, last_stage: bool, extra: int) -> tuple[int, int, int]:
        """One page found dirty: (code, bytes on the wire, header bytes still owed)."""
        t = self.totals
        if not data.any():
            self.insert(page, np.zeros(PAGE_SIZE, dtype=np.uint8), age)
            code, wire = ZERO_PAGE, ZERO_PAGE_BYTES + extra
            t[ZERO_PAGES] += 1
        else:
            slot = page % self.nslots
            held = self.cache.get(slot)
            if held is None or held[0] != page:
                t[XBZRLE_CACHE_MISS] += 1
                if not last_stage:
                    self.insert(page, data, age)
                code, wire = CACHE_MISS_NORMAL, NORMAL_PAGE_BYTES + extra
                t[NORMAL_PAGES] += 1
            else:
                t[XBZRLE_PAGES] += 1
                enc = encode(held[2], data)
                if enc is not None:
                    assert np.array_equal(decode(enc, held[2]), data)
                # the hit refreshes the age; the copy follows the page unless skipped or in the last stage
                copy = data.copy() if enc != b"" and not last_stage else held[2]
                self.cache[slot] = (page, age, copy)
                if enc == b"":
                    t[SKIPPED_PAGES] += 1
                    return SKIPPED_UNCHANGED, 0, extra
                if enc is None:
                    t[XBZRLE_OVERFLOW] += 1
                    t[XBZRLE_BYTES] += PAGE_SIZE
                    code, wire = OVERFLOW_NORMAL, NORMAL_PAGE_BYTES + extra
                    t[NORMAL_PAGES] += 1
                else:
                    code, wire = XBZRLE_SENT, PAGE_HEADER + extra + XBZRLE_RECORD_BYTES + len(enc)
                    t[XBZRLE_BYTES] += wire - PAGE_HEADER
        t[WIRE_BYTES] += wire
        return code, wire, 0
