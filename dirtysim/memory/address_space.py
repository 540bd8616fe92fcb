"""AddressSpace, transactions, topology updates and global dirty logging (``system/memory.c``)."""

from __future__ import annotations

from typing import Optional

from ..events import schema as ev
from .flatview import FlatRange, render
from .listener import MemoryListener, MemoryRegionSection
from .region import DIRTY_MEMORY_MIGRATION, MemoryRegion

# include/system/memory.h: global_dirty_tracking flags
GLOBAL_DIRTY_MIGRATION = 1
GLOBAL_DIRTY_DIRTY_RATE = 2
GLOBAL_DIRTY_LIMIT = 4


class AddressSpace:
    def __init__(self, system: "MemorySystem", name: str, root: MemoryRegion):
        self.system, self.name, self.root = system, name, root
        self.listeners: list[MemoryListener] = []
        self.current_map: list[FlatRange] = []


class MemorySystem:
    """The process-wide memory state QEMU keeps in globals: listener list, transactions, dirty tracking.

    One instance per simulated machine (dirtysim keeps no global state).
    """

    def __init__(self, recorder):
        self.recorder = recorder
        self.address_spaces: list[AddressSpace] = []
        self.memory_listeners: list[MemoryListener] = []
        self.transaction_depth = 0
        self.update_pending = False
        self.global_dirty_tracking = 0

    # -- address spaces and the dirty-log mask --------------------------------------------------
    def address_space_init(self, root: MemoryRegion, name: str) -> AddressSpace:
        asp = AddressSpace(self, name, root)
        self.address_spaces.append(asp)
        asp.current_map = render(root, self.dirty_log_mask)
        return asp

    def dirty_log_mask(self, mr: MemoryRegion) -> int:
        """``memory_region_get_dirty_log_mask``: MIGRATION is added to RAM while global tracking is on."""
        mask = mr.dirty_log_mask
        if mr.is_ram and self.global_dirty_tracking:
            mask |= DIRTY_MEMORY_MIGRATION
        return mask

    # -- listener calls --------------------------------------------------------------------------
    def _call(self, listener: MemoryListener, hook: str, *args, section: Optional[MemoryRegionSection] = None):
        fn = getattr(listener, hook)
        if fn is None:
            return None
        masks = {"old_mask": args[-2], "new_mask": args[-1]} if hook in ("log_start", "log_stop") else {}
        if section is not None:
            self.recorder.emit(ev.ListenerCall, listener=listener.name, hook=hook, section=section.mr.name,
                               offset=section.offset_within_address_space, size=section.size, **masks)
        else:
            self.recorder.emit(ev.ListenerCall, listener=listener.name, hook=hook)
        return fn(section, *args) if section is not None else fn(*args)

    def _call_global(self, hook: str, reverse: bool = False, *args) -> None:
        """``MEMORY_LISTENER_CALL_GLOBAL``."""
        for listener in (reversed(self.memory_listeners) if reverse else list(self.memory_listeners)):
            self._call(listener, hook, *args)

    def _call_as(self, asp: AddressSpace, hook: str, fr: FlatRange, reverse: bool = False, *args) -> None:
        """``MEMORY_LISTENER_CALL`` for one section of one address space."""
        section = MemoryRegionSection.of(fr)
        for listener in (reversed(asp.listeners) if reverse else list(asp.listeners)):
            self._call(listener, hook, *args, section=section)

    # -- registration ----------------------------------------------------------------------------
    def memory_listener_register(self, listener: MemoryListener, asp: AddressSpace) -> None:
        """Insert by ascending priority (equal priorities keep registration order), then replay the view."""
        if listener.implements("log_sync") and listener.implements("log_sync_global"):
            raise ValueError(f"listener {listener.name!r} defines both log_sync and log_sync_global")
        listener.address_space = asp
        for lst in (self.memory_listeners, asp.listeners):
            index = next((i for i, other in enumerate(lst) if other.priority > listener.priority), len(lst))
            lst.insert(index, listener)
        self.recorder.emit(ev.ListenerRegistered, listener=listener.name, address_space=asp.name,
                           priority=listener.priority)
        self._listener_add_address_space(listener, asp)

    def _listener_add_address_space(self, listener: MemoryListener, asp: AddressSpace) -> None:
        """Replay: begin, log_global_start if tracking, region_add (+log_start) per range, commit."""
        self._call(listener, "begin")
        if self.global_dirty_tracking and listener.implements("log_global_start"):
            if not self._call(listener, "log_global_start"):
                raise RuntimeError(f"listener {listener.name!r} failed log_global_start")
        for fr in asp.current_map:
            section = MemoryRegionSection.of(fr)
            self._call(listener, "region_add", section=section)
            if fr.dirty_log_mask:
                self._call(listener, "log_start", 0, fr.dirty_log_mask, section=section)
        self._call(listener, "commit")

    # -- transactions ----------------------------------------------------------------------------
    def transaction_begin(self) -> None:
        self.transaction_depth += 1

    def transaction_commit(self) -> None:
        """Only the outermost commit re-renders and notifies (``memory_region_transaction_commit``)."""
        assert self.transaction_depth > 0, "transaction_commit without begin"
        self.transaction_depth -= 1
        if self.transaction_depth or not self.update_pending:
            return
        self._call_global("begin")
        for asp in self.address_spaces:
            self._set_flatview(asp)
        self.update_pending = False
        self._call_global("commit")

    def _set_flatview(self, asp: AddressSpace) -> None:
        """``address_space_set_flatview``: all removals (reverse) before any addition (forward)."""
        old, new = asp.current_map, render(asp.root, self.dirty_log_mask)
        if asp.listeners:
            self._topology_pass(asp, old, new, adding=False)
            self._topology_pass(asp, old, new, adding=True)
        asp.current_map = new

    def _topology_pass(self, asp, old: list[FlatRange], new: list[FlatRange], adding: bool) -> None:
        """``address_space_update_topology_pass``."""
        i = j = 0
        while i < len(old) or j < len(new):
            frold = old[i] if i < len(old) else None
            frnew = new[j] if j < len(new) else None
            if frold and (not frnew or frold.addr < frnew.addr
                          or (frold.addr == frnew.addr and not frold.same_mapping(frnew))):
                if not adding:
                    self._call_as(asp, "region_del", frold, True)
                i += 1
            elif frold and frnew and frold.same_mapping(frnew):
                if adding:
                    self._call_as(asp, "region_nop", frnew)
                    o, n = frold.dirty_log_mask, frnew.dirty_log_mask
                    if n & ~o:
                        self._call_as(asp, "log_start", frnew, False, o, n)
                    if o & ~n:
                        self._call_as(asp, "log_stop", frnew, True, o, n)
                i += 1
                j += 1
            else:
                if adding:
                    self._call_as(asp, "region_add", frnew)
                j += 1

    def update(self) -> None:
        """Mark the topology changed inside a begin/commit pair (``memory_region_update_pending``)."""
        self.transaction_begin()
        self.update_pending = True
        self.transaction_commit()

    # -- global dirty logging ----------------------------------------------------------------------
    def memory_global_dirty_log_start(self, flags: int) -> None:
        """Turn on a tracking client; the first one calls log_global_start and re-renders (log_start)."""
        flags &= ~self.global_dirty_tracking
        if not flags:
            return
        was_off = self.global_dirty_tracking == 0
        self.global_dirty_tracking |= flags
        if was_off:
            self._call_global("log_global_start")
            self.update()

    def memory_global_dirty_log_stop(self, flags: int) -> None:
        self.global_dirty_tracking &= ~flags
        if not self.global_dirty_tracking:
            self.update()
            self._call_global("log_global_stop", True)

    def memory_global_dirty_log_sync(self, last_stage: bool) -> None:
        """``memory_region_sync_dirty_bitmap(NULL, last_stage)``: log_sync per logged range, or log_sync_global."""
        for listener in list(self.memory_listeners):
            if listener.implements("log_sync"):
                for fr in listener.address_space.current_map:
                    if fr.dirty_log_mask:
                        self._call(listener, "log_sync", section=MemoryRegionSection.of(fr))
            elif listener.implements("log_sync_global"):
                self._call(listener, "log_sync_global", last_stage)

    def memory_global_after_dirty_log_sync(self) -> None:
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
                    self._call(listener, "log_clear", section=section)
