"""KVM memslots and dirty logging (``accel.kvm``): each rule and each cost it charges, on a hand-built memory map.

A memory system with one or two RAM regions and QEMU's ``kvm-memory``
listener (``accel/kvm/kvm-all.c``), no simulation around it: writes go straight
through ``KvmDirtyLog.apply_writes``, so every bit, event and nanosecond charged
is known in advance.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from builders import of
from dirtysim.accel.cost import CostMeter
from dirtysim.accel.kvm import (KvmDirtyLog, KvmMemoryListener, KvmRingMemoryListener, dirty_ring_soft_limit)
from dirtysim.dirty.ramlist import RAMList
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION, MemorySystem
from dirtysim.memory.region import (DIRTY_MEMORY_VGA, memory_region_init, memory_region_init_alias,
                                    memory_region_init_ram, memory_region_init_rom, memory_region_init_rom_device)
from dirtysim.scenario.schema import Costs, DirtyTracking

pytestmark = pytest.mark.rules

PAGE = 4096
MIB = 1 << 20
GIB = 1 << 30
COSTS = Costs(get_dirty_log_per_gib="7000ns", clear_dirty_log_per_page="73ns", memslot_update="20us",
              ring_reap_per_entry="50ns", ring_reset_per_entry="70ns")


class Rig:
    """A memory system with RAM regions (name -> (gpa, size)) and KVM's listener, dirty logging started."""

    def __init__(self, regions=(("a", 0, 16 * MIB),), mode="bitmap", manual_protect=True, initially_set=False,
                 kvm_clear="mask", start=True, kinds=None, hooks=True):
        self.rec = Recorder(lambda: 0)
        self.rl, self.mem = RAMList(), MemorySystem(self.rec)
        ring = mode == "ring"  # kvm_setup_dirty_ring: no manual protect with the ring
        self.tracking = DirtyTracking(mode=mode, manual_protect=manual_protect and not ring,
                                      initially_set=initially_set and not ring,
                                      kvm_clear=kvm_clear, ring_size=1024)
        self.kvm = KvmDirtyLog(self.rl, self.tracking, 2)
        self.root = memory_region_init("system", 1 << 40)
        asp = self.mem.address_space_init(self.root, "memory")
        cls = KvmRingMemoryListener if mode == "ring" else KvmMemoryListener
        self.meter = CostMeter()
        self.listener = cls(self.kvm, self.mem, self.tracking, COSTS, self.meter)
        self.mem.memory_listener_register(self.listener, asp)
        self.inhibits: list[int] = []
        self.losses: list[str] = []
        if hooks:
            self.listener.on_inhibit = self.inhibits.append
            self.listener.on_loss_window = self.losses.append
        if mode == "ring":
            self.kvm.on_ring_full = lambda v: self.listener.reap("ring-full", v)
        self.mr = {}
        kinds = kinds or {}
        for name, gpa, size in regions:
            block = self.rl.ram_block_add(name, size)
            init = {"rom": memory_region_init_rom, "romd": memory_region_init_rom_device}.get(kinds.get(name),
                                                                                            memory_region_init_ram)
            self.mr[name] = block.mr = init(name, size, block)
            self.mem.memory_region_add_subregion(self.root, gpa, block.mr)
        self.rl.dirty_memory[:] = 0
        if start:
            self.mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
        self.meter.drain()

    def write(self, *gpa_pages: int, vcpu: int = 0) -> int:
        """One vCPU's writes; returns its write-protect faults."""
        faults = np.zeros(2, dtype=np.int64)
        n = len(gpa_pages)
        seg_end = np.array([0 if vcpu else n, n], dtype=np.int64)  # vCPU v's writes end at seg_end[v]
        self.unassigned = self.kvm.apply_writes(np.array(gpa_pages, dtype=np.int64), seg_end, faults)
        return int(faults[vcpu])

    def sync(self, mr=None) -> None:
        self.mem.memory_region_sync_dirty_bitmap(mr, False)

    def clear(self, name: str, first_page: int, pages: int) -> None:
        self.mem.memory_region_clear_dirty_bitmap(self.mr[name], first_page * PAGE, pages * PAGE)

    def events(self, cls):
        return of(self.rec.events, cls)


