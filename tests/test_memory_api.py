"""QEMU's memory API (system/memory.c): region tree, FlatView, transactions, listener order, replay."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dirtysim.dirty.ramlist import RAMBlock
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.memory.address_space import GLOBAL_DIRTY_DIRTY_RATE, GLOBAL_DIRTY_MIGRATION, MemorySystem
from dirtysim.memory.flatview import FlatRange, can_merge
from dirtysim.memory.listener import HOOKS, MemoryListener
from dirtysim.memory.region import (DIRTY_MEMORY_CODE, DIRTY_MEMORY_MIGRATION, DIRTY_MEMORY_VGA, MemoryRegion,
                                    memory_region_init, memory_region_init_alias, memory_region_init_io,
                                    memory_region_init_ram, memory_region_init_rom, memory_region_init_rom_device)

MIB, GIB = 1 << 20, 1 << 30
MIGRATION = 1 << DIRTY_MEMORY_MIGRATION
VGA = 1 << DIRTY_MEMORY_VGA


class Call(NamedTuple):
    listener: str
    hook: str
    section: Optional[str] = None
    offset: Optional[int] = None
    size: Optional[int] = None
    masks: Optional[tuple[int, int]] = None


class Recording(MemoryListener):
    """Implements every hook except ``log_sync_global`` and appends a ``Call`` to a shared log."""

    def __init__(self, name: str, log: list, priority: int = 0, skip: tuple = ("log_sync_global",),
                 fail_global_start: bool = False):
        self.name, self.priority, self.log, self.fail_global_start = name, priority, log, fail_global_start
        for hook in HOOKS:
            if hook not in skip:
                setattr(self, hook, partial(self._hook, hook))

    def _hook(self, hook: str, section=None, *args):
        if section is None:
            call = Call(self.name, hook)
        elif hook in ("eventfd_add", "eventfd_del"):
            call = Call(self.name, hook, args[2], section.offset_within_address_space, section.size)
        elif hook in ("coalesced_io_add", "coalesced_io_del"):
            call = Call(self.name, hook, section.mr.name, args[0], args[1])
        else:
            masks = tuple(args) if hook in ("log_start", "log_stop") else None
            call = Call(self.name, hook, section.mr.name, section.offset_within_address_space, section.size, masks)
        self.log.append(call)
        return not (hook == "log_global_start" and self.fail_global_start)


def machine():
    mem = MemorySystem(Recorder(lambda: 0))
    root = memory_region_init("system", 1 << 40)
    return mem, root, mem.address_space_init(root, "memory")


def ram(name: str, size: int, init=memory_region_init_ram) -> MemoryRegion:
    return init(name, size, RAMBlock(name, 0, size))


def one_ram_region_watched():
    """A 1 MiB RAM region at 0 and a listener "kvm" registered after it, its log emptied."""
    mem, root, asp = machine()
    log: list[Call] = []
    r1 = ram("r1", MIB)
    mem.memory_region_add_subregion(root, 0, r1)
    mem.memory_listener_register(Recording("kvm", log), asp)
    log.clear()
    return mem, r1, log


def hooks(log: list, *names: str) -> list[tuple]:
    return [(c.listener, c.hook) for c in log if c.hook in names]


def view(asp) -> list[tuple]:
    return [(fr.addr, fr.size, fr.mr.name, fr.offset_in_region) for fr in asp.current_map]


# -- fact 15 and the topology passes -----------------------------------------------------------------
def test_fact15_moving_ram_deletes_everywhere_before_adding():
    """Fact 15: all region_del (listeners in reverse priority) before any region_add (forward)."""
    mem, root, asp = machine()
    log: list[Call] = []
    for name, prio in (("kvm", 10), ("dev", 0), ("vhost", 10)):
        mem.memory_listener_register(Recording(name, log, prio), asp)
    mem.memory_region_add_subregion(root, 0, ram("pc.ram", GIB))
    dimm = ram("dimm", GIB)
    mem.memory_region_add_subregion(root, 4 * GIB, dimm)
    log.clear()
    mem.memory_region_set_address(dimm, 8 * GIB)
    fwd = ["dev", "kvm", "vhost"]
    assert log == ([Call(n, "begin") for n in fwd]
                   + [Call(n, "region_del", "dimm", 4 * GIB, GIB) for n in reversed(fwd)]
                   + [Call(n, "region_nop", "pc.ram", 0, GIB) for n in fwd]
                   + [Call(n, "region_add", "dimm", 8 * GIB, GIB) for n in fwd]
                   + [Call(n, "commit") for n in fwd])


@pytest.mark.parametrize("init", [memory_region_init_rom, memory_region_init_rom_device])
def test_rom_over_ram_splits_it_in_address_order_and_removal_merges_it(init):
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm", log), asp)
    mem.memory_region_add_subregion(root, 0, ram("pc.ram", 16 * MIB))
    rom = ram("bios", MIB, init)
    log.clear()
    mem.memory_region_add_subregion(root, MIB, rom, priority=1)
    assert [c[1:5] for c in log] == [("begin", None, None, None), ("region_del", "pc.ram", 0, 16 * MIB),
                                     ("region_add", "pc.ram", 0, MIB), ("region_add", "bios", MIB, MIB),
                                     ("region_add", "pc.ram", 2 * MIB, 14 * MIB), ("commit", None, None, None)]
    assert view(asp)[2] == (2 * MIB, 14 * MIB, "pc.ram", 2 * MIB)
    log.clear()
    mem.memory_region_del_subregion(root, rom)
    assert [c[1:5] for c in log] == [("begin", None, None, None), ("region_del", "pc.ram", 0, MIB),
                                     ("region_del", "bios", MIB, MIB), ("region_del", "pc.ram", 2 * MIB, 14 * MIB),
                                     ("region_add", "pc.ram", 0, 16 * MIB), ("commit", None, None, None)]


def test_priorities_overlap_and_disabled_regions():
    """Higher priority wins; at equal priority the newer subregion wins; a disabled container hides its subtree."""
    mem, root, asp = machine()
    low, high, newer = ram("low", 4 * MIB), ram("high", MIB), ram("newer", MIB)
    mem.memory_region_add_subregion(root, 0, low, priority=0)
    mem.memory_region_add_subregion(root, MIB, high, priority=2)
    mem.memory_region_add_subregion(root, 0, newer, priority=0)
    assert view(asp) == [(0, MIB, "newer", 0), (MIB, MIB, "high", 0), (2 * MIB, 2 * MIB, "low", 2 * MIB)]
    pci = memory_region_init("pci", 4 * MIB)
    mem.memory_region_add_subregion(root, 0, pci, priority=5)
    mem.memory_region_add_subregion(pci, 3 * MIB, memory_region_init_io("mmio", MIB))
    assert view(asp)[-1] == (3 * MIB, MIB, "mmio", 0)
    mem.memory_region_set_enabled(pci, False)
    assert view(asp)[-1] == (2 * MIB, 2 * MIB, "low", 2 * MIB)
    mem.memory_region_set_address(high, 0)  # re-added, keeping its priority
    assert view(asp)[0] == (0, MIB, "high", 0) and high.priority == 2


# -- aliases and flatview_simplify ------------------------------------------------------------------------
def test_pc_ram_split_by_two_aliases():
    """pc "ram-below-4g" / "ram-above-4g": two flat ranges of pc.ram, offsets 0 and 2 GiB."""
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm", log), asp)
    pc_ram = ram("pc.ram", 3 * GIB)
    with mem.transaction():
        mem.memory_region_add_subregion(root, 0, memory_region_init_alias("ram-below-4g", pc_ram, 0, 2 * GIB))
        mem.memory_region_add_subregion(root, 4 * GIB, memory_region_init_alias("ram-above-4g", pc_ram, 2 * GIB, GIB))
    assert view(asp) == [(0, 2 * GIB, "pc.ram", 0), (4 * GIB, GIB, "pc.ram", 2 * GIB)]
    assert all(fr.mr is pc_ram for fr in asp.current_map)
    assert hooks(log, "region_add") == [("kvm", "region_add")] * 2


def test_alias_of_part_of_a_region_and_alias_offset_changes():
    mem, root, asp = machine()
    bios = ram("bios", 4 * MIB, memory_region_init_rom)
    mem.memory_region_add_subregion(root, 0xFFC0_0000, bios)
    isa_bios = memory_region_init_alias("isa-bios", bios, 3 * MIB, 128 * 1024)
    mem.memory_region_add_subregion(root, 0xE0000, isa_bios, priority=1)
    assert view(asp) == [(0xE0000, 128 * 1024, "bios", 3 * MIB), (0xFFC0_0000, 4 * MIB, "bios", 0)]
    assert asp.current_map[0].readonly
    mem.memory_region_set_alias_offset(isa_bios, 0)
    assert view(asp)[0] == (0xE0000, 128 * 1024, "bios", 0)
    with pytest.raises(ValueError, match="not an alias"):
        mem.memory_region_set_alias_offset(bios, 0)


def test_simplify_merges_only_equal_attributes():
    """Contiguous aliases of one region merge into one range; a readonly one does not."""
    mem, root, asp = machine()
    big = ram("big", 4 * MIB)
    a = memory_region_init_alias("a", big, 0, MIB)
    b = memory_region_init_alias("b", big, MIB, MIB)
    c = memory_region_init_alias("c", big, 2 * MIB, MIB)
    for i, alias in enumerate((a, b, c)):
        mem.memory_region_add_subregion(root, i * MIB, alias)
    assert view(asp) == [(0, 3 * MIB, "big", 0)]
    mem.memory_region_set_readonly(c, True)
    assert view(asp) == [(0, 2 * MIB, "big", 0), (2 * MIB, MIB, "big", 2 * MIB)]
    assert [fr.readonly for fr in asp.current_map] == [False, True]


# -- transactions ----------------------------------------------------------------------------------------
def test_nested_transactions_notify_once_at_the_outermost_commit():
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm", log), asp)
    log.clear()
    r1, r2 = ram("r1", MIB), ram("r2", MIB)
    mem.memory_region_transaction_begin()
    mem.memory_region_add_subregion(root, 0, r1)
    with mem.transaction():
        mem.memory_region_add_subregion(root, MIB, r2)
        mem.memory_region_set_enabled(r1, False)
    assert log == []
    mem.memory_region_transaction_commit()
    assert log == [Call("kvm", "begin"), Call("kvm", "region_add", "r2", MIB, MIB), Call("kvm", "commit")]


def test_commit_without_change_notifies_nothing():
    mem, r1, log = one_ram_region_watched()
    with mem.transaction():
        pass
    mem.memory_region_set_enabled(r1, True)
    mem.memory_region_set_readonly(r1, False)
    mem.memory_region_set_address(r1, 0)
    assert log == []
    with pytest.raises(RuntimeError, match="without memory_region_transaction_begin"):
        mem.memory_region_transaction_commit()


def test_change_and_undo_in_one_transaction_still_runs_the_passes():
    """QEMU re-renders whenever update_pending is set: begin, region_nop per range, commit."""
    mem, r1, log = one_ram_region_watched()
    with mem.transaction():
        mem.memory_region_set_enabled(r1, False)
        mem.memory_region_set_enabled(r1, True)
    assert [c.hook for c in log] == ["begin", "region_nop", "commit"]


# -- attributes: readonly, romd, dirty-log masks ----------------------------------------------------------
def test_readonly_and_romd_changes_replace_the_range():
    """flatrange_equal compares readonly and romd_mode, so either change is region_del + region_add."""
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm", log), asp)
    flash = ram("flash", MIB, memory_region_init_rom_device)
    mem.memory_region_add_subregion(root, 0, flash)
    assert flash.is_romd and not flash.is_ram
    log.clear()
    mem.memory_region_rom_device_set_romd(flash, False)
    assert [c.hook for c in log] == ["begin", "region_del", "region_add", "commit"]
    assert not flash.is_romd and not asp.current_map[0].romd_mode
    r = ram("r", MIB)
    mem.memory_region_add_subregion(root, MIB, r)
    log.clear()
    mem.memory_region_set_readonly(r, True)
    assert [c.hook for c in log] == ["begin", "region_del", "region_nop", "region_add", "commit"]
    assert r.is_rom and asp.current_map[1].readonly


def test_dirty_log_mask_changes_are_nop_plus_log_start_or_stop():
    """The mask is not part of flatrange_equal: VGA logging gives region_nop + log_start(0, VGA)."""
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm", log), asp)
    vram = ram("vga.vram", MIB)
    mem.memory_region_add_subregion(root, 0, vram)
    log.clear()
    mem.memory_region_set_log(vram, True, DIRTY_MEMORY_VGA)
    mem.memory_region_set_log(vram, True, DIRTY_MEMORY_VGA)  # reference counted: no second update
    assert log == [Call("kvm", "begin"), Call("kvm", "region_nop", "vga.vram", 0, MIB),
                   Call("kvm", "log_start", "vga.vram", 0, MIB, (0, VGA)), Call("kvm", "commit")]
    mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    assert log[-2] == Call("kvm", "log_start", "vga.vram", 0, MIB, (VGA, VGA | MIGRATION))
    mem.memory_region_set_log(vram, False, DIRTY_MEMORY_VGA)
    log.clear()
    mem.memory_region_set_log(vram, False, DIRTY_MEMORY_VGA)
    assert log[-2] == Call("kvm", "log_stop", "vga.vram", 0, MIB, (VGA | MIGRATION, MIGRATION))
    with pytest.raises(ValueError, match="not DIRTY_MEMORY_VGA"):
        mem.memory_region_set_log(vram, True, DIRTY_MEMORY_MIGRATION)
    with pytest.raises(ValueError, match="not on"):
        mem.memory_region_set_log(vram, False, DIRTY_MEMORY_VGA)


def test_dirty_log_mask_clients():
    """memory_region_get_dirty_log_mask: MIGRATION on RAMBlock regions while tracking, CODE under TCG."""
    mem = MemorySystem(Recorder(lambda: 0), tcg_enabled=True)
    r, mmio = ram("r", MIB), memory_region_init_io("mmio", MIB)
    assert (mem.memory_region_get_dirty_log_mask(r), mem.memory_region_get_dirty_log_mask(mmio)) == (2, 0)
    mem.memory_global_dirty_log_start(GLOBAL_DIRTY_DIRTY_RATE)
    assert mem.memory_region_get_dirty_log_mask(r) == 1 << DIRTY_MEMORY_CODE | MIGRATION
    assert mem.memory_region_get_dirty_log_mask(mmio) == 0


def test_failed_log_global_start_rolls_back():
    """memory_global_dirty_log_do_start: earlier listeners get log_global_stop in reverse; flags restored."""
    mem, root, asp = machine()
    log: list[Call] = []
    for name, fail in (("a", False), ("b", False), ("c", True)):
        mem.memory_listener_register(Recording(name, log, fail_global_start=fail), asp)
    log.clear()
    assert mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION) is False
    assert hooks(log, "log_global_start", "log_global_stop", "begin") == [
        ("a", "log_global_start"), ("b", "log_global_start"), ("c", "log_global_start"),
        ("b", "log_global_stop"), ("a", "log_global_stop")]
    assert mem.global_dirty_tracking == 0
    with pytest.raises(ValueError, match="not all of these flags are on"):
        mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION)


# -- registration ----------------------------------------------------------------------------------------
def _device_machine():
    """Tracking on, logged RAM, an MMIO region with a coalesced range and an ioeventfd, a kvm-io listener."""
    mem, root, asp = machine()
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm-io", log), asp)  # keeps the AS's ioeventfd list
    mem.memory_region_add_subregion(root, 0, ram("pc.ram", GIB))
    mmio = memory_region_init_io("virtio-pci", 16 * 1024)
    mem.memory_region_add_subregion(root, 4 * GIB, mmio)
    mem.memory_region_add_coalescing(mmio, 0x1000, 0x1000)
    mem.memory_region_add_eventfd(mmio, 0x3000, 2, True, 0, "vq0-notify")
    mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    log.clear()
    return mem, root, asp, log, mmio


def test_registration_replays_the_view_and_unregistration_mirrors_it():
    mem, root, asp, log, mmio = _device_machine()
    late = Recording("late", log)
    mem.memory_listener_register(late, asp)
    assert log == [Call("late", "begin"), Call("late", "log_global_start"),
                   Call("late", "region_add", "pc.ram", 0, GIB),
                   Call("late", "log_start", "pc.ram", 0, GIB, (0, MIGRATION)),
                   Call("late", "region_add", "virtio-pci", 4 * GIB, 16 * 1024),
                   Call("late", "coalesced_io_add", "virtio-pci", 4 * GIB + 0x1000, 0x1000),
                   Call("late", "eventfd_add", "vq0-notify", 4 * GIB + 0x3000, 2),
                   Call("late", "commit")]
    log.clear()
    mem.memory_listener_unregister(late)
    assert log == [Call("late", "begin"),
                   Call("late", "log_stop", "pc.ram", 0, GIB, (MIGRATION, 0)),
                   Call("late", "region_del", "pc.ram", 0, GIB),
                   Call("late", "coalesced_io_del", "virtio-pci", 4 * GIB + 0x1000, 0x1000),
                   Call("late", "region_del", "virtio-pci", 4 * GIB, 16 * 1024),
                   Call("late", "eventfd_del", "vq0-notify", 4 * GIB + 0x3000, 2),
                   Call("late", "commit")]
    assert late not in mem.memory_listeners and late not in asp.listeners and late.address_space is None
    log.clear()
    mem.memory_region_set_enabled(mmio, False)
    assert {c.listener for c in log} == {"kvm-io"}
    mem.memory_listener_unregister(late)  # not registered: nothing happens


def test_first_eventfd_listener_registered_late_gets_the_fds_at_the_next_commit():
    """The AS keeps no ioeventfd list while no listener has eventfd hooks (as->ioeventfd_notifiers == 0)."""
    mem, root, asp = machine()
    mmio = memory_region_init_io("mmio", 0x1000)
    mem.memory_region_add_subregion(root, 0x1000_0000, mmio)
    mem.memory_region_add_eventfd(mmio, 0x10, 4, False, 0, "fd0")
    log: list[Call] = []
    mem.memory_listener_register(Recording("kvm-io", log), asp)
    assert hooks(log, "eventfd_add") == []
    mem.memory_region_add_eventfd(mmio, 0x20, 4, False, 0, "fd1")
    assert [c[1:] for c in log if c.hook == "eventfd_add"] == [
        ("eventfd_add", "fd0", 0x1000_0010, 4, None), ("eventfd_add", "fd1", 0x1000_0020, 4, None)]


def test_log_sync_and_log_sync_global_are_exclusive():
    mem, root, asp = machine()
    with pytest.raises(ValueError, match="both log_sync and log_sync_global"):
        mem.memory_listener_register(Recording("bad", [], skip=()), asp)


# -- ioeventfds and coalesced MMIO ------------------------------------------------------------------------
def test_ioeventfd_only_changes_skip_begin_and_commit():
    mem, root, asp, log, mmio = _device_machine()
    mem.memory_region_add_eventfd(mmio, 0x3004, 2, True, 1, "vq1-notify")
    assert log == [Call("kvm-io", "eventfd_add", "vq1-notify", 4 * GIB + 0x3004, 2)]
    log.clear()
    mem.memory_region_del_eventfd(mmio, 0x3004, 2, True, 1, "vq1-notify")
    assert log == [Call("kvm-io", "eventfd_del", "vq1-notify", 4 * GIB + 0x3004, 2)]
    with pytest.raises(ValueError, match="no ioeventfd"):
        mem.memory_region_del_eventfd(mmio, 0x3004, 2, True, 1, "vq1-notify")


def test_moving_mmio_moves_its_ioeventfds_inside_the_transaction():
    mem, root, asp, log, mmio = _device_machine()
    mem.memory_region_set_address(mmio, 5 * GIB)
    assert [c.hook for c in log] == ["begin", "coalesced_io_del", "region_del", "region_nop", "region_add",
                                     "coalesced_io_add", "eventfd_del", "eventfd_add", "commit"]
    assert [c.offset for c in log if c.hook.startswith("eventfd")] == [4 * GIB + 0x3000, 5 * GIB + 0x3000]


def test_eventfd_on_a_disabled_region_waits_for_it():
    mem, root, asp, log, mmio = _device_machine()
    off = memory_region_init_io("off", 0x1000)
    off.enabled = False
    mem.memory_region_add_subregion(root, 6 * GIB, off)
    mem.memory_region_add_eventfd(off, 0, 4, False, 0, "fd-off")
    assert log == []
    mem.memory_region_set_enabled(off, True)
    assert (Call("kvm-io", "eventfd_add", "fd-off", 6 * GIB, 4)) in log


def test_coalescing_is_notified_immediately_and_with_range_changes():
    mem, root, asp, log, mmio = _device_machine()
    mem.memory_region_add_coalescing(mmio, 0, 0x800)
    assert log == [Call("kvm-io", "coalesced_io_add", "virtio-pci", 4 * GIB, 0x800)]
    log.clear()
    mem.memory_region_clear_coalescing(mmio)
    assert log == [Call("kvm-io", "coalesced_io_del", "virtio-pci", 4 * GIB + 0x1000, 0x1000),
                   Call("kvm-io", "coalesced_io_del", "virtio-pci", 4 * GIB, 0x800)]
    assert mmio.coalesced == []


# -- order of every hook kind ------------------------------------------------------------------------------
def test_every_hook_kind_in_priority_order():
    """Forward = ascending priority, equal priorities in registration order; Reverse is its mirror."""
    mem, root, asp = machine()
    log: list[Call] = []
    for name, prio in (("a", 10), ("b", 0), ("c", 10)):
        mem.memory_listener_register(Recording(name, log, prio), asp)
    fwd, rev = ["b", "a", "c"], ["c", "a", "b"]
    r, mmio = ram("r", MIB), memory_region_init_io("mmio", 0x1000)

    def order(action, *names):
        log.clear()
        action()
        return {hook: [c.listener for c in log if c.hook == hook] for hook in names}

    assert order(lambda: mem.memory_region_add_subregion(root, 0, r), "begin", "region_add", "commit") == {
        "begin": fwd, "region_add": fwd, "commit": fwd}
    assert order(lambda: mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION),
                 "log_global_start", "region_nop", "log_start") == {
        "log_global_start": fwd, "region_nop": fwd, "log_start": fwd}
    assert order(lambda: mem.memory_global_dirty_log_sync(False), "log_sync") == {"log_sync": fwd}
    assert order(mem.memory_global_after_dirty_log_sync, "log_global_after_sync") == {"log_global_after_sync": fwd}
    assert order(lambda: mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_MIGRATION), "log_stop", "log_global_stop") == {
        "log_stop": rev, "log_global_stop": rev}
    assert order(lambda: mem.memory_region_del_subregion(root, r), "region_del") == {"region_del": rev}
    mem.memory_region_add_subregion(root, 0, mmio)
    assert order(lambda: mem.memory_region_add_eventfd(mmio, 0, 4, False, 0, "fd"), "eventfd_add") == {
        "eventfd_add": rev}
    assert order(lambda: mem.memory_region_del_eventfd(mmio, 0, 4, False, 0, "fd"), "eventfd_del") == {
        "eventfd_del": fwd}
    assert order(lambda: mem.memory_region_add_coalescing(mmio, 0, 8), "coalesced_io_add") == {
        "coalesced_io_add": fwd}
    assert order(lambda: mem.memory_region_clear_coalescing(mmio), "coalesced_io_del") == {"coalesced_io_del": rev}


def test_every_hook_call_is_an_event():
    mem, root, asp, log, mmio = _device_machine()
    mem.memory_listener_register(Recording("late", log), asp)
    mem.memory_region_set_address(mmio, 5 * GIB)
    events = [e for e in mem.recorder.events if isinstance(e, ev.ListenerCall)][-len(log):]
    masks = [(e.old_mask, e.new_mask) if e.hook in ("log_start", "log_stop") else None for e in events]
    assert [Call(e.listener, e.hook, e.section, e.offset if e.section else None, e.size if e.section else None, m)
            for e, m in zip(events, masks)] == log


# -- property: a memslot-like listener always matches the FlatView --------------------------------------------
class Memslots(MemoryListener):
    """Builds its slots purely from region_add/region_del, like KVM (RAM and ROMD regions only)."""

    name = "memslots"

    def __init__(self):
        self.slots: set[tuple] = set()

    def region_add(self, s) -> None:
        if s.mr.is_ram or s.mr.is_romd:
            key = (s.offset_within_address_space, s.size, s.mr, s.offset_within_region, s.readonly)
            assert all(a + n <= key[0] or key[0] + key[1] <= a for a, n, *_ in self.slots), "overlapping slot"
            self.slots.add(key)

    def region_del(self, s) -> None:
        key = (s.offset_within_address_space, s.size, s.mr, s.offset_within_region, s.readonly)
        if s.mr.is_ram:
            self.slots.remove(key)
        elif s.mr.kind == "rom_device":
            self.slots.discard(key)  # it may have left ROMD mode already: KVM looks the slot up by address


def _expected_slots(asp) -> set[tuple]:
    return {(fr.addr, fr.size, fr.mr, fr.offset_in_region, fr.readonly) for fr in asp.current_map
            if fr.mr.is_ram or (fr.mr.kind == "rom_device" and fr.romd_mode)}


def _lookup(mr: MemoryRegion, addr: int, readonly: bool = False) -> Optional[tuple]:
    """What an access at ``addr`` (in ``mr``'s container) reaches, found by walking the tree, not the FlatView."""
    if not mr.enabled or not mr.addr <= addr < mr.addr + mr.size:
        return None
    offset, readonly = addr - mr.addr, readonly or mr.readonly
    if mr.alias is not None:
        return _lookup(mr.alias, mr.alias.addr + mr.alias_offset + offset, readonly)
    hit = next((h for h in (_lookup(sub, offset, readonly) for sub in mr.subregions) if h), None)
    return hit or ((mr, offset, readonly) if mr.terminates else None)


def _check_view(root: MemoryRegion, view: list[FlatRange]) -> None:
    """Sorted, disjoint, fully merged, and every MiB shows what a tree walk finds."""
    for a, b in zip(view, view[1:]):
        assert a.end <= b.addr and not can_merge(a, b)
    for addr in range(0, 48 * MIB, MIB):
        fr = next((fr for fr in view if fr.addr <= addr < fr.end), None)
        assert (fr and (fr.mr, fr.offset_in_region + addr - fr.addr, fr.readonly)) == _lookup(root, addr)


STEP = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 7), st.integers(0, 1), st.integers(0, 24), st.integers(0, 2)),
    st.tuples(st.just("unmap"), st.integers(0, 7)),
    st.tuples(st.just("move"), st.integers(0, 7), st.integers(0, 24)),
    st.tuples(st.just("enable"), st.integers(0, 7), st.booleans()),
    st.tuples(st.just("readonly"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("romd"), st.booleans()),
    st.tuples(st.just("alias_offset"), st.integers(0, 1), st.integers(0, 6)),
    st.tuples(st.just("begin")),
    st.tuples(st.just("commit")),
)


