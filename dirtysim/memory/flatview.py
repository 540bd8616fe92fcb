"""FlatView: an AddressSpace's region tree rendered into sorted, non-overlapping ranges.

``render_memory_region`` / ``flatview_insert`` / ``flatview_simplify`` in
``system/memory.c``: subregions are visited in priority order (higher first) and
each only fills the holes left by those before it; adjacent ranges of the same
region, contiguous in the region and with equal attributes, are merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .region import MemoryRegion


@dataclass(frozen=True)
class FlatRange:
    addr: int  # guest-physical start
    size: int
    mr: MemoryRegion
    offset_in_region: int
    dirty_log_mask: int
    readonly: bool

    @property
    def end(self) -> int:
        return self.addr + self.size

    def same_mapping(self, other: "FlatRange") -> bool:
        """``flatrange_equal``: everything but the dirty-log mask."""
        return (self.mr is other.mr and self.addr == other.addr and self.size == other.size
                and self.offset_in_region == other.offset_in_region and self.readonly == other.readonly)


def render(root: MemoryRegion, dirty_log_mask_of) -> list[FlatRange]:
    """Render ``root`` into a FlatView. ``dirty_log_mask_of(mr)`` is memory_region_get_dirty_log_mask."""
    view: list[FlatRange] = []
    _render(view, root, 0, 0, root.size, False, dirty_log_mask_of)
    return _simplify(view)


def _render(view, mr, base, clip_start, clip_end, readonly, mask_of) -> None:
    if not mr.enabled:
        return
    start, end = max(base, clip_start), min(base + mr.size, clip_end)
    if start >= end:
        return
    readonly = readonly or mr.readonly
    for sub in mr.subregions:
        _render(view, sub.mr, base + sub.addr, start, end, readonly, mask_of)
    if mr.is_ram:
        _insert_holes(view, mr, base, start, end, readonly, mask_of(mr))


def _insert_holes(view, mr, base, start, end, readonly, mask) -> None:
    """Add [start, end) of ``mr`` where ``view`` has nothing yet; keep ``view`` sorted."""
    pieces, cursor = [], start
    for fr in view:
        if fr.end <= cursor or fr.addr >= end:
            continue
        if fr.addr > cursor:
            pieces.append((cursor, fr.addr))
        cursor = max(cursor, fr.end)
    if cursor < end:
        pieces.append((cursor, end))
    for a, b in pieces:
        view.append(FlatRange(a, b - a, mr, a - base, mask, readonly))
    view.sort(key=lambda fr: fr.addr)


def _simplify(view: list[FlatRange]) -> list[FlatRange]:
    out: list[FlatRange] = []
    for fr in view:
        prev = out[-1] if out else None
        if (prev is not None and prev.mr is fr.mr and prev.end == fr.addr
                and prev.offset_in_region + prev.size == fr.offset_in_region
                and prev.dirty_log_mask == fr.dirty_log_mask and prev.readonly == fr.readonly):
            out[-1] = FlatRange(prev.addr, prev.size + fr.size, fr.mr, prev.offset_in_region, fr.dirty_log_mask,
                                fr.readonly)
        else:
            out.append(fr)
    return out
