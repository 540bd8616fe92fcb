"""KVM's SMM address space on x86: the ``kvm-smram`` listener and its memslots in KVM address space 1.

``kvm_arch_init`` (target/i386/kvm/kvm.c), on an x86 machine with SMM
(``x86_machine_is_smm_enabled``), adds a machine-done notifier,
``register_smram_listener``: a ``mem-container-smram`` root holding
``mem-smram`` (an alias of all of system memory, priority 0) and the board's
/machine/smram at priority 10, which it enables; the ``KVM-SMRAM`` address
space over that root; and a second ``KVMMemoryListener`` on it,
``kvm_memory_listener_register(..., as_id 1, "kvm-smram")``.

That listener keeps its own memslots (each with its own dirty bitmap in the
kernel) over the same RAM as ``kvm-memory``'s: a write by a vCPU outside SMM
goes through address space 0's memslots only (``kvm_vcpu_memslots``), so
address space 1's bitmaps hold only what logging itself sets (all ones with
KVM_DIRTY_LOG_INITIALLY_SET, until the first CLEAR). QEMU syncs and clears
both listeners (``memory_region_sync_dirty_bitmap`` calls ``log_sync`` per
listener and section, ``memory_region_clear_dirty_bitmap`` ``log_clear``): the
GETs, CLEARs and log-start work on address space 1 are real work, and its bits
OR into the same dirty memory, so nothing is counted twice (the migration
bitmap counts 0->1 transitions) and nothing is lost. With a dirty ring each
listener's ``log_sync_global`` first flushes every vCPU's ring
(``kvm_dirty_ring_flush``); ``kvm_dirty_ring_mark_page`` files each entry under
the listener of its slot's address space, here always ``kvm-memory``'s.

The listener has no ioeventfd or coalesced-MMIO hooks: ``kvm_init`` adds those
to ``kvm-memory`` only.

Departures: no vCPU enters SMM (dirtysim models no SMI), so no write goes
through address space 1; KVM_CAP_X86_SMM is assumed (``kvm_has_smm``); the
per-CPU ``cpu-smm`` address spaces QEMU also gives KVM's CPUs over this root
hold no listener and are not built; ``KvmMemslotUpdate`` events do not name
their listener (the ``commit`` ListenerCall just before them does).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..memory.address_space import AddressSpace, MemorySystem
from ..memory.region import MemoryRegion, memory_region_init, memory_region_init_alias
from .kvm import KvmDirtyLog, KvmMemoryListener, KvmRingMemoryListener

SMRAM_AS_ROOT_SIZE = 1 << 64  # memory_region_init(&smram_as_root, ..., ~0ull): ~0ull means all 2^64 bytes
SMRAM_PRIORITY = 10  # memory_region_add_subregion_overlap(&smram_as_root, 0, smram, 10)


class KvmSmramListener(KvmMemoryListener):
    """``kvm-smram`` in bitmap mode: ``kvm-memory``'s hooks on its own memslots, without the eventfd hooks."""

    name = "kvm-smram"
    eventfd_add = eventfd_del = coalesced_io_add = coalesced_io_del = None


class KvmSmramRingListener(KvmRingMemoryListener):
    """``kvm-smram`` with a dirty ring: its flush reaps the vCPUs' rings into ``kvm-memory``'s slots."""

    name = "kvm-smram"
    eventfd_add = eventfd_del = coalesced_io_add = coalesced_io_del = None

    def __init__(self, kvm: KvmDirtyLog, memory: MemorySystem, tracking, costs, meter,
                 owner: KvmRingMemoryListener):
        super().__init__(kvm, memory, tracking, costs, meter)
        self.owner = owner

    def reap(self, reason: str, vcpu: int = -1, only: bool = False, bql_wait_ns: int = 0) -> int:
        """``kvm_dirty_ring_flush`` / ``kvm_dirty_ring_reap``: the rings are the vCPUs'; every entry names a
        slot of address space 0 (no vCPU in SMM), so ``kvm_dirty_ring_mark_page`` sets it in kvm-memory's."""
        return self.owner.reap(reason, vcpu, only, bql_wait_ns)

    def pending_dirty(self) -> list[np.ndarray]:
        """This listener's collected bits; the rings' uncollected pages are kvm-memory's."""
        return [self.dirty_bmap]


def register_smram_listener(memory: MemorySystem, system_memory: MemoryRegion, smram: Optional[MemoryRegion],
                            primary: KvmMemoryListener, nvcpus: int, backing: str, tracking, costs,
                            meter) -> tuple[AddressSpace, Union[KvmSmramListener, KvmSmramRingListener]]:
    """``register_smram_listener``: the KVM-SMRAM address space and its ``kvm-smram`` listener (as_id 1).

    Each step is QEMU's own call, in its order, so each makes its transaction
    (listeners see ``begin``/``commit``); registration replays the view to the
    new listener (``region_add`` per RAM section: memslots in address space 1).
    """
    root = memory_region_init("mem-container-smram", SMRAM_AS_ROOT_SIZE)
    memory.memory_region_add_subregion(root, 0, memory_region_init_alias("mem-smram", system_memory, 0,
                                                                         SMRAM_AS_ROOT_SIZE))
    if smram is not None:
        memory.memory_region_add_subregion(root, 0, smram, priority=SMRAM_PRIORITY)
        memory.memory_region_set_enabled(smram, True)
    asp = memory.address_space_init(root, "KVM-SMRAM")
    kvm = KvmDirtyLog(primary.kvm.ram_list, tracking, nvcpus, backing, as_id=1)
    listener: Union[KvmSmramListener, KvmSmramRingListener]
    if kvm.ring:
        listener = KvmSmramRingListener(kvm, memory, tracking, costs, meter, owner=primary)
    else:
        listener = KvmSmramListener(kvm, memory, tracking, costs, meter)
    memory.memory_listener_register(listener, asp)
    return asp, listener
