"""Device-side listeners: ``virtio`` (one per virtio device) and ``device-memory`` (``hw/mem/memory-device.c``)."""

from __future__ import annotations

from ..memory.listener import MemoryListener, MemoryRegionSection


class VirtioListener(MemoryListener):
    """``virtio_memory_listener_commit``: after every map change the device re-caches its vring addresses."""

    name = "virtio"

    def __init__(self, device: str):
        self.device = device
        self.vring_cache_refreshes = 0

    def commit(self) -> None:
        self.vring_cache_refreshes += 1  # virtio_init_region_cache for each virtqueue


class DeviceMemoryListener(MemoryListener):
    """``device-memory`` on the memory-device address space: which DIMM regions are plugged, and their size."""

    name = "device-memory"

    def __init__(self):
        self.regions: dict[str, int] = {}

    def region_add(self, section: MemoryRegionSection) -> None:
        if section.mr is not None and section.mr.is_ram:
            self.regions[section.mr.name] = self.regions.get(section.mr.name, 0) + section.size

    def region_del(self, section: MemoryRegionSection) -> None:
        if section.mr is not None and section.mr.is_ram:
            self.regions[section.mr.name] -= section.size
            if not self.regions[section.mr.name]:
                del self.regions[section.mr.name]

    @property
    def used_region_size(self) -> int:
        return sum(self.regions.values())
