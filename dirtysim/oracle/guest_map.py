"""Which RAM page a guest write lands on: the oracle's own map of the guest.

The page oracle must not learn where a write went from the machinery it judges
(the FlatView renderer, KVM memslots, vhost memory tables): a wrong memslot would
then move the write and its dirty bit together, and the loss would not show. So
it resolves guest-physical addresses itself, by the obvious rule QEMU's
``generate_memory_topology`` implements: walk the region tree from the root,
skip disabled regions, follow aliases, take the highest-priority subregion that
covers the address (the newer one at equal priority; a container's holes show
what lies below it), and stop at a region that terminates. Read-only regions
(ROMs) and non-RAM regions (MMIO, ROM devices) keep their contents: a guest
write there changes no RAM page. The address space is cut at every region
edge, and each piece is resolved at its first address.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from ..memory.region import MemoryRegion
from ..scenario.schema import PAGE_SIZE


def resolve(mr: MemoryRegion, addr: int, readonly: bool = False):
    """(region, offset in it, read-only) that address ``addr`` of ``mr`` reaches, or None."""
    if not mr.enabled or not 0 <= addr < mr.size:
        return None
    readonly = readonly or mr.readonly
    if mr.alias is not None:
        return resolve(mr.alias, addr + mr.alias_offset, readonly)
    for sub in mr.subregions:  # highest priority first, the newest first at equal priority
        hit = resolve(sub, addr - sub.addr, readonly)
        if hit is not None:
            return hit
    return (mr, addr, readonly) if mr.terminates else None


def _edges(mr: MemoryRegion, base: int, out: set) -> None:
    """Every address where what ``mr`` (placed at ``base``) shows may change."""
    if not mr.enabled:
        return
    out.update((base, base + mr.size))
    if mr.alias is not None:
        _edges(mr.alias, base - mr.alias_offset - mr.alias.addr, out)
        return
    for sub in mr.subregions:
        _edges(sub, base + sub.addr, out)


class GuestMap:
    """Writable guest RAM as (guest page, pages, RAM page) runs, from the region tree under ``root``."""

    def __init__(self, root: MemoryRegion):
        self.root = root
        self.refresh()

    def refresh(self) -> None:
        """Re-resolve the map (after any change of the memory map)."""
        edges: set[int] = set()
        _edges(self.root, 0, edges)
        runs: list[list[int]] = []  # [first guest byte, bytes, first ram byte]
        for a, b in pairwise(sorted(e for e in edges if 0 <= e <= self.root.size)):
            hit = resolve(self.root, a)
            if hit is None or hit[0].kind != "ram" or hit[2]:
                continue
            mr, offset, _ = hit
            ram = mr.ram_block.offset + offset
            if a % PAGE_SIZE or b % PAGE_SIZE or ram % PAGE_SIZE:
                raise ValueError(f"RAM of {mr.name!r} at {a:#x}..{b:#x} is not page aligned")
            if runs and runs[-1][0] + runs[-1][1] == a and runs[-1][2] + runs[-1][1] == ram:
                runs[-1][1] += b - a
            else:
                runs.append([a, b - a, ram])
        # rows: first guest page, pages, first RAM page of each run (the write kernels' ``gmap``)
        self.table = np.ascontiguousarray(np.array(runs, dtype=np.int64).reshape(-1, 3).T // PAGE_SIZE)