LAYOUT = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 24), st.integers(0, 2)), min_size=8, max_size=8)


@settings(max_examples=150, deadline=None)
@given(LAYOUT, st.lists(STEP, max_size=12))
def test_memslot_listener_always_holds_the_ram_of_the_flatview(layout, steps):
    """After every outermost commit, slots built from region_add/del == RAM/ROMD ranges of the view."""
    mem, root, asp = machine()
    slots = Memslots()
    mem.memory_listener_register(slots, asp)
    pci = memory_region_init("pci", 16 * MIB)
    r0, r1 = ram("r0", 8 * MIB), ram("r1", 4 * MIB)
    regions = [r0, r1, ram("r2", 2 * MIB), ram("rom", MIB, memory_region_init_rom),
               ram("flash", 2 * MIB, memory_region_init_rom_device), memory_region_init_io("mmio", MIB),
               memory_region_init_alias("a0", r0, 2 * MIB, 4 * MIB), memory_region_init_alias("a1", r1, 0, 3 * MIB)]
    parents = (root, pci)
    with mem.transaction():
        mem.memory_region_add_subregion(root, 8 * MIB, pci, priority=1)
        for mr, (parent, slot, prio) in zip(regions, layout):
            mem.memory_region_add_subregion(parents[parent], slot * MIB, mr, prio)
    depth = 0
    for op, *args in steps:
        if op == "begin":
            mem.memory_region_transaction_begin()
            depth += 1
        elif op == "commit" and depth:
            mem.memory_region_transaction_commit()
            depth -= 1
        elif op == "map" and regions[args[0]].container is None:
            mem.memory_region_add_subregion(parents[args[1]], args[2] * MIB, regions[args[0]], args[3])
        elif op == "unmap" and regions[args[0]].container is not None:
            mem.memory_region_del_subregion(regions[args[0]].container, regions[args[0]])
        elif op == "move":
            mem.memory_region_set_address(regions[args[0]], args[1] * MIB)
        elif op == "enable":
            mem.memory_region_set_enabled(regions[args[0]], args[1])
        elif op == "readonly":
            mem.memory_region_set_readonly(regions[args[0]], args[1])
        elif op == "romd":
            mem.memory_region_rom_device_set_romd(regions[4], args[0])
        elif op == "alias_offset":
            mem.memory_region_set_alias_offset(regions[6 + args[0]], args[1] * MIB)
        if not depth:
            _check_view(root, asp.current_map)
            assert slots.slots == _expected_slots(asp)
    for _ in range(depth):
        mem.memory_region_transaction_commit()
    _check_view(root, asp.current_map)
    assert slots.slots == _expected_slots(asp)
