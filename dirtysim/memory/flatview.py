"""FlatView: an AddressSpace's region tree rendered into sorted, non-overlapping ranges.

``render_memory_region`` / ``flatview_simplify`` in ``system/memory.c``:
subregions are visited in priority order (higher first) and each only fills the
holes left by those before it; an alias renders its target's range; adjacent
ranges of the same region, contiguous in it and with equal attributes, merge.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, replace
from typing import Callable

from .region import MemoryRegion

ADDR_SPACE_END = 1 << 64


@dataclass(frozen=True)
class FlatRange:
    addr: int  # guest-physical start
    size: int
    mr: MemoryRegion  # the terminal region: aliases are resolved
    offset_in_region: int
    dirty_log_mask: int
    readonly: bool
    romd_mode: bool

    @property
    def end(self) -> int:
        return self.addr + self.size

    def clip(self, offset: int, size: int) -> tuple[int, int] | None:
        """Where bytes [offset, offset+size) of ``mr`` appear in this range, as (address, size), if at all.

        ``flat_range_coalesced_io_notify``: shift into the address space, then intersect.
        """
        start = self.addr - self.offset_in_region + offset
        if not addrrange_intersects(self.addr, self.size, start, size):
            return None
        lo = max(start, self.addr)
        return lo, min(start + size, self.end) - lo


def addrrange_intersects(start1: int, size1: int, start2: int, size2: int) -> bool:
    """``addrrange_intersects``: either range contains the other's start (so a 0-size range can match)."""
    return start1 <= start2 < start1 + size1 or start2 <= start1 < start2 + size2


def flatrange_equal(a: FlatRange, b: FlatRange) -> bool:
    """``flatrange_equal``: same mapping; the dirty-log mask is deliberately not compared."""
    return (a.mr is b.mr and a.addr == b.addr and a.size == b.size and a.offset_in_region == b.offset_in_region
            and a.romd_mode == b.romd_mode and a.readonly == b.readonly)


def can_merge(a: FlatRange, b: FlatRange) -> bool:
    """``can_merge``: contiguous in the address space and in the region, all attributes equal."""
    return (a.end == b.addr and a.mr is b.mr and a.offset_in_region + a.size == b.offset_in_region
            and a.dirty_log_mask == b.dirty_log_mask and a.romd_mode == b.romd_mode and a.readonly == b.readonly)


def render(root: MemoryRegion, dirty_log_mask_of: Callable[[MemoryRegion], int]) -> list[FlatRange]:
    """``generate_memory_topology``. ``dirty_log_mask_of`` is ``memory_region_get_dirty_log_mask``."""
    view: list[FlatRange] = []
    _render(view, root, 0, 0, ADDR_SPACE_END, False, dirty_log_mask_of)
    return flatview_simplify(view)


def _render(view: list[FlatRange], mr: MemoryRegion, base: int, clip_start: int, clip_end: int,
            readonly: bool, mask_of: Callable[[MemoryRegion], int]) -> None:
    """``render_memory_region``: ranges already in ``view`` obscure ``mr``."""
    if not mr.enabled:
        return
    base += mr.addr
    readonly = readonly or mr.readonly
    start, end = max(base, clip_start), min(base + mr.size, clip_end)
    if start >= end:
        return
    if mr.alias is not None:
        _render(view, mr.alias, base - mr.alias.addr - mr.alias_offset, start, end, readonly, mask_of)
        return
    for sub in mr.subregions:
        _render(view, sub, base, start, end, readonly, mask_of)
    if mr.terminates:
        template = FlatRange(0, 0, mr, 0, mask_of(mr), readonly, mr.romd_mode)
        for a, b in _holes(view, start, end):
            insort(view, replace(template, addr=a, size=b - a, offset_in_region=a - base), key=lambda fr: fr.addr)


def _holes(view: list[FlatRange], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) that no range in the sorted ``view`` covers."""
    holes, cursor = [], start
    for fr in view:
        if fr.end <= cursor:
            continue
        if fr.addr >= end:
            break
        if fr.addr > cursor:
            holes.append((cursor, fr.addr))
        cursor = fr.end
    if cursor < end:
        holes.append((cursor, end))
    return holes


def flatview_simplify(view: list[FlatRange]) -> list[FlatRange]:
    """``flatview_simplify``: merge neighbours that ``can_merge``."""
    out: list[FlatRange] = []
    for fr in view:
        if out and can_merge(out[-1], fr):
            out[-1] = replace(out[-1], size=out[-1].size + fr.size)
        else:
            out.append(fr)
    return out
