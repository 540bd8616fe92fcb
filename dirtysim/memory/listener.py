"""MemoryListener: the hooks through which accelerators and devices follow the memory map.

A hook left as ``None`` is not implemented by that listener, exactly like a NULL
function pointer in QEMU's ``struct MemoryListener``; the dispatcher skips it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

from .flatview import FlatRange
from .region import MemoryRegion

# include/system/memory.h
MEMORY_LISTENER_PRIORITY_MIN = 0
MEMORY_LISTENER_PRIORITY_ACCEL = 10
MEMORY_LISTENER_PRIORITY_DEV_BACKEND = 10

HOOKS = (
    "begin", "commit", "region_add", "region_del", "region_nop", "log_start", "log_stop", "log_sync",
    "log_sync_global", "log_clear", "log_global_start", "log_global_stop", "log_global_after_sync",
)


@dataclass(frozen=True)
class MemoryRegionSection:
    """The part of a MemoryRegion visible in an AddressSpace (``MemoryRegionSection``)."""

    mr: MemoryRegion
    offset_within_region: int
    size: int
    offset_within_address_space: int
    readonly: bool = False

    @classmethod
    def of(cls, fr: FlatRange) -> "MemoryRegionSection":
        return cls(fr.mr, fr.offset_in_region, fr.size, fr.addr, fr.readonly)


class MemoryListener:
    """Base listener: subclasses set ``name``/``priority`` and define the hooks they implement."""

    name: ClassVar[str] = "listener"
    priority: int = MEMORY_LISTENER_PRIORITY_MIN

    begin: Optional[Callable[[], None]] = None
    commit: Optional[Callable[[], None]] = None
    region_add: Optional[Callable[[MemoryRegionSection], None]] = None
    region_del: Optional[Callable[[MemoryRegionSection], None]] = None
    region_nop: Optional[Callable[[MemoryRegionSection], None]] = None
    log_start: Optional[Callable[[MemoryRegionSection, int, int], None]] = None
    log_stop: Optional[Callable[[MemoryRegionSection, int, int], None]] = None
    log_sync: Optional[Callable[[MemoryRegionSection], None]] = None
    log_sync_global: Optional[Callable[[bool], None]] = None
    log_clear: Optional[Callable[[MemoryRegionSection], None]] = None
    log_global_start: Optional[Callable[[], bool]] = None
    log_global_stop: Optional[Callable[[], None]] = None
    log_global_after_sync: Optional[Callable[[], None]] = None

    address_space: object = None  # set by memory_listener_register

    def implements(self, hook: str) -> bool:
        return getattr(self, hook) is not None
