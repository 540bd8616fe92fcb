"""The ``vfio`` listener: the IOMMU must map every RAM section the device may DMA into (``hw/vfio/listener.c``).

``vfio_listener_region_add`` maps RAM (and RAM-device) sections with
VFIO_IOMMU_MAP_DMA at iova = guest-physical address; ``region_del`` unmaps
them. Device dirty tracking (``log_global_start``/``log_sync``) is not modelled.
"""

from __future__ import annotations

from ..events import schema as ev
from ..memory.listener import MEMORY_LISTENER_PRIORITY_MIN, MemoryListener, MemoryRegionSection


class VfioListener(MemoryListener):
    name = "vfio"
    priority = MEMORY_LISTENER_PRIORITY_MIN  # QEMU sets none [not confirmed for every version]

    def __init__(self, recorder, device: str):
        self.recorder, self.device = recorder, device
        self.mappings: dict[int, int] = {}  # iova -> size
        self.calls: list[tuple[str, int, int]] = []  # (map | unmap, iova, size) in order
        self.mapped_bytes = 0

    def region_add(self, section: MemoryRegionSection) -> None:
        if section.mr is not None and section.mr.is_ram:
            self._op("map", section.offset_within_address_space, section.size)
            self.mappings[section.offset_within_address_space] = section.size

    def region_del(self, section: MemoryRegionSection) -> None:
        if section.mr is not None and section.mr.is_ram:
            self._op("unmap", section.offset_within_address_space, section.size)
            del self.mappings[section.offset_within_address_space]

    def _op(self, op: str, iova: int, size: int) -> None:
        self.calls.append((op, iova, size))
        self.mapped_bytes += size if op == "map" else -size
        self.recorder.emit(ev.VfioDma, op=op, iova=iova, size=size)
