"""MemoryRegion: the tree QEMU's devices build (``system/memory.c``).

This foundation covers RAM and container regions with prioritised subregions
and per-client dirty-log masks. Alias, MMIO/I/O and ROM-device regions belong
to the memory-API issue and raise a clear error if asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ..dirty.ramlist import RAMBlock

# Dirty memory clients (include/system/ram_addr.h: DIRTY_MEMORY_VGA 0, CODE 1, MIGRATION 2), as masks.
DIRTY_MEMORY_VGA = 1 << 0
DIRTY_MEMORY_CODE = 1 << 1
DIRTY_MEMORY_MIGRATION = 1 << 2


@dataclass(eq=False)
class MemoryRegion:
    name: str
    size: int
    ram_block: Optional["RAMBlock"] = None  # set for RAM regions
    enabled: bool = True
    readonly: bool = False
    dirty_log_mask: int = 0  # clients enabled by memory_region_set_log (e.g. VGA)
    subregions: list["Subregion"] = field(default_factory=list)
    container: Optional["MemoryRegion"] = None

    @property
    def is_ram(self) -> bool:
        return self.ram_block is not None

    def add_subregion(self, offset: int, child: "MemoryRegion", priority: int = 0) -> None:
        """``memory_region_add_subregion_overlap``: newer wins over equal priority (inserted first)."""
        if child.container is not None:
            raise ValueError(f"memory region {child.name!r} is already mapped in {child.container.name!r}")
        child.container = self
        index = next((i for i, s in enumerate(self.subregions) if priority >= s.priority), len(self.subregions))
        self.subregions.insert(index, Subregion(offset, priority, child))

    def del_subregion(self, child: "MemoryRegion") -> None:
        self.subregions = [s for s in self.subregions if s.mr is not child]
        child.container = None


@dataclass(frozen=True)
class Subregion:
    addr: int
    priority: int
    mr: MemoryRegion
