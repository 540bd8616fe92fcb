"""The scenario schema: what a scenario file may say, with QEMU's defaults.

Every key that mirrors a QEMU parameter carries QEMU's default
(``migration/options.c``; see ``reference/qemu-dirty-tracking.md`` §11). Keys
that model hardware (costs, network) cite the public measurement they come from.
Unknown keys are rejected (``extra="forbid"``) so a typo never becomes a silent
default.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from . import units

PAGE_SIZE = 4096  # TARGET_PAGE_SIZE on x86
CLEAR_BITMAP_SHIFT_MIN, CLEAR_BITMAP_SHIFT_DEFAULT, CLEAR_BITMAP_SHIFT_MAX = 6, 18, 31  # migration/migration.h


def _unit_validator(parse, kind: str, example: str):
    def validate(value):
        try:
            return parse(value)
        except ValueError as exc:
            allowed = {"size": units.SIZE_UNITS, "rate": units.RATE_UNITS, "duration": units.DURATION_UNITS}[kind]
            raise PydanticCustomError(
                f"{kind}_unit", str(exc), {"allowed": f"a number with a unit, e.g. {example}; units: {', '.join(allowed)}"}
            ) from None

    return Annotated[
        int,
        BeforeValidator(validate),
        WithJsonSchema({"type": ["string", "integer"], "description": f"a {kind} such as {example!r}"}),
    ]


Size = _unit_validator(units.parse_size, "size", "8GiB")
Rate = _unit_validator(units.parse_rate, "rate", "128MiB/s")
Duration = _unit_validator(units.parse_duration, "duration", "300ms")
Fraction01 = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UniformWorkload(_Model):
    """Writes pages uniformly at random over a working set (like ``mm_dirty -p random``)."""

    kind: Literal["uniform"]
    rate: Rate = Field(description="guest write rate; every 4 KiB of it dirties one page")
    working_set: Optional[Size] = Field(None, description="bytes written over; default: all RAM after offset")
    offset: Size = Field(0, description="guest-physical start of the working set")


class HotsetWorkload(UniformWorkload):
    """A hot region inside the working set takes ``hot_share`` of the writes."""

    kind: Literal["hotset"]
    hot: Size = Field(description="size of the hot region")
    hot_share: Fraction01 = Field(description="share of writes that go to the hot region, 0..1")
    hot_offset: Size = Field(0, description="start of the hot region inside the working set")


Workload = Annotated[Union[UniformWorkload, HotsetWorkload], Field(discriminator="kind")]


class VcpuGroup(_Model):
    count: int = Field(1, ge=1, le=4096, strict=True)
    workload: Workload


class MemoryConfig(_Model):
    size: Size = Field(description="guest RAM (one RAMBlock 'pc.ram' mapped at guest-physical 0)")
    zero_fraction: Fraction01 = Field(0.0, description="share of RAM that is zero at migration start (sent as 'duplicate')")


class _PciDevice(_Model):
    bar: Size = Field(16 << 10, description="size of the device's MMIO BAR (mapped by a timeline 'bar' action)")


class VirtioDevice(_PciDevice):
    """A virtio-pci device emulated in QEMU: a 'virtio' listener and queue-notify ioeventfds; no traffic modelled."""

    kind: Literal["virtio-net", "virtio-blk"]
    queues: int = Field(1, ge=1, le=64, strict=True)


class VfioPci(_PciDevice):
    """An assigned device: the 'vfio' listener keeps the IOMMU mapping every RAM section."""

    kind: Literal["vfio-pci"]
    bar: Size = Field(16 << 20, description="size of the device's MMIO BAR")


class _VhostUserDevice(_PciDevice):
    queues: int = Field(1, ge=1, le=64, strict=True, description="queue pairs; each has a used ring page")
    buffers: Size = Field(64 << 20, description="guest RAM holding the device's buffers, used round-robin")
    buffer_offset: Optional[Size] = Field(
        None, description="guest-physical start of the buffers (default: stacked below the top of RAM)"
    )


class VhostUserNet(_VhostUserDevice):
    """A vhost virtio-net backend receiving packets (vhost-user, or vhost-net in the host kernel)."""

    kind: Literal["vhost-user-net", "vhost-net"]
    rx: Rate = Field(description="received payload written into guest memory")
    packet: Size = Field(1500, description="bytes per packet (one RX buffer per packet)")


class VhostUserBlk(_VhostUserDevice):
    """A vhost-user virtio-blk backend serving reads: it writes the data into guest buffers."""

    kind: Literal["vhost-user-blk"]
    read: Rate = Field(description="read data written into guest memory")
    request: Size = Field(64 << 10, description="bytes per read request")


Device = Annotated[Union[VhostUserNet, VhostUserBlk, VirtioDevice, VfioPci], Field(discriminator="kind")]
VHOST_KINDS = ("vhost-user-net", "vhost-net", "vhost-user-blk")


class Machine(_Model):
    accel: Literal["kvm", "tcg"] = Field("kvm", description="kvm, or tcg (per-CPU address spaces, no eventfds)")
    memory: MemoryConfig
    vcpus: list[VcpuGroup] = Field(min_length=1)
    devices: list[Device] = Field(default_factory=list, description="PCI devices: vhost, virtio, vfio")
    device_memory: Size = Field(0, description="memory-hotplug area (maxmem - size) for pc-dimm hotplug")
    device_state: Size = Field(
        256 << 10, description="non-iterable device state sent during downtime [modelling assumption]"
    )


class DirtyTracking(_Model):
    """KVM dirty logging (``accel/kvm/kvm-all.c``), vhost log harvesting, and the deliberately wrong variants."""

    mode: Literal["bitmap", "ring"] = Field("bitmap", description="KVM dirty bitmap, or the per-vCPU dirty ring")
    manual_protect: bool = Field(True, description="KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (QEMU enables it when offered)")
    initially_set: bool = Field(
        True, description="KVM_DIRTY_LOG_INITIALLY_SET (needs manual_protect; default: same as manual_protect)"
    )
    clear_bitmap_shift: int = Field(
        CLEAR_BITMAP_SHIFT_DEFAULT,
        strict=True,
        ge=CLEAR_BITMAP_SHIFT_MIN,
        le=CLEAR_BITMAP_SHIFT_MAX,
        description="x-clear-bitmap-shift: log2 pages per lazy-clear chunk (QEMU clamps to 6..31; dirtysim rejects)",
    )
    ring_size: int = Field(
        4096, strict=True, ge=1024, le=65536,
        description="dirty-ring-size in entries, a power of two (ring mode; QEMU's 0 means bitmap mode)",
    )
    pml: bool = Field(True, description="x86 PML: 512 more ring entries reserved (soft-full at N-576, else N-64)")
    reaper_period: Duration = Field(10**9, gt=0, description="kvm-reaper harvest period (1 s)")
    kvm_clear: Literal["mask", "clear-all"] = Field(
        "mask", description="KVM_CLEAR_DIRTY_LOG by QEMU's fetched mask, or WRONG: clear the whole range"
    )
    send_order: Literal["clear-before-send", "send-before-clear"] = Field(
        "clear-before-send", description="lazy clear before a chunk's first page is sent, or WRONG: after"
    )
    vhost_harvest: Literal["exchange", "read-then-zero"] = Field(
        "exchange", description="vhost log words taken by atomic exchange, or WRONG: a read, then a store of 0"
    )
    vhost_harvest_gap: Duration = Field(
        2 * 10**6, description="read-then-zero: time between the read and the store of 0 (a descheduled thread)"
    )
    def wrong_semantics(self) -> list[str]:
        """The deliberately wrong options turned on (pages lost with them are the point, not a bug)."""
        wrong = {"kvm_clear": "mask", "send_order": "clear-before-send", "vhost_harvest": "exchange"}
        return [f"{key} {getattr(self, key)}" for key, good in wrong.items() if getattr(self, key) != good]

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_mode(cls, data):
        """QEMU enables MANUAL_PROTECT2 (+INITIALLY_SET) only without a ring (``kvm_setup_dirty_ring``)."""
        if isinstance(data, dict):
            ring = data.get("mode") == "ring"
            data = {"manual_protect": not ring, **data}
            data.setdefault("initially_set", data["manual_protect"])
        return data

    @model_validator(mode="after")
    def _ring_rules(self):
        def bad(key: str, msg: str, allowed: str, got: str):
            raise PydanticCustomError(key, msg, {"allowed": allowed, "loc": ("dirty_tracking", key), "got": got})

        if self.ring_size & (self.ring_size - 1):
            bad("ring_size", "not a power of two", "1024, 2048, ..., 65536", str(self.ring_size))
        if self.mode == "ring" and self.manual_protect:
            bad("manual_protect", "QEMU does not use manual protect with the dirty ring (kvm_setup_dirty_ring)",
                "false in ring mode", "true")
        for key, good in (("kvm_clear", "mask"), ("send_order", "clear-before-send")):
            if getattr(self, key) != good and not (self.mode == "bitmap" and self.manual_protect):
                bad(key, "only bitmap mode with manual_protect has a KVM_CLEAR_DIRTY_LOG step",
                    f"{good} unless mode is bitmap with manual_protect", getattr(self, key))
        return self

    @model_validator(mode="after")
    def _initially_set_needs_manual_protect(self):
        if self.initially_set and not self.manual_protect:
            raise PydanticCustomError(
                "initially_set",
                "needs manual_protect: true, since KVM_DIRTY_LOG_INITIALLY_SET is a flag of "
                "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
                {"allowed": "false when manual_protect is false", "loc": ("dirty_tracking", "initially_set"),
                 "got": "true with manual_protect: false"},
            )
        return self


class Costs(_Model):
    """Time costs of the tracking machinery (hardware-dependent; reference §15).

    Defaults from ``reference/anchors.md`` C.6 (dirty_log_perf_test, 96 GiB, TDP MMU):
    GET 0.66 ms / 96 GiB ≈ 7 us per GiB; CLEAR 1.83 s / 25.2 M re-protected pages
    ≈ 73 ns per page. The write fault default (2 us) is a modelling assumption for
    a fast-path write-protect fault on an already-split 4 KiB mapping; C.6's 14 us
    per first write includes 1 GiB hugepage splitting and is an upper bound. No
    public measurement of dirty-ring costs was found: the ring-full exit (10 us)
    and reap (50 ns per entry) are assumptions; reset re-protects like CLEAR.
    """

    write_fault: Duration = Field(2_000, description="vCPU time lost per write to a write-protected page")
    get_dirty_log_per_gib: Duration = Field(7_000, description="KVM_GET_DIRTY_LOG time per GiB of memslot")
    clear_dirty_log_per_page: Duration = Field(73, description="KVM_CLEAR_DIRTY_LOG time per re-protected page")
    bitmap_sync_per_gib: Duration = Field(
        2_000, description="migration_bitmap_sync L2->L3 exchange per GiB (perf-limits.md: 1.9 ms per TiB)"
    )
    ring_full_exit: Duration = Field(10_000, description="KVM_EXIT_DIRTY_RING_FULL round trip to userspace [assumption]")
    ring_reap_per_entry: Duration = Field(50, description="collecting one ring entry in QEMU [assumption]")
    ring_reset_per_entry: Duration = Field(73, description="KVM_RESET_DIRTY_RINGS re-protect per entry (= CLEAR per page)")
    vhost_log_sync_per_gib: Duration = Field(2_000, description="scanning 1 GiB of vhost log (32 KiB of words)")
    memslot_update: Duration = Field(
        20_000, description="one KVM_SET_USER_MEMORY_REGION while vCPUs are held out (atomic update) [assumption]"
    )


class Network(_Model):
    bandwidth: Rate = Field(1_250_000_000, description="link bandwidth (default 10Gbit/s)")
    latency: Duration = Field(100_000, description="one-way latency, paid once at the end of switchover")


class Migration(_Model):
    """Migration parameters (``migration/options.c``) and when to start."""

    start_at: Duration = Field(0, description="simulated time at which 'migrate' is issued")
    max_bandwidth: Rate = Field(128 << 20, description="max-bandwidth (MAX_THROTTLE = 128 MiB/s)")
    downtime_limit: Duration = Field(300_000_000, description="downtime-limit (300 ms)")
    avail_switchover_bandwidth: Rate = Field(0, description="avail-switchover-bandwidth (0 = use the estimate)")
    zero_page_detection: Literal["none", "legacy", "multifd"] = Field(
        "multifd", description="zero-page-detection; without multifd, legacy and multifd both scan in the migration thread"
    )
    timeout: Duration = Field(600 * 10**9, description="dirtysim: cancel with stop-reason 'timeout' after this long")

    @model_validator(mode="after")
    def _limits(self):
        if self.downtime_limit > 2_000 * 10**9:
            raise PydanticCustomError(
                "downtime_limit", "downtime_limit is above QEMU's maximum", {"allowed": "0 .. 2000s"}
            )
        return self


class Engine(_Model):
    quantum: Duration = Field(1_000_000, gt=0, description="vCPU run slice: writes are applied in one batch per quantum")
    send_quantum: Duration = Field(1_000_000, gt=0, description="longest send slice of the migration thread")


class Outputs(_Model):
    dir: Optional[str] = Field(None, description="output directory (default out/<name>)")
    plots: bool = True


class Hotplug(_Model):
    """``device_add pc-dimm``: a new RAMBlock mapped in the device-memory area."""

    id: str
    size: Size


class Unplug(_Model):
    """``device_del`` of a pc-dimm."""

    id: str


class BarMap(_Model):
    """The guest (re)programs a device's BAR: map it at ``addr`` (or move it there)."""

    device: int = Field(ge=0, strict=True, description="index in machine.devices")
    addr: Size


