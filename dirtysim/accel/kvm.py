"""KVM memslots and dirty logging: the kernel side and QEMU's ``kvm-memory`` listener.

Kernel (``virt/kvm/kvm_main.c``, ``virt/kvm/dirty_ring.c``): in bitmap mode one
dirty bitmap per memslot (L0a); in ring mode a per-vCPU ring of dirtied pages
(L0b) and a write-protection bitmap. QEMU (``accel/kvm/kvm-all.c``):
``KVMSlot.dirty_bmap`` (L1), the bits fetched by the last GET (the CLEAR mask) or
collected from the rings. All bitmaps are ram_addr-indexed word arrays; a
memslot is a contiguous ram range of whole pages. A slot need not fill its first
and last words (the pc machine's 640 KiB of low RAM, a 16 KiB PAM segment, the
isa-bios window in the middle of pc.bios): whatever sets or clears a slot's bits
goes through ``fill_slot`` and touches only its own pages, while harvests (GET,
CLEAR by the fetched mask, the push to L2) may cover the neighbours' bits in
shared words, which only reports pages that are dirty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..dirty import kernels
from ..dirty.ramlist import RAMList, WORD_PAGES, grown
from ..events import schema as ev
from ..memory.address_space import GLOBAL_DIRTY_DIRTY_RATE
from ..migration.invariant import BrokenInvariant
from ..memory.listener import MEMORY_LISTENER_PRIORITY_ACCEL, MemoryListener, MemoryRegionSection
from ..scenario.schema import PAGE_SIZE, DirtyTracking
from .cost import CostMeter
from .kvm_io import KvmIoeventfds

KVM_CLEAR_LOG_SHIFT = 6  # kvm-all.c: clears are aligned to 64 host pages
KVM_DIRTY_RING_RSVD_ENTRIES = 64  # include/linux/kvm_host.h
PML_LOG_NR_ENTRIES = 512  # x86 PML buffer, reserved on top when PML is used
GIB = 1 << 30
# the scenario ``costs`` of KVM's dirty tracking added with issue 12; at zero, results are as before them
# (tests/golden: the summaries without the sending costs zero these too)
KVM_TRACKING_COSTS = ("log_start_per_gib", "log_start_wp_per_gib", "dirty_word_atomic", "pml_full_exit")
# physical_memory_set_dirty_lebitmap with KVM: each non-zero word into DIRTY_MEMORY_VGA, and _MIGRATION while tracking
SET_DIRTY_CLIENTS = 2


def dirty_ring_soft_limit(ring_size: int, pml: bool) -> int:
    """``kvm_dirty_ring_alloc``: soft_limit = size - (64 + PML entries); N=4096 with PML -> 3520."""
    return ring_size - KVM_DIRTY_RING_RSVD_ENTRIES - (PML_LOG_NR_ENTRIES if pml else 0)


@dataclass(eq=False)
class KVMSlot:
    """A memslot; ``ram_addr`` None is a RAM device's (a vfio BAR's mmap): no RAMBlock in dirtysim, never logged."""

    slot: int
    gpa: int
    size: int
    ram_addr: Optional[int]
    readonly: bool = False  # KVM_MEM_READONLY: ROMs and ROM devices in ROMD mode; guest writes exit to QEMU
    logging: bool = False  # KVM_MEM_LOG_DIRTY_PAGES

    @property
    def first_page(self) -> int:
        return self.ram_addr // PAGE_SIZE

    @property
    def words(self) -> slice:
        """Every word holding a bit of the slot (the first and last may be shared with other slots)."""
        end = self.first_page + self.size // PAGE_SIZE
        return slice(self.first_page // WORD_PAGES, -(-end // WORD_PAGES))


def fill_slot(bitmap: np.ndarray, slot: KVMSlot, value: bool) -> None:
    """Set (or clear) exactly the slot's bits of a ram_addr-indexed bitmap, leaving shared words' other bits alone.

    A word can hold pages of two slots (two PAM segments); clearing a whole word
    would drop the other slot's dirty bits or write protection, a lost page.
    An empty bitmap is one the mode does not keep (``KvmDirtyLog.ensure_capacity``).
    """
    if not bitmap.shape[0] or slot.ram_addr is None:
        return
    w = slot.words
    first, end = slot.first_page, slot.first_page + slot.size // PAGE_SIZE
    fill = ~np.uint64(0) if value else np.uint64(0)
    head, tail = first % WORD_PAGES, end % WORD_PAGES
    masks = {w.start: ~np.uint64(0) << np.uint64(head)}
    if tail:
        last = w.stop - 1
        masks[last] = masks.get(last, ~np.uint64(0)) & (~np.uint64(0) >> np.uint64(WORD_PAGES - tail))
    bitmap[w.start + (head > 0):w.stop - (tail > 0)] = fill
    for word, mask in masks.items():
        bitmap[word] = bitmap[word] & ~mask | fill & mask


class KvmDirtyLog:
    """The kernel's view: memslots, dirty bitmaps or rings, and guest writes through them."""

    def __init__(self, ram_list: RAMList, tracking: DirtyTracking, nvcpus: int, backing: str = "4k", as_id: int = 0):
        """``as_id``: the KVM address space of the memslots (x86: 0 normal, 1 SMM); slot ids carry it in their
        high 16 bits, as QEMU passes them (``kvm_set_user_memory_region``: ``slot->slot | (kml->as_id << 16)``).
        The dirty rings belong to the vCPUs, not to an address space: only address space 0's state holds them
        (no vCPU enters SMM in dirtysim, so every ring entry is of a slot in address space 0)."""
        self.ram_list = ram_list
        self.as_id = as_id
        self.ring = tracking.mode == "ring"
        self.manual_protect = tracking.manual_protect
        self.initially_set = tracking.initially_set
        # Huge-page backing (machine.memory.backing 2m/1g) with INITIALLY_SET: the pages still mapped huge are
        # those no CLEAR has re-protected since logging started; ``cleared_once`` marks the others (1 bit per
        # page, kept only then).
        self.huge_backing = backing != "4k" and not self.ring and self.manual_protect and self.initially_set
        self.cleared_once = np.zeros(0, dtype=np.uint64)
        self.slots: list[KVMSlot] = []
        self._next_id = as_id << 16
        self.dirty = np.zeros(0, dtype=np.uint64)  # L0a (bitmap mode)
        self.protected = np.zeros(0, dtype=np.uint64)  # ring mode: write-protected pages
        size = tracking.ring_size if self.ring and as_id == 0 else 1
        self.rings = np.zeros((nvcpus, size), dtype=np.int64)
        self.dirty_index = np.zeros(nvcpus, dtype=np.int64)
        self.reset_index = np.zeros(nvcpus, dtype=np.int64)
        self.soft_limit = dirty_ring_soft_limit(tracking.ring_size, tracking.pml)
        self.on_ring_full: Optional[Callable[[int], None]] = None  # set by QEMU's listener
        self._out = np.zeros(3, dtype=np.int64)
        self._refresh_table()

    def ensure_capacity(self) -> None:
        words = self.ram_list.dirty_memory.shape[0]
        if self.ring:  # each mode keeps only the bitmap it uses (1 bit per guest page)
            self.protected = grown(self.protected, words)
        else:
            self.dirty = grown(self.dirty, words)
            if self.huge_backing:
                self.cleared_once = grown(self.cleared_once, words)

    def set_user_memory_region(self, gpa: int, size: int, ram_addr: Optional[int], readonly: bool = False) -> KVMSlot:
        """KVM_SET_USER_MEMORY_REGION; ``ram_addr`` None: a RAM device's slot (host memory QEMU did not allocate)."""
        if gpa % PAGE_SIZE or (ram_addr or 0) % PAGE_SIZE or size % PAGE_SIZE or not size:
            raise ValueError(f"memslot at GPA {gpa:#x} (+{size:#x}) is not whole pages (KVM_SET_USER_MEMORY_REGION)")
        slot = KVMSlot(self._next_id, gpa, size, ram_addr, readonly)
        self._next_id += 1
        self.slots.append(slot)
        self.ensure_capacity()
        self._refresh_table()
        return slot

    def delete_slot(self, slot: KVMSlot) -> None:
        fill_slot(self.dirty, slot, False)
        fill_slot(self.protected, slot, False)
        fill_slot(self.cleared_once, slot, False)
        self.slots.remove(slot)
        self._refresh_table()

    def set_logging(self, slot: KVMSlot, on: bool) -> None:
        """Flip KVM_MEM_LOG_DIRTY_PAGES (``kvm_prepare_memory_region`` + ``kvm_mmu_slot_apply_flags``).

        Bitmap: a fresh bitmap, all ones with INITIALLY_SET (nothing
        write-protected), else zero (everything write-protected). Ring: the whole
        slot is write-protected. Off: nothing is logged or protected.
        """
        slot.logging = on
        if self.ring:
            fill_slot(self.protected, slot, on)
        else:
            fill_slot(self.dirty, slot, on and self.manual_protect and self.initially_set)
            # logging on: every page mapped huge again (lazy split; logging off lets KVM recover huge mappings)
            fill_slot(self.cleared_once, slot, False)
        self._refresh_table()

    def _refresh_table(self) -> None:
        """Arrays the write kernels use to translate GPA pages to RAM pages (writable slots only).

        A RAM device's slot is left out: dirtysim's guest never writes into a BAR (its workloads address RAM).
        """
        writable = [s for s in self.slots if not s.readonly and s.ram_addr is not None]
        self.slot_gpa = np.array([s.gpa // PAGE_SIZE for s in writable], dtype=np.int64)
        self.slot_pages = np.array([s.size // PAGE_SIZE for s in writable], dtype=np.int64)
        self.slot_ram = np.array([s.ram_addr // PAGE_SIZE for s in writable], dtype=np.int64)
        self.slot_logging = np.array([s.logging for s in writable], dtype=np.bool_)

    def write_args(self) -> tuple:
        """What guest writes go through: the writable memslots, and the dirty bitmap (ring: the protection map)."""
        return (self.slot_gpa, self.slot_pages, self.slot_ram, self.slot_logging,
                self.protected if self.ring else self.dirty)

    def apply_writes(self, gpa_pages: np.ndarray, seg_end: np.ndarray, faults: np.ndarray,
                     gmap: np.ndarray | None = None) -> int:
        """A batch of writes per vCPU (``seg_end``); in ring mode a full ring exits to QEMU and resumes.

        ``gmap``: the oracle's map of the guest (``oracle.GuestMap.table``); by
        default the writable memslots, which is what a correct memory map gives.
        """
        rl = self.ram_list
        if gmap is None:
            gmap = np.stack([self.slot_gpa, self.slot_pages, self.slot_ram])
        if not self.ring:
            return kernels.apply_writes(gpa_pages, seg_end, gmap, *self.write_args(), *rl.oracle_args(), faults)
        out, start, stuck = self._out, 0, 0
        out[2] = 0
        while kernels.apply_writes_ring(gpa_pages, seg_end, start, gmap, *self.write_args(), *rl.oracle_args(),
                                        self.rings, self.dirty_index, self.reset_index, self.soft_limit, faults, out):
            stuck = stuck + 1 if int(out[1]) == start else 0
            if stuck > 1:  # the reap after an exit must free the ring, or the vCPU exits forever
                raise BrokenInvariant(f"vCPU {int(out[0])}'s dirty ring stays full after a reap (write {start})")
            start = int(out[1])
            self.on_ring_full(int(out[0]))  # KVM_EXIT_DIRTY_RING_FULL
        return int(out[2])

    def unreaped_pages(self) -> np.ndarray:
        """Pages in ring entries nobody has collected yet (ram-indexed bitmap)."""
        bm = np.zeros_like(self.protected)
        kernels.mark_ring_entries(self.rings, self.dirty_index, self.reset_index, bm)
        return bm

    def slots_in(self, section: MemoryRegionSection) -> list[KVMSlot]:
        lo = section.offset_within_address_space
        hi = lo + section.size
        return [s for s in self.slots if s.gpa < hi and lo < s.gpa + s.size]


class KvmMemoryListener(KvmIoeventfds, MemoryListener):
    """QEMU's ``kvm-memory`` listener in bitmap mode (``kvm_memory_listener_register``).

    It also takes the MMIO ioeventfds and coalesced MMIO ranges of the memory
    address space (``kvm_mem_ioeventfd_add``, ``kvm_coalesce_mmio_region``).
    """

    name = "kvm-memory"
    priority = MEMORY_LISTENER_PRIORITY_ACCEL

    def __init__(self, kvm: KvmDirtyLog, memory, tracking: DirtyTracking, costs, meter: CostMeter):
        self.kvm, self.memory, self.costs, self.meter = kvm, memory, costs, meter
        self.recorder = memory.recorder
        self.clear_kernel = kernels.clear_all if tracking.kvm_clear == "clear-all" else kernels.clear_by_mask
        self.dirty_bmap = np.zeros(0, dtype=np.uint64)  # KVMSlot.dirty_bmap (L1), ram_addr words
        self._add: list[MemoryRegionSection] = []
        self._del: list[MemoryRegionSection] = []
        self._by_section: dict[tuple, KVMSlot] = {}
        KvmIoeventfds.__init__(self)
        self.on_inhibit: Optional[Callable[[int], None]] = None  # holds every vCPU out of the guest
        self.on_loss_window: Optional[Callable[[str], None]] = None  # after a clear-all (oracle audit)

    # -- memory map: queued until commit (commit f39b7d2b, kvm_region_commit) ------------------------
    @staticmethod
    def _is_slot(section: MemoryRegionSection) -> bool:
        """``kvm_set_phys_mem``: RAM (RAM devices included: ``memory_region_is_ram``), and ROM devices in ROMD
        mode (read-only); everything else is MMIO and gets no slot."""
        return section.mr is not None and (section.mr.is_ram or section.mr.is_romd)

    def acts_on(self, hook: str, section: Optional[MemoryRegionSection] = None, *args) -> bool:
        """Which calls ``kvm-memory`` does something for (``dirtysim listeners --trace`` shows only those).

        ``kvm_region_add``/``_del`` queue only slot sections; ``kvm_region_commit`` returns when nothing is
        queued; ``kvm_log_start``/``_stop`` act on a 0 <-> non-zero mask change of a section with slots;
        ``kvm_log_sync`` on logging slots; ``kvm_log_clear`` only with manual protect.
        """
        if hook == "region_add":
            return self._is_slot(section)
        if hook == "region_del":
            return _key(section) in self._by_section
        if hook == "commit":
            return bool(self._add or self._del)
        if hook in ("log_start", "log_stop"):
            return args[0 if hook == "log_start" else 1] == 0 and bool(self.kvm.slots_in(section))
        if hook == "log_sync":
            return any(slot.logging for slot in self.kvm.slots_in(section))
        if hook == "log_clear":
            return self.kvm.manual_protect
        return super().acts_on(hook, section, *args)

    def region_add(self, section: MemoryRegionSection) -> None:
        if self._is_slot(section):
            self._add.append(section)

    def region_del(self, section: MemoryRegionSection) -> None:
        """``kvm_set_phys_mem`` (delete) finds the slot by address (``kvm_lookup_matching_slot``): a ROM device
        that has just left ROMD mode is no longer a slot region, but its slot must still go."""
        if _key(section) in self._by_section:
            self._del.append(section)

    def commit(self) -> None:
        """``kvm_region_commit``: all queued deletions, then all additions.

        Only when a deleted range overlaps an added one are the vCPUs held out of
        the guest for the whole update (``accel_ioctl_inhibit_begin``), so the
        guest never sees the range missing.
        """
        if not self._add and not self._del:
            return
        inhibit = any(d.offset_within_address_space < a.offset_within_address_space + a.size
                      and a.offset_within_address_space < d.offset_within_address_space + d.size
                      for d in self._del for a in self._add)
        for section in self._del:
            slot = self._by_section.pop(_key(section))
            if slot.logging:
                self._sync_slot_before_delete(slot)
            self.kvm.delete_slot(slot)
        added = self._add
        for section in self._add:
            block = section.mr.ram_block
            ram_addr = None if block is None else block.offset + section.offset_within_region
            readonly = section.readonly or not section.mr.is_ram
            slot = self.kvm.set_user_memory_region(section.offset_within_address_space, section.size, ram_addr,
                                                   readonly)
            self._by_section[_key(section)] = slot
            if self.memory.memory_region_get_dirty_log_mask(section.mr):  # kvm_mem_flags: logging from the start
                self._start_logging(slot)
        stall = self.costs.memslot_update * (len(self._del) + len(self._add)) if inhibit else 0
        self.recorder.emit(ev.KvmMemslotUpdate, deleted=len(self._del), added=len(self._add), inhibited=inhibit,
                           stall_ns=stall)
        if inhibit and self.on_inhibit is not None:
            self.on_inhibit(stall)
        self._add, self._del = [], []
        self.dirty_bmap = grown(self.dirty_bmap, self.kvm.ram_list.dirty_memory.shape[0])
        for section in added:
            fill_slot(self.dirty_bmap, self._by_section[_key(section)], False)

    def _sync_slot_before_delete(self, slot: KVMSlot) -> None:
        """``kvm_set_phys_mem`` delete path: collect the slot's remaining dirty bits first (best effort)."""
        w = slot.words
        if self.memory.global_dirty_tracking:
            kernels.or_into(self.kvm.ram_list.dirty_memory, self.kvm.dirty, w.start, w.stop)

    # -- dirty logging ----------------------------------------------------------------------------
    def log_start(self, section: MemoryRegionSection, old: int, new: int) -> None:
        """``kvm_log_start``: only a 0 -> non-zero mask change turns logging on."""
        if old == 0:
            for slot in self.kvm.slots_in(section):
                self._start_logging(slot)
                fill_slot(self.dirty_bmap, slot, False)

    def _start_logging(self, slot: KVMSlot) -> None:
        """KVM_SET_USER_MEMORY_REGION adding KVM_MEM_LOG_DIRTY_PAGES, and what the kernel does for it.

        ``kvm_mmu_slot_apply_flags`` (arch/x86/kvm/x86.c): with manual protect and
        INITIALLY_SET it returns at once, every page is reported dirty and
        protected at its first KVM_CLEAR_DIRTY_LOG; otherwise (legacy bitmap,
        manual protect without INITIALLY_SET, the dirty ring) it protects the
        whole slot now (``kvm_mmu_slot_remove_write_access``, or with PML
        ``kvm_mmu_slot_leaf_clear_dirty``) under ``mmu_lock``. The caller's thread
        pays it: in ``ram_init_bitmaps`` the migration thread, holding the BQL.
        """
        self.kvm.set_logging(slot, True)
        protect = not (self.kvm.manual_protect and self.kvm.initially_set)
        per_gib = self.costs.log_start_wp_per_gib if protect else self.costs.log_start_per_gib
        cost = per_gib * slot.size // GIB
        self.meter.add(cost)
        self.recorder.emit(ev.KvmLogStart, slot=slot.slot, pages=slot.size // PAGE_SIZE, write_protected=protect,
                           cost_ns=cost)

    def log_stop(self, section: MemoryRegionSection, old: int, new: int) -> None:
        if new == 0:
            for slot in self.kvm.slots_in(section):
                self.kvm.set_logging(slot, False)
                fill_slot(self.dirty_bmap, slot, False)

    def log_sync(self, section: MemoryRegionSection) -> None:
        """``kvm_log_sync`` -> ``kvm_physical_sync_dirty_bitmap``: GET each slot, OR into global dirty memory.

        Manual protect: the kernel copies its bitmap as is (nothing cleared or
        re-protected). Legacy: it exchanges each word with 0 and re-protects the
        returned pages. The slot cache keeps the fetched bits as the CLEAR mask.
        """
        for slot in self.kvm.slots_in(section):
            if not slot.logging:
                continue
            w = slot.words
            if self.kvm.manual_protect:
                self.dirty_bmap[w] = self.kvm.dirty[w]
                pages = int(kernels.count_set(self.dirty_bmap, w.start, w.stop))
                reprotected = 0
            else:
                pages = reprotected = int(kernels.xchg_into(self.kvm.dirty, self.dirty_bmap, w.start, w.stop))
            words = self._set_dirty_lebitmap(w)
            if self.memory.global_dirty_tracking & GLOBAL_DIRTY_DIRTY_RATE:  # physical_memory_set_dirty_lebitmap
                self.memory.total_dirty_pages += pages
            cost = (self.costs.get_dirty_log_per_gib * slot.size // GIB + reprotected * self.costs.clear_dirty_log_per_page
                    + words * SET_DIRTY_CLIENTS * self.costs.dirty_word_atomic)
            self.meter.add(cost)
            self.recorder.emit(ev.KvmGetDirtyLog, slot=slot.slot, pages=pages, reprotected=reprotected, cost_ns=cost,
                               words=words)

    def _set_dirty_lebitmap(self, w: slice) -> int:
        """``physical_memory_set_dirty_lebitmap``: the slot's fetched words into global dirty memory (L2) while
        tracking; returns the non-zero words, each ORed into every dirty client's bitmap (its cost)."""
        if not self.memory.global_dirty_tracking:
            return 0
        return int(kernels.or_into(self.kvm.ram_list.dirty_memory, self.dirty_bmap, w.start, w.stop))

    def log_clear(self, section: MemoryRegionSection) -> None:
        """``kvm_log_clear`` -> ``kvm_log_clear_one_slot``: KVM_CLEAR_DIRTY_LOG with the fetched mask.

        A no-op without manual protect (``kvm_physical_log_clear`` returns early).
        The range is aligned down to 64 pages (``KVM_CLEAR_LOG_SHIFT``) and up to
        64 pages or the end of the slot. With huge-page backing (``backing: 2m|1g``)
        the pages re-protected for the first time since logging started are still
        mapped huge: ``kvm_arch_mmu_enable_log_dirty_pt_masked`` write-protects the
        huge mapping (``clear_dirty_log_huge_per_page``) and the next write splits it
        (lazy split, as dirty_log_perf_test measured it, anchors C.6; with
        ``eager_page_split`` the kernel splits it in this CLEAR, not modelled).
        Later CLEARs of those pages re-protect 4 KiB mappings.
        """
        if not self.kvm.manual_protect:
            return
        lo = section.offset_within_address_space
        hi = lo + section.size
        for slot in self.kvm.slots_in(section):
            first = (max(lo, slot.gpa) - slot.gpa) // PAGE_SIZE
            last = -(-(min(hi, slot.gpa + slot.size) - slot.gpa) // PAGE_SIZE)
            # QEMU aligns the start down and masks the padding out; dirtysim's clear chunks are 64-page
            # aligned and a slot smaller than a word lies inside one chunk, so the start is the slot's or
            # aligned. A slot that shares its first or last word clears the neighbour's fetched bits
            # too: they were reported with the GET that fetched them.
            assert first % (1 << KVM_CLEAR_LOG_SHIFT) == 0, "log_clear start not aligned to 64 pages"
            last = min(slot.size // PAGE_SIZE, -(-last // 64) * 64)
            w0 = (slot.first_page + first) // WORD_PAGES
            w1 = -(-(slot.first_page + last) // WORD_PAGES)
            huge = 0
            if self.kvm.huge_backing:  # before the clear: it zeroes the mask
                huge = int(kernels.first_clears(self.kvm.dirty, self.dirty_bmap, self.kvm.cleared_once, w0, w1))
            reprotected = int(self.clear_kernel(self.kvm.dirty, self.dirty_bmap, w0, w1))
            cost = (reprotected - huge) * self.costs.clear_dirty_log_per_page + huge * self.costs.clear_dirty_log_huge_per_page
            self.meter.add(cost)
            self.recorder.emit(ev.KvmClearDirtyLog, slot=slot.slot, first_page=first, num_pages=last - first,
                               reprotected=reprotected, cost_ns=cost)
            if self.clear_kernel is kernels.clear_all and self.on_loss_window is not None:
                self.on_loss_window("clear-all")

    def pending_dirty(self) -> list[np.ndarray]:
        """Dirty bits this listener holds for a later sync (for the oracle): the kernel bitmaps."""
        return [self.kvm.dirty]


class KvmRingMemoryListener(KvmMemoryListener):
    """``kvm-memory`` with a dirty ring: ``log_sync_global`` and no ``log_sync``/``log_clear``."""

    log_sync = None
    log_clear = None

    def _sync_slot_before_delete(self, slot: KVMSlot) -> None:
        """Reap the rings so the slot's dirty pages reach ``dirty_bmap``, then push them to L2."""
        self.reap("slot-delete")
        w = slot.words
        if self.memory.global_dirty_tracking:
            kernels.or_into(self.kvm.ram_list.dirty_memory, self.dirty_bmap, w.start, w.stop)
        fill_slot(self.dirty_bmap, slot, False)

    def __init__(self, kvm: KvmDirtyLog, memory, tracking: DirtyTracking, costs, meter: CostMeter):
        super().__init__(kvm, memory, tracking, costs, meter)
        self.reaped = np.zeros(kvm.rings.shape[0], dtype=np.int64)  # cpu->dirty_pages

    def reap(self, reason: str, vcpu: int = -1, only: bool = False, bql_wait_ns: int = 0) -> int:
        """``kvm_dirty_ring_reap`` (all vCPUs, or ``vcpu``'s ring ``only``) + ``KVM_RESET_DIRTY_RINGS``; its time.

        ``bql_wait_ns``: how long the reaping thread waited for the BQL first (recorded with the reap)."""
        self.dirty_bmap = grown(self.dirty_bmap, self.kvm.ram_list.dirty_memory.shape[0])
        k = self.kvm
        rows = slice(vcpu, vcpu + 1) if only else slice(None)  # views: the kernel updates the real arrays
        n = int(kernels.reap_rings(k.rings[rows], k.dirty_index[rows], k.reset_index[rows], self.dirty_bmap,
                                   k.protected, self.reaped[rows]))
        cost = n * (self.costs.ring_reap_per_entry + self.costs.ring_reset_per_entry)
        self.recorder.emit(ev.DirtyRingReap, reason=reason, vcpu=vcpu, entries=n, cost_ns=cost, bql_wait_ns=bql_wait_ns)
        return cost

    def log_sync_global(self, last_stage: bool) -> None:
        """``kvm_log_sync_global``: flush every ring, then push each logging slot's bits to L2 and zero them."""
        self.meter.add(self.reap("sync"))
        words = 0
        for slot in self.kvm.slots:
            if slot.logging:
                words += self._set_dirty_lebitmap(slot.words)  # kvm_slot_sync_dirty_pages
                fill_slot(self.dirty_bmap, slot, False)  # kvm_slot_reset_dirty_pages
        self.meter.add(words * SET_DIRTY_CLIENTS * self.costs.dirty_word_atomic)

    def pending_dirty(self) -> list[np.ndarray]:
        """Collected bits not yet pushed to L2, and pages in entries nobody has collected."""
        return [self.dirty_bmap, self.kvm.unreaped_pages()]


def _key(section: MemoryRegionSection) -> tuple:
    return (id(section.mr), section.offset_within_region, section.size, section.offset_within_address_space)
