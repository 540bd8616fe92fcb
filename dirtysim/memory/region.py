"""MemoryRegion: the tree QEMU's devices build (``system/memory.c``, ``include/system/memory.h``).

This module holds the data and the raw tree edits only. Edits that must reach
listeners go through the ``MemorySystem.memory_region_*`` helpers, which wrap
them in a transaction the way QEMU's functions of the same name do.

Kinds (QEMU keeps them as flags; ``memory_region_type`` names them):

* ``container``: only subregions (``memory_region_init``);
* ``ram``: backed by a RAMBlock (``memory_region_init_ram``; a ROM is RAM with
  ``readonly``, ``memory_region_init_rom``);
* ``rom_device``: a RAMBlock read directly while in ROMD mode, writes trap
  (``memory_region_init_rom_device``); ``memory_region_is_ram`` is false for it;
* ``ram_device``: host memory QEMU does not own, such as a vfio device's
  mmap'd BAR (``memory_region_init_ram_device_ptr``): ``memory_region_is_ram``
  and ``memory_region_is_ram_device`` are true. QEMU gives it a RAMBlock
  (``qemu_ram_alloc_from_ptr``) that nobody marks migratable
  (``vmstate_register_ram`` is never called for it), so ``ramblock_is_ignored``
  holds and migration skips it, and ``memory_region_get_dirty_log_mask`` never
  adds DIRTY_MEMORY_MIGRATION (it needs ``qemu_ram_is_migratable``). dirtysim
  keeps no RAMBlock for it at all [departure: the block would only be
  skipped; the one effect lost is TCG's DIRTY_MEMORY_CODE bit on it];
* ``io``: MMIO / port I/O, every access traps (``memory_region_init_io``);
* ``alias``: a window ``[alias_offset, alias_offset + size)`` onto another
  region (``memory_region_init_alias``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ..dirty.ramlist import RAMBlock
    from .ioeventfd import MemoryRegionIoeventfd

# Dirty memory clients (include/system/ram_addr.h); a dirty-log mask has bit ``1 << client``.
DIRTY_MEMORY_VGA = 0
DIRTY_MEMORY_CODE = 1
DIRTY_MEMORY_MIGRATION = 2

KINDS = ("container", "ram", "ram_device", "rom_device", "io", "alias")


@dataclass(eq=False)
class MemoryRegion:
    name: str
    size: int
    ram_block: Optional["RAMBlock"] = None
    kind: Optional[str] = None  # one of KINDS; default: "ram" with a ram_block, else "container"
    alias: Optional["MemoryRegion"] = None
    alias_offset: int = 0
    enabled: bool = True
    readonly: bool = False
    romd_mode: bool = True  # memory_region_initfn sets it for every region
    dirty_log_mask: int = 0  # clients enabled by memory_region_set_log (VGA)
    vga_logging_count: int = 0
    addr: int = 0  # offset in the container
    priority: int = 0
    container: Optional["MemoryRegion"] = None
    subregions: list["MemoryRegion"] = field(default_factory=list)  # highest priority first
    ioeventfds: list["MemoryRegionIoeventfd"] = field(default_factory=list)  # sorted
    coalesced: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) in the region

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = "ram" if self.ram_block is not None else "container"
        if self.kind not in KINDS:
            raise ValueError(f"memory region {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if (self.ram_block is not None) != (self.kind in ("ram", "rom_device")):
            raise ValueError(f"memory region {self.name!r}: a {self.kind} region "
                             f"{'needs' if self.ram_block is None else 'has no'} RAMBlock")
        if (self.alias is not None) != (self.kind == "alias"):
            raise ValueError(f"memory region {self.name!r}: only an alias region has an alias target")

    def __repr__(self) -> str:
        return f"MemoryRegion({self.name!r}, {self.kind}, size={self.size:#x})"

    @property
    def terminates(self) -> bool:
        """``mr->terminates``: the region renders itself (not only its subregions)."""
        return self.kind in ("ram", "ram_device", "rom_device", "io")

    @property
    def is_ram(self) -> bool:
        """``memory_region_is_ram``: a ROM device is not RAM even though it has a RAMBlock; a RAM device is."""
        return self.kind in ("ram", "ram_device")

    @property
    def is_ram_device(self) -> bool:
        """``memory_region_is_ram_device``."""
        return self.kind == "ram_device"

    @property
    def is_romd(self) -> bool:
        """``memory_region_is_romd``: a ROM device whose reads go straight to its RAM (KVM maps it read-only)."""
        return self.kind == "rom_device" and self.romd_mode

    @property
    def is_rom(self) -> bool:
        """``memory_region_is_rom``."""
        return self.is_ram and self.readonly

    def add_subregion(self, offset: int, child: "MemoryRegion", priority: int = 0) -> None:
        """``memory_region_add_subregion_overlap`` without the transaction: newer wins at equal priority."""
        if child.container is not None:
            raise ValueError(f"memory region {child.name!r} is already mapped in {child.container.name!r}")
        child.container, child.addr, child.priority = self, offset, priority
        index = next((i for i, s in enumerate(self.subregions) if priority >= s.priority), len(self.subregions))
        self.subregions.insert(index, child)

    def del_subregion(self, child: "MemoryRegion") -> None:
        """``memory_region_del_subregion`` without the transaction."""
        if child.container is not self:
            raise ValueError(f"memory region {child.name!r} is not a subregion of {self.name!r}")
        self.subregions.remove(child)
        child.container = None


def memory_region_init(name: str, size: int) -> MemoryRegion:
    """``memory_region_init``: a pure container."""
    return MemoryRegion(name, size, kind="container")


def memory_region_init_ram(name: str, size: int, ram_block: "RAMBlock") -> MemoryRegion:
    """``memory_region_init_ram``."""
    return MemoryRegion(name, size, ram_block=ram_block, kind="ram")


def memory_region_init_rom(name: str, size: int, ram_block: "RAMBlock") -> MemoryRegion:
    """``memory_region_init_rom``: RAM that is read-only to the guest."""
    return MemoryRegion(name, size, ram_block=ram_block, kind="ram", readonly=True)


def memory_region_init_ram_device_ptr(name: str, size: int) -> MemoryRegion:
    """``memory_region_init_ram_device_ptr``: RAM the guest reaches directly, not migrated (see the module doc)."""
    return MemoryRegion(name, size, kind="ram_device")


def memory_region_init_rom_device(name: str, size: int, ram_block: "RAMBlock") -> MemoryRegion:
    """``memory_region_init_rom_device``: starts in ROMD mode."""
    return MemoryRegion(name, size, ram_block=ram_block, kind="rom_device")


def memory_region_init_io(name: str, size: int) -> MemoryRegion:
    """``memory_region_init_io``: MMIO or port I/O."""
    return MemoryRegion(name, size, kind="io")


def memory_region_init_alias(name: str, orig: MemoryRegion, offset: int, size: int) -> MemoryRegion:
    """``memory_region_init_alias``: ``size`` bytes of ``orig`` starting at ``offset``."""
    return MemoryRegion(name, size, kind="alias", alias=orig, alias_offset=offset)