class Pam(_Model):
    """Toggle the read-only shadow overlay over low RAM at 0xC0000-0xFFFFF (like i440fx PAM)."""

    enabled: bool


class Ioeventfd(_Model):
    """``virtio_bus_set_host_notifier``: start (or stop) a virtio device's queue-notify ioeventfds."""

    device: int = Field(ge=0, strict=True, description="index in machine.devices")
    enabled: bool = True


class TimelineEntry(_Model):
    at: Duration
    hotplug: Optional[Hotplug] = None
    unplug: Optional[Unplug] = None
    bar: Optional[BarMap] = None
    pam: Optional[Pam] = None
    ioeventfd: Optional[Ioeventfd] = None

    @model_validator(mode="after")
    def _one_action(self):
        given = [k for k in ("hotplug", "unplug", "bar", "pam", "ioeventfd") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError("timeline", "a timeline entry needs exactly one action",
                                      {"allowed": "one of hotplug, unplug, bar, pam, ioeventfd",
                                       "got": ", ".join(given) or "none"})
        return self

    @property
    def action(self) -> tuple[str, _Model]:
        return next((k, getattr(self, k)) for k in ("hotplug", "unplug", "bar", "pam", "ioeventfd")
                    if getattr(self, k) is not None)


class WhatIf(_Model):
    """Counterfactuals QEMU does not allow, to see what would happen."""

    hotplug_during_migration: bool = Field(
        False, description="QEMU refuses device_add/device_del while migrating (qdev_device_add_from_qdict)"
    )


class Scenario(_Model):
    name: Optional[str] = Field(None, description="default: the file name without .yaml")
    seed: int = Field(0, ge=0, strict=True, description="root of the run's numpy SeedSequence")
    machine: Machine
    dirty_tracking: DirtyTracking = DirtyTracking()
    costs: Costs = Costs()
    network: Network = Network()
    migration: Migration = Migration()
    engine: Engine = Engine()
    outputs: Outputs = Outputs()
    timeline: list[TimelineEntry] = Field(default_factory=list, description="memory-map actions at given times")
    what_if: WhatIf = WhatIf()

    @model_validator(mode="after")
    def _fits_in_ram(self):
        ram = self.machine.memory.size
        if ram % (64 * PAGE_SIZE) or ram < (1 << 20):
            raise PydanticCustomError(
                "ram_size", "RAM size must be at least 1MiB and a multiple of 256KiB",
                {"allowed": "e.g. 512MiB, 16GiB", "loc": ("machine", "memory", "size"), "got": units.format_size(ram)},
            )
        for i, group in enumerate(self.machine.vcpus):
            w = group.workload
            ws = ram - w.offset if w.working_set is None else w.working_set
            loc = ("machine", "vcpus", i, "workload")
            if w.offset + ws > ram or ws < PAGE_SIZE:
                raise PydanticCustomError(
                    "working_set", "the working set does not fit in RAM",
                    {"allowed": f"offset + working_set <= {units.format_size(ram)}", "loc": loc + ("working_set",),
                     "got": f"offset {units.format_size(w.offset)} + {units.format_size(ws)}"},
                )
            if isinstance(w, HotsetWorkload) and (w.hot_offset + w.hot > ws or w.hot < PAGE_SIZE):
                raise PydanticCustomError(
                    "hot", "the hot region does not fit in the working set",
                    {"allowed": f"4KiB <= hot, hot_offset + hot <= {units.format_size(ws)}", "loc": loc + ("hot",),
                     "got": units.format_size(w.hot)},
                )
        self._devices_fit()
        self._timeline_fits()
        for i, (dev, (offset, size)) in enumerate(zip(self.machine.devices, self.device_buffers())):
            if dev.kind not in VHOST_KINDS:
                continue
            if offset < 0 or offset + size > ram or offset % PAGE_SIZE or size < (dev.queues + 1) * PAGE_SIZE:
                raise PydanticCustomError(
                    "buffers", "the device buffers do not fit in RAM",
                    {"allowed": f"page-aligned, >= {dev.queues + 1} pages, inside {units.format_size(ram)}",
                     "loc": ("machine", "devices", i, "buffers"),
                     "got": f"{units.format_size(size)} at {units.format_size(offset)}"},
                )
        return self

    def _devices_fit(self) -> None:
        for i, dev in enumerate(self.machine.devices):
            if dev.kind in VHOST_KINDS and self.machine.accel != "kvm":
                raise PydanticCustomError(
                    "accel", "vhost devices need KVM (ioeventfds and irqfds); TCG provides no eventfds",
                    {"allowed": "accel: kvm, or a virtio-net/virtio-blk device", "loc": ("machine", "devices", i, "kind"),
                     "got": dev.kind})
            if dev.bar % (64 * PAGE_SIZE) and dev.bar & (dev.bar - 1):
                raise PydanticCustomError("bar", "a BAR size must be a power of two",
                                          {"allowed": "e.g. 16KiB, 16MiB", "loc": ("machine", "devices", i, "bar"),
                                           "got": units.format_size(dev.bar)})

    def _timeline_fits(self) -> None:
        ndev, plugged, dm = len(self.machine.devices), {}, self.machine.device_memory
        for i, entry in enumerate(self.timeline):
            kind, act = entry.action
            loc = ("timeline", i, kind)
            if kind in ("bar", "ioeventfd") and act.device >= ndev:
                raise PydanticCustomError("device", "no such device", {
                    "allowed": f"0 .. {ndev - 1} (machine.devices)" if ndev else "none: machine.devices is empty",
                    "loc": loc + ("device",), "got": str(act.device)})
            if kind == "bar":
                self._bar_fits(act, loc)
            if kind == "ioeventfd" and self.machine.devices[act.device].kind == "vfio-pci":
                raise PydanticCustomError("device", "a vfio device has no virtio queues",
                                          {"allowed": "a virtio or vhost device", "loc": loc + ("device",),
                                           "got": str(act.device)})
            if kind == "hotplug":
                if act.size % (64 * PAGE_SIZE) or act.size == 0:
                    raise PydanticCustomError("size", "a DIMM size must be a multiple of 256KiB",
                                              {"allowed": "e.g. 1GiB", "loc": loc + ("size",),
                                               "got": units.format_size(act.size)})
                plugged[act.id] = act.size
                if sum(plugged.values()) > dm:
                    raise PydanticCustomError("device_memory", "the DIMMs do not fit in machine.device_memory",
                                              {"allowed": f"at most {units.format_size(dm)} plugged at once",
                                               "loc": loc + ("size",), "got": units.format_size(sum(plugged.values()))})
            if kind == "unplug" and plugged.pop(act.id, None) is None:
                raise PydanticCustomError("id", "no DIMM with this id is plugged at that point",
                                          {"allowed": ", ".join(plugged) or "none", "loc": loc + ("id",),
                                           "got": act.id})

    def device_memory_base(self) -> int:
        """pc: the DIMM area starts above 4 GiB and above RAM, 1 GiB aligned."""
        gib = 1 << 30
        return -(-max(self.machine.memory.size, 4 * gib) // gib) * gib

    def _bar_fits(self, act: "BarMap", loc: tuple) -> None:
        size = self.machine.devices[act.device].bar
        taken = [(0, self.machine.memory.size), (self.device_memory_base(), self.machine.device_memory)]
        if act.addr % size or any(lo < act.addr + size and act.addr < lo + n for lo, n in taken if n):
            raise PydanticCustomError(
                "addr", "a BAR must be aligned to its size and lie outside RAM and the DIMM area "
                "(dirtysim keeps memslots 256 KiB aligned, so it does not split RAM around BARs)",
                {"allowed": f"a multiple of {units.format_size(size)} at or above "
                            f"{units.format_size(max(lo + n for lo, n in taken if n))}",
                 "loc": loc + ("addr",), "got": f"{act.addr:#x}"})

    def device_buffers(self) -> list[tuple[int, int]]:
        """(offset, size) of each vhost device's buffers (stacked down from the top of RAM); (0, 0) for others."""
        out, top = [], self.machine.memory.size
        for dev in self.machine.devices:
            if dev.kind not in VHOST_KINDS:
                out.append((0, 0))
                continue
            offset = top - dev.buffers if dev.buffer_offset is None else dev.buffer_offset
            out.append((offset, dev.buffers))
            top = min(top, offset)
        return out

    def working_set(self, group: VcpuGroup) -> tuple[int, int]:
        """(offset, size) in bytes of a vCPU group's working set."""
        w = group.workload
        size = self.machine.memory.size - w.offset if w.working_set is None else w.working_set
        return w.offset, size
