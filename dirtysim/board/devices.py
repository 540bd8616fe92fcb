"""The memory regions PCI devices create when they are realized: their BARs, registered but not mapped.

A BAR appears in the guest-physical map only when the guest (or the firmware)
programs it (``pci_update_mappings``; dirtysim's timeline ``bar`` action,
``Machine.map_bar``). Until then these regions belong to no address space and
no listener sees them, although building them runs transactions (begin/commit
on every listener) exactly as QEMU's ``memory_region_add_subregion`` and
``memory_region_set_log`` do.
"""

from __future__ import annotations

from typing import Callable

from ..memory.address_space import MemorySystem
from ..memory.region import (DIRTY_MEMORY_VGA, MemoryRegion, memory_region_init_io, memory_region_init_ram_device_ptr)


def vfio_bar_register(memory: MemorySystem, host: str, index: int, size: int, mmap: bool) -> MemoryRegion:
    """``vfio_bar_register`` (hw/vfio/pci.c): the BAR that ``pci_register_bar`` gets, with its regions inside.

    ``"<host> base BAR <n>"`` (MMIO with no ops) holds the device region ``"<host> BAR <n>"``
    (``vfio_region_setup``: MMIO, every access a read/write on the device fd), and ``vfio_region_mmap``
    lays the mmap'd part over it as a RAM device, ``"<host> BAR <n> mmaps[0]"``
    (``memory_region_init_ram_device_ptr``): guest accesses go straight to the device, KVM maps it as a
    memslot and vfio maps it for peer-to-peer DMA. ``mmap`` False is ``x-no-mmap=on``: only MMIO.

    [departure: one mmap covering the whole BAR; QEMU leaves out the pages of an MSI-X table or PBA that
    lives in the BAR (``vfio_msix_early_setup``, sparse mmaps), which stay MMIO. dirtysim models no MSI-X.]
    """
    bar = memory_region_init_io(f"{host} base BAR {index}", size)
    region = memory_region_init_io(f"{host} BAR {index}", size)
    memory.memory_region_add_subregion(bar, 0, region)
    if mmap:
        memory.memory_region_add_subregion(region, 0, memory_region_init_ram_device_ptr(
            f"{host} BAR {index} mmaps[0]", size))
    return bar


def vga_common_init(memory: MemorySystem, vram_size: int, make_ram: Callable[[str, int], MemoryRegion]) -> MemoryRegion:
    """``vga_common_init`` (hw/display/vga.c) as ``pci_std_vga_realize`` calls it: the VRAM, its BAR 0.

    ``vga.vram`` is RAM with a RAMBlock that ``vmstate_register_ram`` makes migratable, so migration sends
    it like guest RAM; ``vga_dirty_log_start`` then turns on the VGA dirty-log client
    (``memory_region_set_log(&s->vram, true, DIRTY_MEMORY_VGA)``): once the BAR is mapped, KVM logs
    its memslot from the start, migration or not (``kvm_mem_flags``).

    Not modelled: the display refresh that reads and clears the VGA client's bitmap
    (``vga_draw_graphic``: ``memory_region_snapshot_and_clear_dirty``; dirtysim keeps no VGA bitmap
    and its guest never writes VRAM), BAR 2 ``vga.mmio`` (4 KiB of MMIO, which every listener skips) and
    the legacy ``vga-lowmem`` window, which the pc and q35 boards build themselves (``board.pc``).
    """
    vram = make_ram("vga.vram", vram_size)
    memory.memory_region_set_log(vram, True, DIRTY_MEMORY_VGA)
    return vram
