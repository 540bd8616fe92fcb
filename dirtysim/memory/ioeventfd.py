"""ioeventfds: guest writes that signal an eventfd instead of exiting to QEMU (``system/memory.c``).

A region keeps its ioeventfds sorted, at offsets in the region; an AddressSpace
keeps the list placed at guest-physical addresses by its current FlatView. On
every commit the two sorted lists are diffed (``address_space_add_del_ioeventfds``).
The EventNotifier is represented by its name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

from .flatview import FlatRange, addrrange_intersects


@dataclass(frozen=True)
class MemoryRegionIoeventfd:
    addr: int  # offset in the region, or guest-physical address once placed in an AddressSpace
    size: int  # access size in bytes; 0 matches any size
    match_data: bool
    data: int
    fd: str

    def _order(self) -> tuple:
        return self.addr, self.size, self.match_data, self.data if self.match_data else 0, self.fd


def ioeventfd_before(a: MemoryRegionIoeventfd, b: MemoryRegionIoeventfd) -> bool:
    """``memory_region_ioeventfd_before``: by address, size, match_data, data (if matched), notifier."""
    return a._order() < b._order()


def ioeventfd_equal(a: MemoryRegionIoeventfd, b: MemoryRegionIoeventfd) -> bool:
    """``memory_region_ioeventfd_equal``: what ``memory_region_del_eventfd`` looks for; size 0 is a wildcard."""
    return a.addr == b.addr and (not a.size or not b.size or (
        a.size == b.size and a.match_data == b.match_data and (not a.match_data or a.data == b.data)
        and a.fd == b.fd))


def flatview_ioeventfds(view: list[FlatRange]) -> list[MemoryRegionIoeventfd]:
    """``address_space_update_ioeventfds``: every ioeventfd of a rendered region that its range shows.

    Sorted by construction (ranges in address order, each region's list sorted).
    """
    out = []
    for fr in view:
        shift = fr.addr - fr.offset_in_region
        for fd in fr.mr.ioeventfds:
            if addrrange_intersects(fr.addr, fr.size, fd.addr + shift, fd.size):
                out.append(replace(fd, addr=fd.addr + shift))
    return out


def ioeventfd_diff(old: list[MemoryRegionIoeventfd],
                   new: list[MemoryRegionIoeventfd]) -> Iterator[tuple[str, MemoryRegionIoeventfd]]:
    """``address_space_add_del_ioeventfds``: the symmetric difference as ("eventfd_del"|"eventfd_add", fd)."""
    i = j = 0
    while i < len(old) or j < len(new):
        if i < len(old) and (j == len(new) or ioeventfd_before(old[i], new[j])):
            yield "eventfd_del", old[i]
            i += 1
        elif j < len(new) and (i == len(old) or ioeventfd_before(new[j], old[i])):
            yield "eventfd_add", new[j]
            j += 1
        else:
            i += 1
            j += 1
