"""AddressSpace and the process-wide memory state: transactions, topology updates, ioeventfds,
coalesced MMIO, region edits and global dirty logging (``system/memory.c``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from ..events import schema as ev
from ..events.log import Recorder
from .flatview import FlatRange, flatrange_equal, render
from .ioeventfd import MemoryRegionIoeventfd, flatview_ioeventfds, ioeventfd_before, ioeventfd_diff, ioeventfd_equal
from .listener import (MemoryListener, MemoryRegionSection, call_hook, insert_by_priority, listener_add_address_space,
                       listener_del_address_space)
from .region import DIRTY_MEMORY_CODE, DIRTY_MEMORY_MIGRATION, DIRTY_MEMORY_VGA, MemoryRegion

# include/system/memory.h: global_dirty_tracking flags
GLOBAL_DIRTY_MIGRATION = 1
GLOBAL_DIRTY_DIRTY_RATE = 2
GLOBAL_DIRTY_LIMIT = 4


class AddressSpace:
    def __init__(self, system: "MemorySystem", name: str, root: MemoryRegion):
        self.system, self.name, self.root = system, name, root
        self.listeners: list[MemoryListener] = []
        self.current_map: list[FlatRange] = []
        self.ioeventfds: list[MemoryRegionIoeventfd] = []  # placed at guest-physical addresses
        self.ioeventfd_notifiers = 0  # listeners with eventfd hooks; none: the list is not kept


class MemorySystem:
    """The state QEMU keeps in ``system/memory.c`` globals: address spaces, listeners, transactions.

    One instance per simulated machine (dirtysim keeps no global state). ``tcg_enabled``
    stands for QEMU's ``tcg_enabled()`` in ``memory_region_get_dirty_log_mask``.
    """

    def __init__(self, recorder: Recorder, tcg_enabled: bool = False):
        self.recorder = recorder
        self.tcg_enabled = tcg_enabled
        self.address_spaces: list[AddressSpace] = []
        self.memory_listeners: list[MemoryListener] = []
        self.transaction_depth = 0
        self.update_pending = False
        self.ioeventfd_update_pending = False
        self.global_dirty_tracking = 0
        # physmem.c total_dirty_pages: every bit KVM's GET hands over while GLOBAL_DIRTY_DIRTY_RATE is on
        self.total_dirty_pages = 0
        self.topology_hooks: list[Callable[[], None]] = []  # called after each re-render (the oracle's own map)
        # (ListenerCall event, whether the listener acted on it): set by ``dirtysim listeners`` to filter its trace
        self.on_listener_call: Optional[Callable[[ev.ListenerCall, bool], None]] = None

    # -- address spaces and the dirty-log mask --------------------------------------------------
    def address_space_init(self, root: MemoryRegion, name: str) -> AddressSpace:
        """``address_space_init``: render the view; without listeners nothing is notified."""
        asp = AddressSpace(self, name, root)
        self.address_spaces.append(asp)
        asp.current_map = render(root, self.memory_region_get_dirty_log_mask)
        return asp

    def memory_region_get_dirty_log_mask(self, mr: MemoryRegion) -> int:
        """``memory_region_get_dirty_log_mask``: RAMBlock-backed regions gain MIGRATION while tracking, CODE under TCG."""
        mask = mr.dirty_log_mask
        if mr.ram_block is not None and self.global_dirty_tracking:
            mask |= 1 << DIRTY_MEMORY_MIGRATION
        if mr.ram_block is not None and self.tcg_enabled:
            mask |= 1 << DIRTY_MEMORY_CODE
        return mask

    # -- listener calls --------------------------------------------------------------------------
    def _call_global(self, hook: str, reverse: bool = False) -> None:
        """``MEMORY_LISTENER_CALL_GLOBAL``: the global list, ascending priority (Forward) or Reverse."""
        for listener in self.memory_listeners[::-1 if reverse else 1]:
            call_hook(self, listener, hook)

    def _call_as(self, asp: AddressSpace, hook: str, reverse: bool, section: MemoryRegionSection, *args) -> None:
        """``MEMORY_LISTENER_CALL``: one section to the listeners of one address space."""
        for listener in asp.listeners[::-1 if reverse else 1]:
            call_hook(self, listener, hook, section, *args)

    # -- registration ----------------------------------------------------------------------------
    def memory_listener_register(self, listener: MemoryListener, asp: AddressSpace) -> None:
        """``memory_listener_register``: insert by priority in both lists, replay the view, count eventfd users."""
        if listener.implements("log_sync") and listener.implements("log_sync_global"):
            raise ValueError(f"listener {listener.name!r} defines both log_sync and log_sync_global")
        listener.address_space = asp
        insert_by_priority(self.memory_listeners, listener)
        insert_by_priority(asp.listeners, listener)
        self.recorder.emit(ev.ListenerRegistered, listener=listener.name, address_space=asp.name,
                           priority=listener.priority)
        listener_add_address_space(self, listener, asp)
        if listener.implements("eventfd_add") or listener.implements("eventfd_del"):
            asp.ioeventfd_notifiers += 1

    def memory_listener_unregister(self, listener: MemoryListener) -> None:
        """``memory_listener_unregister``: the mirrored replay, then removal from both lists."""
        asp = listener.address_space
        if asp is None:
            return
        if listener.implements("eventfd_add") or listener.implements("eventfd_del"):
            asp.ioeventfd_notifiers -= 1
        listener_del_address_space(self, listener, asp)
        self.memory_listeners.remove(listener)
        asp.listeners.remove(listener)
        listener.address_space = None

    # -- transactions ----------------------------------------------------------------------------
    def memory_region_transaction_begin(self) -> None:
        """``memory_region_transaction_begin``."""
        self.transaction_depth += 1

    def memory_region_transaction_commit(self) -> None:
        """``memory_region_transaction_commit``: only the outermost commit renders and notifies."""
        if not self.transaction_depth:
            raise RuntimeError("memory_region_transaction_commit without memory_region_transaction_begin")
        self.transaction_depth -= 1
        if self.transaction_depth:
            return
        if self.update_pending:
            # flatviews_reset: one FlatView per root region (generate_memory_topology), shared by the address
            # spaces over it (every TCG CPU's cpu-memory-N is over system memory)
            flat: dict[int, list[FlatRange]] = {}
            for asp in self.address_spaces:
                if id(asp.root) not in flat:
                    flat[id(asp.root)] = render(asp.root, self.memory_region_get_dirty_log_mask)
            views = [flat[id(asp.root)] for asp in self.address_spaces]
            self._call_global("begin")
            for asp, view in zip(self.address_spaces, views):
                self._set_flatview(asp, view)
                self._update_ioeventfds(asp)
            self.update_pending = self.ioeventfd_update_pending = False
            self._call_global("commit")
            for hook in self.topology_hooks:
                hook()
        elif self.ioeventfd_update_pending:
            for asp in self.address_spaces:
                self._update_ioeventfds(asp)
            self.ioeventfd_update_pending = False

    transaction_begin = memory_region_transaction_begin
    transaction_commit = memory_region_transaction_commit

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A begin/commit pair around a block."""
        self.memory_region_transaction_begin()
        try:
            yield
        finally:
            self.memory_region_transaction_commit()

    def _update_topology(self) -> None:
        """``begin; memory_region_update_pending = true; commit``: re-render every view."""
        with self.transaction():
            self.update_pending = True

    def _set_flatview(self, asp: AddressSpace, new: list[FlatRange]) -> None:
        """``address_space_set_flatview``: all removals (Reverse) before any addition (Forward)."""
        if asp.listeners:
            self._topology_pass(asp, asp.current_map, new, adding=False)
            self._topology_pass(asp, asp.current_map, new, adding=True)
        asp.current_map = new

    def _topology_pass(self, asp: AddressSpace, old: list[FlatRange], new: list[FlatRange], adding: bool) -> None:
        """``address_space_update_topology_pass``: walk both views in address order."""
        i = j = 0
        while i < len(old) or j < len(new):
            frold = old[i] if i < len(old) else None
            frnew = new[j] if j < len(new) else None
            if frold and (not frnew or frold.addr < frnew.addr
                          or (frold.addr == frnew.addr and not flatrange_equal(frold, frnew))):
                if not adding:
                    self._coalesced_io_notify(asp, frold, frold.mr.coalesced, add=False)
                    self._call_as(asp, "region_del", True, MemoryRegionSection.of(frold))
                i += 1
            elif frold and frnew and flatrange_equal(frold, frnew):
                if adding:
                    section = MemoryRegionSection.of(frnew)
                    self._call_as(asp, "region_nop", False, section)
                    o, n = frold.dirty_log_mask, frnew.dirty_log_mask
                    if n & ~o:
                        self._call_as(asp, "log_start", False, section, o, n)
                    if o & ~n:
                        self._call_as(asp, "log_stop", True, section, o, n)
                i += 1
                j += 1
            else:
                if adding:
                    self._call_as(asp, "region_add", False, MemoryRegionSection.of(frnew))
                    self._coalesced_io_notify(asp, frnew, frnew.mr.coalesced, add=True)
                j += 1

    def _update_ioeventfds(self, asp: AddressSpace) -> None:
        """``address_space_update_ioeventfds``: removed fds get eventfd_del (Forward), new ones eventfd_add (Reverse)."""
        if not asp.ioeventfd_notifiers:
            return
        new = flatview_ioeventfds(asp.current_map)
        for hook, fd in ioeventfd_diff(asp.ioeventfds, new):
            self._call_as(asp, hook, hook == "eventfd_add", MemoryRegionSection.of_ioeventfd(fd),
                          fd.match_data, fd.data, fd.fd)
        asp.ioeventfds = new

    def _coalesced_io_notify(self, asp: AddressSpace, fr: FlatRange, ranges: list[tuple[int, int]],
                             add: bool) -> None:
        """``flat_range_coalesced_io_notify``: the part of each range ``fr`` shows; add Forward, del Reverse."""
        for offset, size in ranges:
            part = fr.clip(offset, size)
            if part is not None:
                hook = "coalesced_io_add" if add else "coalesced_io_del"
                self._call_as(asp, hook, not add, MemoryRegionSection.of(fr), *part)

    # -- region edits: each one a transaction, as in QEMU ------------------------------------------
    def memory_region_add_subregion(self, mr: MemoryRegion, offset: int, subregion: MemoryRegion,
                                    priority: int = 0) -> None:
        """``memory_region_add_subregion(_overlap)`` -> ``memory_region_update_container_subregions``."""
        with self.transaction():
            mr.add_subregion(offset, subregion, priority)
            self.update_pending |= mr.enabled and subregion.enabled

    def memory_region_del_subregion(self, mr: MemoryRegion, subregion: MemoryRegion) -> None:
        """``memory_region_del_subregion``."""
        with self.transaction():
            mr.del_subregion(subregion)
            self.update_pending |= mr.enabled and subregion.enabled

    def memory_region_set_enabled(self, mr: MemoryRegion, enabled: bool) -> None:
        """``memory_region_set_enabled``."""
        if enabled != mr.enabled:
            with self.transaction():
                mr.enabled = enabled
                self.update_pending = True

    def memory_region_set_address(self, mr: MemoryRegion, addr: int) -> None:
        """``memory_region_set_address`` -> ``memory_region_readd_subregion``: it becomes the newest at its priority."""
        if addr == mr.addr:
            return
        mr.addr = addr
        container = mr.container
        if container is not None:
            with self.transaction():
                self.memory_region_del_subregion(container, mr)
                self.memory_region_add_subregion(container, addr, mr, mr.priority)

    def memory_region_set_alias_offset(self, mr: MemoryRegion, offset: int) -> None:
        """``memory_region_set_alias_offset``."""
        if mr.alias is None:
            raise ValueError(f"memory_region_set_alias_offset: {mr.name!r} is not an alias")
        if offset != mr.alias_offset:
            with self.transaction():
                mr.alias_offset = offset
                self.update_pending |= mr.enabled

    def memory_region_set_readonly(self, mr: MemoryRegion, readonly: bool) -> None:
        """``memory_region_set_readonly``."""
        if readonly != mr.readonly:
            with self.transaction():
                mr.readonly = readonly
                self.update_pending |= mr.enabled

    def memory_region_rom_device_set_romd(self, mr: MemoryRegion, romd_mode: bool) -> None:
        """``memory_region_rom_device_set_romd``: leaving ROMD mode makes reads trap (KVM drops the slot)."""
        if romd_mode != mr.romd_mode:
            with self.transaction():
                mr.romd_mode = romd_mode
                self.update_pending |= mr.enabled

    def memory_region_set_log(self, mr: MemoryRegion, log: bool, client: int) -> None:
        """``memory_region_set_log``: VGA logging is reference-counted; only 0 <-> 1 changes the mask.

        QEMU asserts ``client == DIRTY_MEMORY_VGA``: MIGRATION comes from
        ``memory_global_dirty_log_start`` and CODE from TCG, never from here.
        """
        if client != DIRTY_MEMORY_VGA:
            raise ValueError(f"memory_region_set_log({mr.name!r}): client {client} is not DIRTY_MEMORY_VGA "
                             f"({DIRTY_MEMORY_VGA}); QEMU only lets devices log the VGA client")
        if not log and not mr.vga_logging_count:
            raise ValueError(f"memory_region_set_log({mr.name!r}, False): VGA logging is not on")
        old = mr.vga_logging_count
        mr.vga_logging_count += 1 if log else -1
        if bool(old) != bool(mr.vga_logging_count):
            with self.transaction():
                mr.dirty_log_mask = mr.dirty_log_mask & ~(1 << client) | (log << client)
                self.update_pending |= mr.enabled

    # -- ioeventfds and coalesced MMIO -------------------------------------------------------------
    def memory_region_add_eventfd(self, mr: MemoryRegion, addr: int, size: int, match_data: bool, data: int,
                                  fd_name: str) -> None:
        """``memory_region_add_eventfd``: sorted insert; only the ioeventfd lists are recomputed at commit."""
        fd = MemoryRegionIoeventfd(addr, size, match_data, data, fd_name)
        with self.transaction():
            index = next((i for i, other in enumerate(mr.ioeventfds) if ioeventfd_before(fd, other)),
                         len(mr.ioeventfds))
            mr.ioeventfds.insert(index, fd)
            self.ioeventfd_update_pending |= mr.enabled

    def memory_region_del_eventfd(self, mr: MemoryRegion, addr: int, size: int, match_data: bool, data: int,
                                  fd_name: str) -> None:
        """``memory_region_del_eventfd``: removes the first ``memory_region_ioeventfd_equal`` entry."""
        fd = MemoryRegionIoeventfd(addr, size, match_data, data, fd_name)
        index = next((i for i, other in enumerate(mr.ioeventfds) if ioeventfd_equal(fd, other)), None)
        if index is None:
            raise ValueError(f"memory_region_del_eventfd({mr.name!r}): no ioeventfd {fd}")
        with self.transaction():
            del mr.ioeventfds[index]
            self.ioeventfd_update_pending |= mr.enabled

    def memory_region_add_coalescing(self, mr: MemoryRegion, offset: int, size: int) -> None:
        """``memory_region_add_coalescing``: coalesced_io_add at once where ``mr`` is rendered (no transaction)."""
        mr.coalesced.append((offset, size))
        self._update_coalesced_range(mr, (offset, size), add=True)

    def memory_region_clear_coalescing(self, mr: MemoryRegion) -> None:
        """``memory_region_clear_coalescing``: coalesced_io_del for each range, oldest first."""
        while mr.coalesced:
            self._update_coalesced_range(mr, mr.coalesced.pop(0), add=False)

    def _update_coalesced_range(self, mr: MemoryRegion, cmr: tuple[int, int], add: bool) -> None:
        """``memory_region_update_coalesced_range``: every flat range of ``mr`` in every address space."""
        for asp in self.address_spaces:
            for fr in asp.current_map:
                if fr.mr is mr:
                    self._coalesced_io_notify(asp, fr, [cmr], add)

    # -- global dirty logging ----------------------------------------------------------------------
    def memory_global_dirty_log_start(self, flags: int) -> bool:
        """``memory_global_dirty_log_start``: the first client calls log_global_start, then re-renders (log_start).

        Returns False (flags restored, nothing re-rendered) if a listener's log_global_start fails.
        """
        flags &= ~self.global_dirty_tracking
        if not flags:
            return True
        was_off = self.global_dirty_tracking == 0
        self.global_dirty_tracking |= flags
        if was_off:
            if not self._log_global_do_start():
                self.global_dirty_tracking &= ~flags
                return False
            self._update_topology()
        return True

    def _log_global_do_start(self) -> bool:
        """``memory_global_dirty_log_do_start``: on failure, log_global_stop every earlier listener in reverse."""
        listeners = list(self.memory_listeners)
        for i, listener in enumerate(listeners):
            if listener.implements("log_global_start") and not call_hook(self, listener, "log_global_start"):
                for earlier in reversed(listeners[:i]):
                    call_hook(self, earlier, "log_global_stop")
                return False
        return True

    def memory_global_dirty_log_stop(self, flags: int) -> None:
        """``memory_global_dirty_log_do_stop``: the last client re-renders (log_stop), then log_global_stop (Reverse).

        QEMU postpones a stop requested while the VM is stopped; dirtysim stops at once.
        """
        if self.global_dirty_tracking & flags != flags:
            raise ValueError(f"memory_global_dirty_log_stop({flags:#x}): not all of these flags are on "
                             f"(global_dirty_tracking={self.global_dirty_tracking:#x})")
        self.global_dirty_tracking &= ~flags
        if not self.global_dirty_tracking:
            self._update_topology()
            self._call_global("log_global_stop", True)

    def memory_region_sync_dirty_bitmap(self, mr: Optional[MemoryRegion], last_stage: bool) -> None:
        """``memory_region_sync_dirty_bitmap``: log_sync per logged range (of ``mr``, or all), or log_sync_global."""
        for listener in list(self.memory_listeners):
            if listener.implements("log_sync"):
                for fr in listener.address_space.current_map:
                    if fr.dirty_log_mask and (mr is None or fr.mr is mr):
                        call_hook(self, listener, "log_sync", MemoryRegionSection.of(fr))
            elif listener.implements("log_sync_global"):
                call_hook(self, listener, "log_sync_global", None, last_stage)

    def memory_global_dirty_log_sync(self, last_stage: bool) -> None:
        """``memory_global_dirty_log_sync``."""
        self.memory_region_sync_dirty_bitmap(None, last_stage)

    def memory_global_after_dirty_log_sync(self) -> None:
        """``memory_global_after_dirty_log_sync``: log_global_after_sync, Forward."""
        self._call_global("log_global_after_sync")

    def memory_region_clear_dirty_bitmap(self, mr: MemoryRegion, start: int, size: int) -> None:
        """``memory_region_clear_dirty_bitmap``: log_clear on every logged range of ``mr`` inside [start, start+size)."""
        for listener in list(self.memory_listeners):
            if not listener.implements("log_clear"):
                continue
            for fr in listener.address_space.current_map:
                if fr.mr is not mr or not fr.dirty_log_mask:
                    continue
                lo = max(start, fr.offset_in_region)
                hi = min(start + size, fr.offset_in_region + fr.size)
                if lo < hi:
                    section = MemoryRegionSection(mr, lo, hi - lo, fr.addr + lo - fr.offset_in_region, fr.readonly)
                    call_hook(self, listener, "log_clear", section)
