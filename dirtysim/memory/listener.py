"""MemoryListener: the hooks through which accelerators and devices follow the memory map.

A hook left as ``None`` is not implemented by that listener, exactly like a NULL
function pointer in QEMU's ``struct MemoryListener``; the dispatcher skips it and
records nothing. Every call that is made is recorded as a ``ListenerCall`` event.
Also here: priority ordering and the replay a listener gets on (un)registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..events import schema as ev
from .flatview import FlatRange
from .ioeventfd import MemoryRegionIoeventfd
from .region import MemoryRegion

if TYPE_CHECKING:
    from .address_space import AddressSpace, MemorySystem

# include/system/memory.h
MEMORY_LISTENER_PRIORITY_MIN = 0
MEMORY_LISTENER_PRIORITY_ACCEL = 10
MEMORY_LISTENER_PRIORITY_DEV_BACKEND = 10

HOOKS = (
    "begin", "commit", "region_add", "region_del", "region_nop", "log_start", "log_stop", "log_sync",
    "log_sync_global", "log_clear", "log_global_start", "log_global_stop", "log_global_after_sync",
    "eventfd_add", "eventfd_del", "coalesced_io_add", "coalesced_io_del",
)


@dataclass(frozen=True)
class MemoryRegionSection:
    """The part of a MemoryRegion visible in an AddressSpace (``MemoryRegionSection``).

    ``mr`` is None for ioeventfd sections, as in ``address_space_add_del_ioeventfds``.
    """

    mr: Optional[MemoryRegion]
    offset_within_region: int
    size: int
    offset_within_address_space: int
    readonly: bool = False

    @classmethod
    def of(cls, fr: FlatRange) -> "MemoryRegionSection":
        """``section_from_flat_range``."""
        return cls(fr.mr, fr.offset_in_region, fr.size, fr.addr, fr.readonly)

    @classmethod
    def of_ioeventfd(cls, fd: MemoryRegionIoeventfd) -> "MemoryRegionSection":
        """The region-less section ``address_space_add_del_ioeventfds`` passes."""
        return cls(None, 0, fd.size, fd.addr)


class MemoryListener:
    """Base listener: subclasses (or instances) set ``name``/``priority`` and define the hooks they implement.

    Signatures follow QEMU without the listener argument: ``log_start(section, old, new)``,
    ``log_global_start() -> bool`` (False = failure), ``eventfd_add(section, match_data, data, fd)``,
    ``coalesced_io_add(section, addr, size)``, ``log_sync_global(last_stage)``.
    """

    name: str = "listener"
    priority: int = MEMORY_LISTENER_PRIORITY_MIN

    begin: Optional[Callable[[], None]] = None
    commit: Optional[Callable[[], None]] = None
    region_add: Optional[Callable[[MemoryRegionSection], None]] = None
    region_del: Optional[Callable[[MemoryRegionSection], None]] = None
    region_nop: Optional[Callable[[MemoryRegionSection], None]] = None
    log_start: Optional[Callable[[MemoryRegionSection, int, int], None]] = None
    log_stop: Optional[Callable[[MemoryRegionSection, int, int], None]] = None
    log_sync: Optional[Callable[[MemoryRegionSection], None]] = None
    log_sync_global: Optional[Callable[[bool], None]] = None
    log_clear: Optional[Callable[[MemoryRegionSection], None]] = None
    log_global_start: Optional[Callable[[], bool]] = None
    log_global_stop: Optional[Callable[[], None]] = None
    log_global_after_sync: Optional[Callable[[], None]] = None
    eventfd_add: Optional[Callable[[MemoryRegionSection, bool, int, str], None]] = None
    eventfd_del: Optional[Callable[[MemoryRegionSection, bool, int, str], None]] = None
    coalesced_io_add: Optional[Callable[[MemoryRegionSection, int, int], None]] = None
    coalesced_io_del: Optional[Callable[[MemoryRegionSection, int, int], None]] = None

    address_space: Optional["AddressSpace"] = None  # set by memory_listener_register

    def implements(self, hook: str) -> bool:
        return getattr(self, hook) is not None

    def acts_on(self, hook: str, section: Optional[MemoryRegionSection] = None, *args) -> bool:
        """Whether the QEMU counterpart of this hook does anything for this call, asked before the call.

        By default every implemented hook acts; a listener whose hooks skip some sections
        (``vfio_listener_skipped_section``, ``kvm_set_phys_mem`` on MMIO) overrides it with that rule,
        and its hooks use the same rule, so ``dirtysim listeners --trace`` shows what the listener did.
        """
        return self.implements(hook)


def insert_by_priority(listeners: list[MemoryListener], listener: MemoryListener) -> None:
    """``memory_listener_register``: ascending priority; equal priorities keep registration order."""
    index = next((i for i, other in enumerate(listeners) if listener.priority < other.priority), len(listeners))
    listeners.insert(index, listener)


def call_hook(memory: "MemorySystem", listener: MemoryListener, hook: str,
              section: Optional[MemoryRegionSection] = None, *args) -> Any:
    """Call one hook if implemented, recording it as a ``ListenerCall`` event first.

    If ``memory.on_listener_call`` is set it gets the event and ``listener.acts_on`` of the call
    (not part of the event log: a pure function of the listener's rule and the map the log records).

    Event fields: region name, address and size of the section; masks for log_start/stop;
    for coalesced_io_* the coalesced part's address and size; for eventfd_* the notifier
    name in ``section`` (QEMU's ioeventfd sections have no region).
    """
    fn = getattr(listener, hook)
    if fn is None:
        return None
    fields: dict = {}
    if section is not None:
        fields = {"section": section.mr.name if section.mr else None,
                  "offset": section.offset_within_address_space, "size": section.size}
        if hook in ("log_start", "log_stop"):
            fields.update(old_mask=args[0], new_mask=args[1])
        elif hook in ("coalesced_io_add", "coalesced_io_del"):
            fields.update(offset=args[0], size=args[1])
        elif hook in ("eventfd_add", "eventfd_del"):
            fields.update(section=args[2])
    event = memory.recorder.emit(ev.ListenerCall, listener=listener.name, hook=hook, **fields)
    if memory.on_listener_call is not None:
        memory.on_listener_call(event, listener.acts_on(hook, section, *args))
    return fn(*args) if section is None else fn(section, *args)


def listener_add_address_space(memory: "MemorySystem", listener: MemoryListener, asp: "AddressSpace") -> None:
    """``listener_add_address_space``: replay the current view to a newly registered listener."""
    call = partial(call_hook, memory, listener)
    call("begin")
    if memory.global_dirty_tracking and listener.implements("log_global_start"):
        if not call("log_global_start"):
            raise RuntimeError(f"listener {listener.name!r} failed log_global_start during registration")
    for fr in asp.current_map:
        section = MemoryRegionSection.of(fr)
        call("region_add", section)
        _coalesced_replay(call, fr, section, "coalesced_io_add")
        if fr.dirty_log_mask:
            call("log_start", section, 0, fr.dirty_log_mask)
    for fd in asp.ioeventfds:
        call("eventfd_add", MemoryRegionSection.of_ioeventfd(fd), fd.match_data, fd.data, fd.fd)
    call("commit")


def listener_del_address_space(memory: "MemorySystem", listener: MemoryListener, asp: "AddressSpace") -> None:
    """``listener_del_address_space``: the mirror of the replay (no log_global_stop)."""
    call = partial(call_hook, memory, listener)
    call("begin")
    for fr in asp.current_map:
        section = MemoryRegionSection.of(fr)
        if fr.dirty_log_mask:
            call("log_stop", section, fr.dirty_log_mask, 0)
        _coalesced_replay(call, fr, section, "coalesced_io_del")
        call("region_del", section)
    for fd in asp.ioeventfds:
        call("eventfd_del", MemoryRegionSection.of_ioeventfd(fd), fd.match_data, fd.data, fd.fd)
    call("commit")


def _coalesced_replay(call: Callable, fr: FlatRange, section: MemoryRegionSection, hook: str) -> None:
    """``flat_range_coalesced_io_notify_listener_add_del``.

    QEMU returns (rather than continues) at the first coalesced range the flat range does
    not show, so later ranges of that region are not replayed; mirrored here.
    """
    for offset, size in fr.mr.coalesced:
        part = fr.clip(offset, size)
        if part is None:
            return
        call(hook, section, *part)
