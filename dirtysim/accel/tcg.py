"""TCG: per-CPU address spaces with a ``tcg`` listener each, and guest writes that dirty memory directly.

Without KVM there is no write protection: the softmmu marks a TLB entry
"notdirty" while its page is clean in a dirty-memory client, the first write
traps (``notdirty_write``) and sets the page's bits in global dirty memory (L2),
later writes go straight through until a sync clears the bit again
(``physical_memory_dirty_bits_cleared`` resets the TLB entries).
"""

from __future__ import annotations

import numpy as np

from ..dirty.ramlist import RAMList
from ..memory.listener import MemoryListener
from ..scenario.schema import PAGE_SIZE


class TcgListener(MemoryListener):
    """``tcg_as_listener`` of one CPU address space: ``tcg_commit`` flushes that CPU's TLB."""

    name = "tcg"

    def __init__(self, cpu: int, on_commit=None):
        self.cpu = cpu
        self.tlb_flushes = 0
        self.after_sync_calls = 0
        self._on_commit = on_commit

    def commit(self) -> None:
        self.tlb_flushes += 1
        if self._on_commit is not None:
            self._on_commit()

    def log_global_after_sync(self) -> None:
        """``tcg_log_global_after_sync``: make vCPUs finish writes that passed the dirty check."""
        self.after_sync_calls += 1


class TcgDirtyMemory:
    """Guest writes under TCG, with the same interface as ``KvmDirtyLog.write_args``."""

    def __init__(self, ram_list: RAMList, memory, address_space):
        self.ram_list, self.memory, self.address_space = ram_list, memory, address_space
        self.ring = False
        self.refresh()

    def refresh(self) -> None:
        """Writable RAM ranges of the CPU's view (what its TLB can map for writing).

        A RAM device (a vfio BAR's mmap) is left out: dirtysim's guest never writes into a BAR.
        """
        ranges = [fr for fr in self.address_space.current_map
                  if fr.mr.is_ram and not fr.readonly and not fr.mr.is_ram_device]
        self.slot_gpa = np.array([fr.addr // PAGE_SIZE for fr in ranges], dtype=np.int64)
        self.slot_pages = np.array([fr.size // PAGE_SIZE for fr in ranges], dtype=np.int64)
        self.slot_ram = np.array([(fr.mr.ram_block.offset + fr.offset_in_region) // PAGE_SIZE for fr in ranges],
                                 dtype=np.int64)

    def write_args(self) -> tuple:
        """A write to a page clean in L2 traps (a "fault" here) and sets its bit; only while tracking is on."""
        logging = np.full(self.slot_gpa.shape[0], bool(self.memory.global_dirty_tracking), dtype=np.bool_)
        return self.slot_gpa, self.slot_pages, self.slot_ram, logging, self.ram_list.dirty_memory
