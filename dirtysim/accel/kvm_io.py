"""KVM's ioeventfds and coalesced I/O, and the ``kvm-io`` listener on the I/O address space.

A guest write that matches an ioeventfd signals the eventfd in the kernel
instead of exiting to QEMU (KVM_IOEVENTFD); coalesced ranges are buffered in
the kernel (KVM_REGISTER_COALESCED_MMIO). ``kvm-memory`` does this for MMIO
(``kvm_mem_ioeventfd_add``), ``kvm-io`` for port I/O (``kvm_io_ioeventfd_add``).
"""

from __future__ import annotations

from ..memory.listener import MEMORY_LISTENER_PRIORITY_DEV_BACKEND, MemoryListener, MemoryRegionSection


class KvmIoeventfds:
    """The eventfd and coalesced hooks, keeping what KVM has registered."""

    def __init__(self):
        self.ioeventfds: list[tuple[int, int, bool, int, str]] = []  # (addr, size, match_data, data, fd)
        self.coalesced: list[tuple[int, int]] = []

    def eventfd_add(self, section: MemoryRegionSection, match_data: bool, data: int, fd: str) -> None:
        self.ioeventfds.append((section.offset_within_address_space, section.size, match_data, data, fd))

    def eventfd_del(self, section: MemoryRegionSection, match_data: bool, data: int, fd: str) -> None:
        self.ioeventfds.remove((section.offset_within_address_space, section.size, match_data, data, fd))

    def coalesced_io_add(self, section: MemoryRegionSection, addr: int, size: int) -> None:
        self.coalesced.append((addr, size))

    def coalesced_io_del(self, section: MemoryRegionSection, addr: int, size: int) -> None:
        self.coalesced.remove((addr, size))


class KvmIoListener(KvmIoeventfds, MemoryListener):
    """``kvm-io`` (``kvm_io_listener``): PIO ioeventfds and coalesced PIO."""

    name = "kvm-io"
    priority = MEMORY_LISTENER_PRIORITY_DEV_BACKEND