def _logged(e: ev.Event) -> ev.Event:
    """The event as ``dirtysim replay`` reads it back (an int field holding a float would be rejected)."""
    return msgspec.json.decode(msgspec.json.encode(e), type=type(e))


def _pages(words: np.ndarray) -> list[int]:
    return np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")).tolist()


def test_dirty_ring_soft_limit():
    """``kvm_dirty_ring_alloc``: size - 64 reserved entries - 512 PML entries when PML is used."""
    assert dirty_ring_soft_limit(4096, True) == 4096 - 64 - 512 == 3520
    assert dirty_ring_soft_limit(4096, False) == 4096 - 64
    assert Rig(mode="ring").kvm.soft_limit == 1024 - 576


@pytest.mark.parametrize("gpa,size,ram_addr", [(2048, 4096, 0), (0, 6144, 0), (0, 4096, 512), (0, 0, 0)])
def test_memslots_are_whole_pages(gpa, size, ram_addr):
    kvm = Rig(regions=()).kvm
    with pytest.raises(ValueError, match="not whole pages"):
        kvm.set_user_memory_region(gpa, size, ram_addr)
    slot = kvm.set_user_memory_region(0xA0000, 16 << 10, 0)  # the pc board's sizes: accepted, writable by default
    assert (slot.gpa, slot.size, slot.readonly) == (0xA0000, 16 << 10, False)


@pytest.mark.parametrize("mode", ["bitmap", "ring"])
def test_a_slot_sharing_a_word_leaves_its_neighbours_bits(mode):
    """pc's 640 KiB of low RAM and a 16 KiB PAM segment share a 64-page word: deleting the segment's slot or
    turning its logging off must keep the other slot's dirty bits (bitmap) and write protection (ring)."""
    rl = RAMList()
    rl.ram_block_add("pc.ram", 1 * MIB)
    ring = mode == "ring"
    kvm = KvmDirtyLog(rl, DirtyTracking(mode=mode, manual_protect=not ring, initially_set=False, ring_size=1024), 2)
    low = kvm.set_user_memory_region(0, 0xA0000, 0)
    pam = kvm.set_user_memory_region(0xA0000, 0x4000, 0xA0000)
    for slot in (low, pam):
        kvm.set_logging(slot, True)
    bits = kvm.protected if ring else kvm.dirty
    before = _pages(bits)
    if not ring:
        kvm.apply_writes(np.array([159, 160], dtype=np.int64), np.array([2, 2], dtype=np.int64),
                         np.zeros(2, dtype=np.int64))
        before = [159, 160]
    kvm.set_logging(pam, False)
    kvm.delete_slot(pam)
    assert _pages(bits) == [p for p in before if p < 160]  # page 159 (word 2, as pages 160-163) kept


