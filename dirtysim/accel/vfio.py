"""The ``vfio`` listener: the IOMMU maps every RAM section the devices may DMA into (``hw/vfio/listener.c``).

One listener per container (``VFIOContainer.listener``), shared by every device attached to it.

``vfio_listener_region_add`` (``vfio_container_region_add``) maps each section
that ``vfio_listener_valid_section`` accepts with VFIO_IOMMU_MAP_DMA at iova =
guest-physical address: RAM, ROMs (read-only: ``section->readonly``) and RAM
devices (another device's mmap'd BAR: peer-to-peer DMA). MMIO, and ROM devices
(``memory_region_is_ram`` is false for them), are skipped
(``vfio_listener_skipped_section``); ``region_del`` unmaps what was mapped.

Each decision is also written as the line QEMU's trace backend prints for it
(``hw/vfio/trace-events``: ``vfio_listener_region_skip``,
``vfio_listener_region_add_ram``, ``vfio_listener_region_del``).

Not modelled: IOMMU regions (a vIOMMU), RamDiscardManager sections
(virtio-mem), protected memory, device dirty tracking (``log_global_start`` /
``log_sync``), the BAR-sizing rule for sections above 2^63 (dirtysim's address
space ends at 2^52) and the alignment checks (``vfio_listener_valid_section``'s
host-page test, ``vfio_get_section_iova_range``, the RAM device's IOMMU page
test that traces ``vfio_listener_region_add_no_dma_map``): every section
dirtysim builds is whole 4 KiB pages, so none of them can fail (the only
sub-page MMIO over a place a BAR can go is the boards' 1 KiB ``hpet``, and the
schema keeps RAM-holding BARs off it: ``Scenario._bar_fits``).
"""

from __future__ import annotations

from typing import Optional

from ..events import schema as ev
from ..events.log import Recorder
from ..memory.listener import MEMORY_LISTENER_PRIORITY_MIN, MemoryListener, MemoryRegionSection


class VfioListener(MemoryListener):
    name = "vfio"
    priority = MEMORY_LISTENER_PRIORITY_MIN  # vfio_memory_listener sets none

    def __init__(self, recorder: Recorder, device: str):
        """The listener of one container; ``device`` is the first device attached to it."""
        self.recorder = recorder
        self.devices = [device]  # the container's devices (vbasedev->container_next), in attach order
        self.mappings: dict[int, int] = {}  # iova -> size
        self.readonly: set[int] = set()  # iovas mapped without VFIO_DMA_MAP_FLAG_WRITE
        self.calls: list[tuple[str, int, int]] = []  # (map | unmap, iova, size) in order
        self.trace: list[str] = []  # QEMU's trace-event lines, in order
        self.mapped_bytes = 0

    @staticmethod
    def skipped(section: MemoryRegionSection) -> bool:
        """``vfio_listener_skipped_section``: not RAM (``memory_region_is_ram``: RAM devices are RAM)."""
        return section.mr is None or not section.mr.is_ram

    def acts_on(self, hook: str, section: Optional[MemoryRegionSection] = None, *args) -> bool:
        """region_add / region_del map or unmap exactly the sections ``vfio_listener_valid_section`` accepts."""
        if hook in ("region_add", "region_del"):
            return not self.skipped(section)
        return super().acts_on(hook, section, *args)

    def region_add(self, section: MemoryRegionSection) -> None:
        """``vfio_container_region_add``: trace, then VFIO_IOMMU_MAP_DMA (read-only for a read-only section)."""
        iova, end = section.offset_within_address_space, section.offset_within_address_space + section.size - 1
        if self.skipped(section):
            self._trace("vfio_listener_region_skip", f"SKIPPING region_add {iova:#x} - {end:#x}", section)
            return
        # [%p] is the host address QEMU maps; dirtysim has none and prints the region and offset instead
        where = f"{section.mr.name}+{section.offset_within_region:#x}"
        self._trace("vfio_listener_region_add_ram", f"region_add [ram] {iova:#x} - {end:#x} [{where}]")
        self._op("map", iova, section.size)
        self.mappings[iova] = section.size
        if section.readonly:
            self.readonly.add(iova)

    def region_del(self, section: MemoryRegionSection) -> None:
        """``vfio_listener_region_del``: trace, then VFIO_IOMMU_UNMAP_DMA of the section's range."""
        iova, end = section.offset_within_address_space, section.offset_within_address_space + section.size - 1
        if self.skipped(section):
            self._trace("vfio_listener_region_skip", f"SKIPPING region_del {iova:#x} - {end:#x}", section)
            return
        self._trace("vfio_listener_region_del", f"region_del {iova:#x} - {end:#x}", section)
        self._op("unmap", iova, section.size)
        del self.mappings[iova]
        self.readonly.discard(iova)

    def _trace(self, event: str, text: str, section: Optional[MemoryRegionSection] = None) -> None:
        """One line as QEMU's ``log`` trace backend prints it (``NAME FORMATTED``).

        Where QEMU's format names no region, dirtysim appends ``  # <region>`` so the line says which section.
        """
        note = f"  # {section.mr.name if section.mr is not None else '-'}" if section is not None else ""
        self.trace.append(f"{event} {text}{note}")

    def _op(self, op: str, iova: int, size: int) -> None:
        self.calls.append((op, iova, size))
        self.mapped_bytes += size if op == "map" else -size
        self.recorder.emit(ev.VfioDma, op=op, iova=iova, size=size)
