"""vhost: one MemoryListener per vhost device, and the dirty log the backends share (``hw/virtio/vhost.c``).

The log has one bit per 4 KiB of guest-physical address space
(``VHOST_LOG_PAGE``), is sized by the highest GPA of the memory table, and is
shared by all devices of one backend type. Backends set bits with an atomic OR;
QEMU harvests in ``log_sync`` by atomically exchanging each word with 0, which is
both the read and the reset: there is no ``log_clear``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..dirty import kernels
from ..dirty.ramlist import WORD_PAGES, RAMList, grown
from ..events import schema as ev
from ..memory.listener import MEMORY_LISTENER_PRIORITY_DEV_BACKEND, MemoryListener, MemoryRegionSection
from ..memory.region import DIRTY_MEMORY_CODE, DIRTY_MEMORY_MIGRATION
from ..scenario.schema import PAGE_SIZE
from .cost import CostMeter

VHOST_LOG_PAGE = 0x1000
VHOST_LOG_CHUNK = VHOST_LOG_PAGE * 64  # bytes of GPA per log word
VHOST_LOG_BUFFER = 0x1000 // 24  # vhost_commit's grow headroom in words (4 KiB / sizeof(struct vhost_log))
GIB = 1 << 30


@dataclass(eq=False)
class VhostLog:
    """``struct vhost_log``: the shared bitmap, refcounted by the devices that use it."""

    words: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    refcnt: int = 0
    devices: list = field(default_factory=list)  # vhost_log_devs: the first is the elected memory logger


class VhostListener(MemoryListener):
    """The ``vhost`` listener of one device: memory table, log resize and harvesting."""

    name = "vhost"
    priority = MEMORY_LISTENER_PRIORITY_DEV_BACKEND

    def __init__(self, device: str, log: VhostLog, ram_list: RAMList, memory, env, sleep, costs, meter: CostMeter,
                 harvest: str, harvest_gap_ns: int, used_ring_pages: np.ndarray):
        """``sleep(ns)``: how a SimPy process of this listener waits (``Machine.sleep``)."""
        self.device, self.log, self.ram_list, self.memory, self.env = device, log, ram_list, memory, env
        self.sleep = sleep
        self.costs, self.meter, self.recorder = costs, meter, memory.recorder
        self.exchange = harvest == "exchange"
        self.harvest, self.harvest_gap_ns = harvest, harvest_gap_ns
        self.used_ring_pages = used_ring_pages  # GPA pages of this device's used rings
        self.sections: list[MemoryRegionSection] = []  # the memory table (VHOST_USER_SET_MEM_TABLE)
        self.committed: list[MemoryRegionSection] = []  # the table as the last commit sent it
        self.logging = False  # VHOST_F_LOG_ALL negotiated and a log mapped
        self.on_loss_window = None  # read-then-zero: called after the store of 0 (oracle audit)
        self._table()

    # -- memory table ------------------------------------------------------------------------------
    def vhost_section(self, section: MemoryRegionSection) -> bool:
        """``vhost_section``: RAM that is not a ROM and that no dirty-log client but MIGRATION and CODE logs.

        So VGA VRAM (``vga.vram``, the VGA client on) stays out of the memory table. [departure: a RAM
        device (a vfio BAR's mmap) is left out too; QEMU's vhost-user rejects it for having no fd
        (``vhost_backend_no_private_memslots``), vhost-kernel would take it. No backend of dirtysim
        DMAs into a BAR, and the BAR has no RAMBlock in dirtysim to log into.]
        """
        mr = section.mr
        if mr is None or not mr.is_ram or mr.is_rom or mr.is_ram_device:
            return False
        handled = (1 << DIRTY_MEMORY_MIGRATION) | (1 << DIRTY_MEMORY_CODE)
        return not self.memory.memory_region_get_dirty_log_mask(mr) & ~handled

    def acts_on(self, hook: str, section: Optional[MemoryRegionSection] = None, *args) -> bool:
        """region_add/region_del change the memory table only for ``vhost_section`` sections."""
        if hook == "region_add":
            return self.vhost_section(section)
        if hook == "region_del":
            return section in self.sections
        if hook == "commit":  # vhost_commit: "if (!changed) goto out" when the table is the one last sent
            return sorted(self.sections, key=_gpa) != self.committed
        return super().acts_on(hook, section, *args)

    def region_add(self, section: MemoryRegionSection) -> None:
        """``vhost_region_add_section``: a ``vhost_section`` goes into the memory table."""
        if self.vhost_section(section):
            self.sections.append(section)

    def region_del(self, section: MemoryRegionSection) -> None:
        self.sections = [s for s in self.sections if s != section]

    def commit(self) -> None:
        """``vhost_commit``: new memory table; grow the log (with headroom) if logging."""
        self.sections.sort(key=_gpa)
        self.committed = list(self.sections)
        self._table()
        if self.logging:
            self._resize()

    def _table(self) -> None:
        """GPA -> RAM translation arrays the backend uses (its view of the memory table)."""
        self.tbl_gpa = np.array([s.offset_within_address_space // PAGE_SIZE for s in self.sections], dtype=np.int64)
        self.tbl_pages = np.array([s.size // PAGE_SIZE for s in self.sections], dtype=np.int64)
        self.tbl_ram = np.array([(s.mr.ram_block.offset + s.offset_within_region) // PAGE_SIZE
                                 for s in self.sections], dtype=np.int64)

    def log_size(self) -> int:
        """``vhost_get_log_size``: words = highest GPA / 256 KiB + 1."""
        last = max((s.offset_within_address_space + s.size - 1 for s in self.sections), default=0)
        return last // VHOST_LOG_CHUNK + 1

    def _resize(self) -> None:
        size = self.log_size()
        if self.log.words.shape[0] < size:
            self.log.words = grown(self.log.words, size + VHOST_LOG_BUFFER)

    # -- logging -------------------------------------------------------------------------------------
    def log_global_start(self) -> bool:
        """``vhost_migration_log(true)``: map the shared log, set VHOST_F_LOG_ALL, elect the logger."""
        self.log.refcnt += 1
        self.log.devices.append(self)
        self._resize()
        self.logging = True
        return True

    def log_global_stop(self) -> None:
        self.logging = False
        self.log.devices.remove(self)
        self.log.refcnt -= 1

    def log_start(self, section: MemoryRegionSection, old: int, new: int) -> None:
        """``vhost_log_start``: an empty stub in QEMU (its comment asks for an implementation)."""

    def log_stop(self, section: MemoryRegionSection, old: int, new: int) -> None:
        """``vhost_log_stop``: an empty stub in QEMU."""

    def log_sync(self, section: MemoryRegionSection) -> None:
        """``vhost_log_sync`` -> ``vhost_dev_sync_region``: move the section's log bits into L2.

        Only the elected logger scans memory; every device also scans its own
        used rings. Words are taken by atomic exchange, or (WRONG) read now and
        zeroed ``harvest_gap`` later, erasing any bit the backend ORs meanwhile.
        QEMU takes every word the section touches, whole (``from``/``to`` in
        ``vhost_dev_sync_region``), and marks each bit through the section's own
        translation, the neighbour's bits in a shared word too (a board's 640 KiB
        or 16 KiB PAM sections share words): ``_log_words``.
        """
        if not self.logging or section not in self.sections:
            return
        w0, w1, shift = _log_words(section)
        ranges = [(w0, w1)] if self.log.devices and self.log.devices[0] is self else self._used_ring_words(w0, w1)
        pages = 0
        for a, b in ranges:
            seen = np.zeros(b - a, dtype=np.uint64)
            pages += int(kernels.harvest_log(self.log.words, self.ram_list.dirty_memory, a, b, a + shift,
                                             self.exchange, seen))
            if not self.exchange and seen.any():
                self.env.process(self._store_zero_later(a, seen))
        cost = self.costs.vhost_log_sync_per_gib * section.size // GIB
        self.meter.add(cost)
        self.recorder.emit(ev.VhostLogSync, device=self.device, pages=pages, harvest=self.harvest, cost_ns=cost)

    def _used_ring_words(self, w0: int, w1: int) -> list[tuple[int, int]]:
        words = sorted({int(p) // WORD_PAGES for p in self.used_ring_pages})
        return [(w, w + 1) for w in words if w0 <= w < w1]

    def _store_zero_later(self, w0: int, seen: np.ndarray):
        """The second half of read-then-zero: a plain store of 0 into every word that was read non-zero."""
        yield from self.sleep(self.harvest_gap_ns)
        idx = np.flatnonzero(seen) + w0
        erased = int(np.bitwise_count(self.log.words[idx] & ~seen[idx - w0]).sum())
        self.log.words[idx] = 0
        self.recorder.emit(ev.VhostLogZero, device=self.device, erased_pages=erased)
        if self.on_loss_window is not None:
            self.on_loss_window("vhost-zero")

    def pending_dirty(self) -> list[np.ndarray]:
        """Log bits not yet harvested, as a ram-indexed bitmap (for the oracle)."""
        out = np.zeros(self.ram_list.dirty_memory.shape[0], dtype=np.uint64)
        for s in self.sections:
            w0, w1, shift = _log_words(s)
            w1 = min(w1, self.log.words.shape[0])
            if w0 < w1:
                out[w0 + shift : w1 + shift] |= self.log.words[w0:w1]
        return [out]


def _log_words(section: MemoryRegionSection) -> tuple[int, int, int]:
    """(first, end) log words the section touches, and the word shift from its GPA to its ram_addr.

    QEMU maps bit by bit (``memory_region_set_dirty`` at the page's offset in the
    section's region); dirtysim moves whole words, which is the same when the
    GPA -> ram_addr shift is whole words. On the boards it is: below 4 GiB every
    RAM alias maps its GPA to the same offset in the backend, above 4 GiB the
    shift is 4 GiB - below_4g_mem_size, a multiple of 2 MiB.
    """
    gpa0 = section.offset_within_address_space
    shift = section.mr.ram_block.offset + section.offset_within_region - gpa0
    if shift % VHOST_LOG_CHUNK:
        raise ValueError(f"vhost section {section.mr.name} @{gpa0:#x}: its GPA -> ram_addr shift {shift:#x} is not "
                         f"whole 256 KiB log words; dirtysim moves the log by words")
    return gpa0 // VHOST_LOG_CHUNK, -(-(gpa0 + section.size) // VHOST_LOG_CHUNK), shift // VHOST_LOG_CHUNK


def _gpa(section: MemoryRegionSection) -> int:
    return section.offset_within_address_space