def test_each_mode_keeps_only_its_bitmap():
    bitmap, ring = Rig(), Rig(mode="ring")
    assert (bitmap.kvm.dirty.shape, bitmap.kvm.protected.shape) == ((16 * MIB // PAGE // 64,), (0,))
    assert (ring.kvm.dirty.shape, ring.kvm.protected.shape) == ((0,), (16 * MIB // PAGE // 64,))
    assert (bitmap.kvm.ring, ring.kvm.ring) == (False, True)


# -- bitmap mode: GET, CLEAR and their costs ----------------------------------------------------------


def test_manual_protect_get_copies_and_charges_per_gib():
    """``kvm_physical_sync_dirty_bitmap``, manual protect: the bits go to L2, nothing re-protected.

    GET costs 7,000 ns per GiB of memslot: 16 MiB -> 7000 * 16 // 1024 = 109 ns; then
    ``physical_memory_set_dirty_lebitmap`` ORs each non-zero word (pages 3 and 4 share word 0, 700 is in
    word 10) into DIRTY_MEMORY_VGA and _MIGRATION: 2 words x 2 atomics x 10 ns = 40 ns.
    """
    r = Rig()
    assert r.write(3, 4, 3, 700) == 3  # write-protected until the first CLEAR: each first write faults
    r.sync()
    assert _pages(r.rl.dirty_memory) == [3, 4, 700]
    get = r.events(ev.KvmGetDirtyLog)[-1]
    assert (get.slot, get.pages, get.reprotected, get.cost_ns, get.words) == (0, 3, 0, 7000 * 16 // 1024 + 40, 2)
    assert r.meter.drain() == 149
    assert _pages(r.kvm.dirty) == [3, 4, 700], "the kernel keeps its bits until the CLEAR"
    assert r.write(3) == 0


def test_legacy_get_reprotects_and_charges_per_page():
    """Without manual protect GET exchanges each word with 0 and re-protects: + 73 ns per page; CLEAR is a no-op."""
    r = Rig(manual_protect=False, initially_set=False)
    r.write(3, 4, 700)
    r.sync()
    get = r.events(ev.KvmGetDirtyLog)[-1]
    assert (get.pages, get.reprotected, get.cost_ns) == (3, 3, 109 + 3 * 73 + 2 * 2 * 10)  # + 2 words, 2 clients
    assert r.meter.drain() == 109 + 219 + 40
    assert not r.kvm.dirty.any() and _pages(r.rl.dirty_memory) == [3, 4, 700]
    assert r.write(3) == 1
    r.clear("a", 0, 4096)
    assert r.events(ev.KvmClearDirtyLog) == [] and r.meter.drain() == 0


def test_clear_uses_the_fetched_mask_rounded_to_64_pages():
    """``kvm_log_clear_one_slot``: the range is rounded up to 64 pages; only fetched bits are cleared (73 ns each)."""
    r = Rig()
    r.write(3, 64, 100, 127, 128, 191, 192, 300)
    r.sync()
    r.meter.drain()
    r.write(65)  # set after the GET: not in the mask
    r.clear("a", 64, 66)  # pages 64..129 -> 64..191
    clear = _logged(r.events(ev.KvmClearDirtyLog)[-1])
    assert (clear.slot, clear.first_page, clear.num_pages, clear.reprotected, clear.cost_ns) == (0, 64, 128, 5, 5 * 73)
    assert r.meter.drain() == 365
    assert _pages(r.kvm.dirty) == [3, 65, 192, 300]
    assert r.write(64, 100, 192) == 2  # re-protected pages fault again
    assert r.losses == []


def test_clear_must_start_on_64_pages():
    r = Rig()
    with pytest.raises(AssertionError, match="^log_clear start not aligned to 64 pages$"):
        r.clear("a", 10, 64)


def test_clear_all_drops_unfetched_bits_and_opens_a_loss_window():
    """WRONG on purpose (``kvm_clear: clear-all``): a bit set after the GET is cleared too, and the oracle audits."""
    r = Rig(kvm_clear="clear-all")
    r.write(1)
    r.sync()
    r.write(2)
    r.clear("a", 0, 64)
    assert not r.kvm.dirty.any() and r.events(ev.KvmClearDirtyLog)[-1].reprotected == 1  # the fetched one
    assert r.losses == ["clear-all"]


def test_initially_set_logging_starts_all_dirty():
    """INITIALLY_SET: a fresh bitmap of ones (nothing write-protected); otherwise zeros (everything protected)."""
    r = Rig(initially_set=True)
    assert r.kvm.dirty.all() and r.write(9) == 0
    r.sync()
    assert r.events(ev.KvmGetDirtyLog)[-1].pages == 4096


def test_log_sync_of_one_region_gets_only_its_slot():
    """``slots_in``: a section covers the slots it overlaps; the adjacent slot is not fetched."""
    r = Rig(regions=(("a", 0, 16 * MIB), ("b", 16 * MIB, 16 * MIB)))
    r.write(5, 4096 + 6)
    r.sync(r.mr["b"])
    assert [(g.slot, g.pages) for g in r.events(ev.KvmGetDirtyLog)] == [(1, 1)]
    assert _pages(r.rl.dirty_memory) == [4096 + 6]
    r.sync(r.mr["a"])
    assert [(g.slot, g.pages) for g in r.events(ev.KvmGetDirtyLog)] == [(1, 1), (0, 1)]


def test_vga_logging_without_migration_does_not_feed_migration():
    """A slot logged for VGA only: GET runs, but nothing reaches the migration bitmap (no global dirty tracking)."""
    r = Rig(start=False)
    r.mem.memory_region_set_log(r.mr["a"], True, DIRTY_MEMORY_VGA)
    r.write(7)
    r.sync()
    assert r.events(ev.KvmGetDirtyLog)[-1].pages == 1 and not r.rl.dirty_memory.any()


def test_log_start_and_stop_only_on_mask_changes_from_and_to_zero():
    """``kvm_log_start``/``kvm_log_stop``: migration starting or stopping while VGA logs keeps the bitmap as is."""
    r = Rig(start=False)
    r.mem.memory_region_set_log(r.mr["a"], True, DIRTY_MEMORY_VGA)
    r.write(7)
    r.mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    assert _pages(r.kvm.dirty) == [7], "logging already on: not restarted"
    r.mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION)
    assert r.kvm.slots[0].logging and _pages(r.kvm.dirty) == [7]
    r.mem.memory_region_set_log(r.mr["a"], False, DIRTY_MEMORY_VGA)
    assert not r.kvm.slots[0].logging and not r.kvm.dirty.any()
    assert r.write(7) == 0


def test_writes_to_a_rom_are_not_performed():
    """ROMs and ROM devices in ROMD mode are read-only memslots: guest writes exit to QEMU, nothing is logged."""
    r = Rig(regions=(("a", 0, 16 * MIB), ("rom", 32 * MIB, MIB), ("romd", 64 * MIB, MIB)),
            kinds={"rom": "rom", "romd": "romd"})
    assert [(s.slot, s.readonly) for s in r.kvm.slots] == [(0, False), (1, True), (2, True)]
    r.write(8192, 16384, 1)
    assert r.unassigned == 2 and _pages(r.kvm.dirty) == [1]
    r.mem.memory_region_rom_device_set_romd(r.mr["romd"], False)
    assert [s.gpa for s in r.kvm.slots] == [0, 32 * MIB], "out of ROMD mode a ROM device is MMIO: no memslot"
    r.mem.memory_region_rom_device_set_romd(r.mr["romd"], True)
    assert [s.gpa for s in r.kvm.slots] == [0, 32 * MIB, 64 * MIB]


# -- memory-map updates ----------------------------------------------------------------------------


def test_overlapping_update_holds_vcpus_out():
    """``kvm_region_commit``: moving RAM by 8 MiB deletes and re-adds overlapping ranges: inhibit, 20 us per ioctl."""
    r = Rig()
    r.mem.memory_region_set_address(r.mr["a"], 8 * MIB)
    upd = r.events(ev.KvmMemslotUpdate)[-1]
    assert (upd.deleted, upd.added, upd.inhibited, upd.stall_ns) == (1, 1, True, 2 * 20_000)
    assert r.inhibits == [40_000]
    assert [(s.gpa, s.size, s.logging) for s in r.kvm.slots] == [(8 * MIB, 16 * MIB, True)]


def test_adjacent_update_does_not_hold_vcpus_out():
    """Deleted [0, 16 MiB) and added [16 MiB, 32 MiB) touch but do not overlap: no inhibit, no stall."""
    r = Rig()
    r.mem.memory_region_set_address(r.mr["a"], 16 * MIB)
    upd = r.events(ev.KvmMemslotUpdate)[-1]
    assert (upd.deleted, upd.added, upd.inhibited, upd.stall_ns) == (1, 1, False, 0)
    assert r.inhibits == []


def test_a_deleted_slot_hands_its_dirty_bits_to_migration():
    """``kvm_set_phys_mem`` delete path: the slot's kernel bits reach L2 before the slot goes."""
    r = Rig()
    r.write(11, 12)
    r.mem.memory_region_del_subregion(r.root, r.mr["a"])
    assert _pages(r.rl.dirty_memory) == [11, 12] and r.kvm.slots == [] and not r.kvm.dirty.any()


def test_a_re_added_slot_starts_with_an_empty_clear_mask():
    """After a move, the slot cache of the old slot is gone: a CLEAR re-protects nothing fetched before."""
    r = Rig()
    r.write(1, 2)
    r.sync()
    r.mem.memory_region_set_address(r.mr["a"], 64 * MIB)
    assert r.kvm.slots[0].logging and not r.kvm.dirty.any(), "logging from the start: a fresh bitmap"
    assert r.write(16384 + 0) == 1
    r.clear("a", 0, 64)
    assert r.events(ev.KvmClearDirtyLog)[-1].reprotected == 0 and _pages(r.kvm.dirty) == [0]


def test_pending_dirty_is_the_kernel_bitmap():
    r = Rig()
    r.write(5)
    (bm,) = r.listener.pending_dirty()
    assert _pages(bm) == [5]


# -- dirty ring --------------------------------------------------------------------------------------


def test_ring_write_pushes_an_entry_and_unprotects():
    """Ring mode: a write to a protected page pushes one entry; the page stays writable until reaped."""
    r = Rig(mode="ring")
    assert r.write(3, 3, 4, 100_000) == 2
    assert r.unassigned == 1, "a write no memslot maps"
    assert _pages(r.kvm.unreaped_pages()) == [3, 4]
    assert _pages(r.listener.pending_dirty()[1]) == [3, 4] and not r.listener.pending_dirty()[0].any()


def test_ring_reap_costs_per_entry_and_reprotects():
    """``kvm_dirty_ring_reap`` + KVM_RESET_DIRTY_RINGS: 50 + 70 ns per entry; reaped pages are protected again."""
    r = Rig(mode="ring")
    r.write(3, 4)
    r.write(5, vcpu=1)
    assert r.listener.reap("reaper") == 3 * 120
    reap = r.events(ev.DirtyRingReap)[-1]
    assert (reap.reason, reap.vcpu, reap.entries, reap.cost_ns) == ("reaper", -1, 3, 360)
    assert _pages(r.listener.dirty_bmap) == [3, 4, 5] and not r.kvm.unreaped_pages().any()
    assert r.meter.drain() == 0, "the reaper thread's reap is not charged to the migration thread"
    assert r.write(3) == 1


def test_ring_sync_global_flushes_to_migration_and_charges_the_caller():
    """``kvm_log_sync_global``: reap every ring (charged), push the bits to L2, reset the slot's bitmap."""
    r = Rig(mode="ring")
    r.write(3, 4000)
    r.sync()
    assert r.meter.drain() == 2 * 120 + 2 * 2 * 10  # 2 entries reaped + reset; 2 words ORed into 2 clients
    assert _pages(r.rl.dirty_memory) == [3, 4000] and not r.listener.dirty_bmap.any()
    assert r.events(ev.DirtyRingReap)[-1].reason == "sync"


def test_ring_full_exits_and_resumes():
    """448 = 1024 - 576 entries make the ring soft-full: the vCPU exits once, QEMU reaps, the writes go on."""
    r = Rig(mode="ring")
    r.write(*range(500))
    full = [e for e in r.events(ev.DirtyRingReap) if e.reason == "ring-full"]
    assert [(e.vcpu, e.entries) for e in full] == [(0, 448)]
    assert _pages(r.kvm.unreaped_pages()) == list(range(448, 500))
    r.sync()
    assert _pages(r.rl.dirty_memory) == list(range(500))


def test_ring_slot_delete_reaps_first():
    """Deleting a logged slot in ring mode reaps the rings so its pages reach L2."""
    r = Rig(mode="ring")
    r.write(21, 22)
    r.mem.memory_region_del_subregion(r.root, r.mr["a"])
    assert r.events(ev.DirtyRingReap)[-1].reason == "slot-delete"
    assert _pages(r.rl.dirty_memory) == [21, 22] and not r.listener.dirty_bmap.any()


def test_ring_logging_off_unprotects():
    r = Rig(mode="ring")
    r.mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION)
    assert r.write(3) == 0 and not r.kvm.unreaped_pages().any()


# -- two slots: each rule touches only its own slot's words -----------------------------------------------

TWO = (("a", 0, 16 * MIB), ("b", 32 * MIB, 16 * MIB))  # slot b: GPA page 8192 = RAM page 4096
B = 8192  # first GPA page of b
B_RAM = 4096


def test_get_of_one_slot_leaves_the_other_slots_words():
    """Manual protect: GET of a copies and counts only a's words; b's fetched bits stay out of L2 until b's GET."""
    r = Rig(regions=TWO)
    r.write(5, B + 6)
    r.sync()
    r.rl.dirty_memory[:] = 0
    r.write(7, B + 9)
    r.sync(r.mr["a"])
    assert _pages(r.rl.dirty_memory) == [5, 7]
    r.sync(r.mr["b"])
    assert [(g.slot, g.pages) for g in r.events(ev.KvmGetDirtyLog)] == [(0, 1), (1, 1), (0, 2), (1, 2)]
    assert _pages(r.rl.dirty_memory) == [5, 7, B_RAM + 6, B_RAM + 9]
    r.rl.dirty_memory[:] = 0
    r.sync(r.mr["b"])
    assert _pages(r.rl.dirty_memory) == [B_RAM + 6, B_RAM + 9]


def test_legacy_get_of_one_slot_leaves_the_other_slots_bits():
    r = Rig(regions=TWO, manual_protect=False)
    r.write(5, B + 6)
    r.sync(r.mr["b"])
    assert _pages(r.kvm.dirty) == [5] and _pages(r.rl.dirty_memory) == [B_RAM + 6]
    r.sync(r.mr["a"])
    assert [(g.slot, g.pages, g.reprotected) for g in r.events(ev.KvmGetDirtyLog)] == [(1, 1, 1), (0, 1, 1)]
    r.write(5, B + 6)
    r.sync(r.mr["a"])
    assert _pages(r.kvm.dirty) == [B_RAM + 6], "a's GET re-protects only a's pages"


def test_clear_in_a_slot_above_gpa_zero():
    """The CLEAR range is relative to the slot: pages 0..63 of b are RAM pages 4096..4159; a's mask is untouched."""
    r = Rig(regions=TWO)
    r.write(1, B + 1, B + 4032)
    r.sync()
    r.clear("b", 0, 64)
    clear = _logged(r.events(ev.KvmClearDirtyLog)[-1])
    assert (clear.slot, clear.first_page, clear.num_pages, clear.reprotected) == (1, 0, 64, 1)
    r.clear("b", 4032, 64)  # the slot's last chunk
    clear = _logged(r.events(ev.KvmClearDirtyLog)[-1])
    assert (clear.first_page, clear.num_pages, clear.reprotected) == (4032, 64, 1)
    assert _pages(r.kvm.dirty) == [1]


def test_deleting_one_slot_hands_over_only_its_bits():
    r = Rig(regions=TWO)
    r.write(11, B + 12)
    r.mem.memory_region_del_subregion(r.root, r.mr["a"])
    assert _pages(r.rl.dirty_memory) == [11] and _pages(r.kvm.dirty) == [B_RAM + 12]
    r2 = Rig(regions=TWO)
    r2.write(11, B + 12)
    r2.mem.memory_region_del_subregion(r2.root, r2.mr["b"])
    assert _pages(r2.rl.dirty_memory) == [B_RAM + 12] and _pages(r2.kvm.dirty) == [11]


def test_ring_slot_delete_and_sync_push_only_their_slots():
    """Ring: a slot deletion reaps every ring but pushes only that slot's collected bits to L2."""
    r = Rig(regions=TWO, mode="ring")
    r.write(21, B + 22)
    r.mem.memory_region_del_subregion(r.root, r.mr["b"])
    assert _pages(r.rl.dirty_memory) == [B_RAM + 22] and _pages(r.listener.dirty_bmap) == [21]
    r2 = Rig(regions=TWO, mode="ring")
    r2.write(21, B + 22)
    r2.mem.memory_region_del_subregion(r2.root, r2.mr["a"])
    assert _pages(r2.rl.dirty_memory) == [21] and _pages(r2.listener.dirty_bmap) == [B_RAM + 22]


def test_ring_sync_without_migration_feeds_nothing_to_migration():
    """``kvm_log_sync_global`` with VGA logging only: the rings are reaped, nothing reaches migration's bitmap."""
    r = Rig(regions=TWO, mode="ring", start=False)
    r.mem.memory_region_set_log(r.mr["b"], True, DIRTY_MEMORY_VGA)
    r.write(3, B + 4)
    r.sync()
    assert r.events(ev.DirtyRingReap)[-1].entries == 1
    assert not r.rl.dirty_memory.any() and not r.listener.dirty_bmap.any()


def test_logging_on_for_one_slot_keeps_the_others_bitmap():
    """``kvm_log_start`` of a fresh slot resets only that slot's bitmap."""
    r = Rig(regions=TWO, start=False)
    r.mem.memory_region_set_log(r.mr["b"], True, DIRTY_MEMORY_VGA)
    r.write(B + 3)
    r.mem.memory_region_set_log(r.mr["a"], True, DIRTY_MEMORY_VGA)
    assert _pages(r.kvm.dirty) == [B_RAM + 3]


def test_moving_down_next_to_the_old_range_does_not_inhibit():
    """Deleted [32, 48) MiB, added [16, 32) MiB: the new range ends where the old began: no overlap."""
    r = Rig(regions=(("b", 32 * MIB, 16 * MIB),))
    r.mem.memory_region_set_address(r.mr["b"], 16 * MIB)
    upd = r.events(ev.KvmMemslotUpdate)[-1]
    assert (upd.inhibited, upd.stall_ns) == (False, 0) and r.inhibits == []


def test_alias_maps_the_ram_at_its_offset():
    """A section that starts inside its region: the slot's ram_addr is the block offset + offset within region."""
    r = Rig(regions=(("a", 0, 16 * MIB),))
    alias = memory_region_init_alias("hi", r.mr["a"], 4 * MIB, MIB)
    r.mem.memory_region_add_subregion(r.root, 64 * MIB, alias)
    slot = r.kvm.slots[-1]
    assert (slot.gpa, slot.size, slot.ram_addr) == (64 * MIB, MIB, 4 * MIB)
    r.write(64 * MIB // PAGE + 3)
    r.sync()
    assert _pages(r.rl.dirty_memory) == [4 * MIB // PAGE + 3]


def test_an_unhooked_listener_works():
    """Without a machine nobody listens for inhibits or loss windows: updates and clears still go through."""
    r = Rig(kvm_clear="clear-all", hooks=False)
    r.write(1)
    r.sync()
    r.clear("a", 0, 64)
    r.mem.memory_region_set_address(r.mr["a"], 8 * MIB)
    assert r.events(ev.KvmMemslotUpdate)[-1].inhibited and r.inhibits == [] and r.losses == []


def _ring_kvm():
    """A 16 MiB guest's KVM with a 1024-entry ring (soft limit 960, no PML) and one logging memslot."""
    from dirtysim.accel.kvm import KvmDirtyLog
    from dirtysim.dirty.ramlist import RAMList
    from dirtysim.scenario.schema import DirtyTracking

    rl = RAMList()
    rl.ram_block_add("pc.ram", 16 << 20)
    kvm = KvmDirtyLog(rl, DirtyTracking(mode="ring", manual_protect=False, initially_set=False, ring_size=1024,
                                        pml=False), 1)
    kvm.set_logging(kvm.set_user_memory_region(0, 16 << 20, 0), True)
    return kvm


def test_a_ring_that_a_reap_does_not_free_is_a_broken_invariant():
    """``KvmDirtyLog.apply_writes`` resumes after each ring-full exit; a reap that frees nothing would exit forever."""
    from dirtysim.migration.invariant import BrokenInvariant

    kvm = _ring_kvm()
    kvm.on_ring_full = lambda vcpu: None  # a "reap" that collects nothing
    with pytest.raises(BrokenInvariant, match=r"^vCPU 0's dirty ring stays full after a reap \(write 960\)$"):
        kvm.apply_writes(np.arange(2048, dtype=np.int64), np.array([2048], dtype=np.int64), np.zeros(1, dtype=np.int64))


def test_a_call_that_starts_with_a_full_ring_exits_at_once_and_goes_on_after_each_reap():
    """Entering with a full ring exits before the first write (resume index = start): legitimate, once per reap."""
    from dirtysim.dirty import kernels

    kvm = _ring_kvm()
    collected, exits = np.zeros_like(kvm.protected), []

    def reap(vcpu):
        exits.append(vcpu)
        kernels.reap_rings(kvm.rings, kvm.dirty_index, kvm.reset_index, collected, np.zeros_like(kvm.protected),
                           np.zeros(1, dtype=np.int64))  # collect, and leave the pages writable

    kvm.on_ring_full = reap
    seg = lambda n: np.array([n], dtype=np.int64)  # noqa: E731
    faults = np.zeros(1, dtype=np.int64)
    kvm.apply_writes(np.arange(960, dtype=np.int64), seg(960), faults)  # fills the ring to its soft limit: one exit
    assert exits == [0] and kvm.dirty_index[0] - kvm.reset_index[0] == 0
    kvm.dirty_index[0] += 960  # the ring is full again before the next call
    kvm.apply_writes(np.arange(960, 4000, dtype=np.int64), seg(3040), faults)  # exits at once, then every 960
    assert exits == [0] * 5 and int(faults[0]) == 4000
    assert int(np.bitwise_count(collected).sum()) == 960 + 3 * 960  # every push collected; 160 wait in the ring
