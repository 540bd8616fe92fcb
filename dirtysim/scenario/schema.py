"""The scenario schema: what a scenario file may say, with QEMU's defaults.

Every key that mirrors a QEMU parameter carries QEMU's default
(``migration/options.c``, ``qapi/migration.json``). Keys
that model hardware (costs, network) cite the public measurement they come from.
Unknown keys are rejected (``extra="forbid"``) so a typo never becomes a silent
default.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer,
                      WithJsonSchema, create_model, field_validator, model_serializer, model_validator)
from pydantic_core import PydanticCustomError

from ..board import layout
from . import limits, units

PAGE_SIZE = 4096  # TARGET_PAGE_SIZE on x86
CLEAR_BITMAP_SHIFT_MIN, CLEAR_BITMAP_SHIFT_DEFAULT, CLEAR_BITMAP_SHIFT_MAX = 6, 18, 31  # migration/migration.h
MAX_SEED = (1 << 63) - 1  # an int64 in the event log; numpy's SeedSequence takes any int >= 0
# PCI Local Bus 3.0 6.2.5.1: BAR sizes are powers of two, naturally aligned, and a memory BAR should
# decode at least 4 KiB; QEMU's pci_register_bar asserts is_power_of_2(size).
MIN_BAR = 4 << 10
MAX_PHYS_ADDR = 1 << 52  # x86-64 MAXPHYADDR is at most 52 bits
# QEMU's spellings of the same knobs (QMP migrate-set-parameters, -accel kvm,dirty-ring-size=,
# -global migration.x-clear-bitmap-shift=); a scenario may use either.
QEMU_SPELLINGS = {
    "downtime_limit": "downtime-limit", "max_bandwidth": "max-bandwidth",
    "avail_switchover_bandwidth": "avail-switchover-bandwidth", "zero_page_detection": "zero-page-detection",
    "clear_bitmap_shift": "x-clear-bitmap-shift", "ring_size": "dirty-ring-size",
    "calc_dirty_rate": "calc-dirty-rate", "calc_time": "calc-time", "calc_time_unit": "calc-time-unit",
    "sample_pages": "sample-pages", "x_sample_shift": "x-sample-shift",
    "auto_converge": "auto-converge", "dirty_limit": "dirty-limit",
    "throttle_trigger_threshold": "throttle-trigger-threshold", "cpu_throttle_initial": "cpu-throttle-initial",
    "cpu_throttle_increment": "cpu-throttle-increment", "cpu_throttle_tailslow": "cpu-throttle-tailslow",
    "max_cpu_throttle": "max-cpu-throttle", "vcpu_dirty_limit": "vcpu-dirty-limit",
    "x_vcpu_dirty_limit_period": "x-vcpu-dirty-limit-period", "set": "migrate-set-parameters",
    "migrate_cancel": "migrate-cancel", "multifd_channels": "multifd-channels",
    "multifd_compression": "multifd-compression", "xbzrle_cache_size": "xbzrle-cache-size",
    "postcopy_ram": "postcopy-ram", "postcopy_preempt": "postcopy-preempt", "postcopy_blocktime": "postcopy-blocktime",
    "x_postcopy_after_syncs": "x-postcopy-after-syncs", "migrate_start_postcopy": "migrate-start-postcopy",
}

# QMP takes these as bare integers in these units; under QEMU's spelling a scenario may too.
QEMU_BARE_UNITS = {"downtime-limit": "ms", "max-bandwidth": "B/s", "avail-switchover-bandwidth": "B/s",
                   "xbzrle-cache-size": "B",
                   "x-vcpu-dirty-limit-period": "ms"}


def fail(loc: tuple, message: str, got: str, allowed: str) -> PydanticCustomError:
    """An error the loader prints as ``FILE:LINE: loc: message (got ...; allowed ...)``."""
    return PydanticCustomError("scenario", message, {"loc": loc, "got": got, "allowed": allowed})


class UnitFormat:
    """Marks a field written with units; ``fmt`` renders its int value (for bounds in messages)."""

    def __init__(self, fmt):
        self.fmt = fmt


def _unit_type(parse, fmt, kind: str, example: str, base: str):
    """An int field written with units; ``context={"base_units": True}`` also takes bare ``base`` ints."""
    allowed = {"size": f"{', '.join(units.SIZE_UNITS)}, or QEMU's K, M, G, T, P, E (powers of 1024)",
               "rate": ", ".join(units.RATE_UNITS), "duration": ", ".join(units.DURATION_UNITS)}[kind]

    def validate(value, info):
        if (info.context or {}).get("base_units") and type(value) is int:
            return value
        try:
            return parse(value)
        except ValueError as exc:
            raise PydanticCustomError(f"{kind}_unit", str(exc),
                                      {"allowed": f"a number with a unit, e.g. {example}; units: {allowed}"}) from None

    def serialize(value, info):
        return fmt(value) if (info.context or {}).get("units") else value

    return Annotated[
        int,
        BeforeValidator(validate),
        PlainSerializer(serialize, when_used="json"),
        UnitFormat(fmt),
        WithJsonSchema({"type": ["string", "integer"] if kind == "size" else "string",
                        "description": f"a {kind} such as {example!r} ({base})"}),
    ]


Size = _unit_type(units.parse_size, units.format_size, "size", "8GiB", "a bare integer is bytes")
Rate = _unit_type(units.parse_rate, units.format_rate, "rate", "128MiB/s", "bytes per second")
Duration = _unit_type(units.parse_duration, units.format_duration, "duration", "300ms", "stored in nanoseconds")
Fraction01 = Annotated[float, Field(ge=0.0, le=1.0)]


def _spellings(name: str) -> AliasChoices | str:
    return AliasChoices(name, QEMU_SPELLINGS[name]) if name in QEMU_SPELLINGS else name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True,
                              alias_generator=AliasGenerator(validation_alias=_spellings))


class UniformWorkload(_Model):
    """Writes pages uniformly at random over a working set (like ``mm_dirty -p random``)."""

    kind: Literal["uniform"]
    rate: Optional[Rate] = Field(None, description="guest write rate; every 4 KiB of it dirties one page (0: an idle "
                                                   "guest); or give visible_rate")
    visible_rate: Optional[Rate] = Field(
        None, description="instead of rate: the dirty rate migration sees from the whole group (distinct pages "
                          "per 1 s period, as dirty-pages-rate), turned into a per-vCPU write rate through the "
                          "workload's working-set curve (dirtysim/scenario/visible.py; uniform, hotset, sequential)")
    working_set: Optional[Size] = Field(None, description="bytes written over; default: all RAM after offset")
    offset: Size = Field(0, description="guest-physical start of the working set")
    data_only: bool = Field(False, description="write only pages that held data at boot (free memory stays zero); "
                                               "offset and working_set in whole 2MiB")
    bytes_per_write: Size = Field(4096, ge=1, le=4096, description="bytes one write changes in its page (one run "
                                  "from the page's start): what XBZRLE encodes; 4KiB, a whole page, by default")
    identical_rewrites: Fraction01 = Field(
        0.0, description="share of writes that store the bytes the page already holds, 0..1: dirty logging sees "
                         "them, a content hash (calc-dirty-rate page-sampling) does not, and the destination's "
                         "copy stays good")

    @field_validator("working_set", "offset", "hot", "hot_offset", "log", "log_offset", check_fields=False)
    @classmethod
    def _whole_pages(cls, value: Optional[int]):
        """The workload draws whole pages; a fraction of one would be dropped silently."""
        if value is not None and value % PAGE_SIZE:
            raise PydanticCustomError("page_multiple", "not a whole number of 4KiB pages",
                                      {"got": units.format_size(value), "allowed": "a multiple of 4KiB"})
        return value


class HotsetWorkload(UniformWorkload):
    """A hot region inside the working set takes ``hot_share`` of the writes."""

    kind: Literal["hotset"]
    hot: Size = Field(description="size of the hot region")
    hot_share: Fraction01 = Field(description="share of writes that go to the hot region, 0..1")
    hot_offset: Size = Field(0, description="start of the hot region inside the working set")


class ZipfWorkload(UniformWorkload):
    """Page k of the working set's ranking takes writes in proportion to k^-exponent (a key-value store)."""

    kind: Literal["zipf"]
    exponent: float = Field(1.0, gt=0.0, le=4.0, description="zipf exponent s (1: classic zipf), 0 < s <= 4")


class SequentialWorkload(UniformWorkload):
    """One page after the other over the working set, wrapping (a copy, a scan, a log being rewritten)."""

    kind: Literal["sequential"]


class DatabaseWorkload(HotsetWorkload):
    """A hot/cold mixture plus a sequential log: ``log_share`` of the writes append to ``log`` bytes at
    ``log_offset`` (inside the working set), wrapping; the rest fall as in ``hotset``."""

    kind: Literal["database"]
    log: Size = Field(description="size of the log region")
    log_offset: Size = Field(0, description="start of the log inside the working set")
    log_share: Fraction01 = Field(description="share of writes that append to the log, 0..1")


class TraceWorkload(UniformWorkload):
    """A recorded page-write trace replayed by one vCPU (format: dirtysim/guest/trace.py); rate is not used."""

    kind: Literal["trace"]
    file: str = Field(min_length=1, description="the trace file (time_ns,gpa[,length] per line), relative to the "
                                                "working directory")


Workload = Annotated[Union[UniformWorkload, HotsetWorkload, ZipfWorkload, SequentialWorkload, DatabaseWorkload,
                           TraceWorkload], Field(discriminator="kind")]


class Phase(_Model):
    """One phase of a group's rate schedule: ``rate`` for ``duration`` (0 B/s: idle)."""

    duration: Duration = Field(ge=limits.MIN_QUANTUM, description="how long the phase lasts (at least 10us)")
    rate: Rate = Field(description="the group's per-vCPU write rate during the phase")


class VcpuGroup(_Model):
    count: int = Field(1, ge=1, le=limits.MAX_VCPUS)
    workload: Workload
    start: Duration = Field(0, description="the group writes from this simulated time on (it runs idle before)")
    stop: Optional[Duration] = Field(None, description="and stops writing at this time (default: never)")
    phases: list[Phase] = Field(default_factory=list, max_length=1000,
                                description="a rate schedule replacing workload.rate: each phase in turn from time "
                                            "0, then the list again (e.g. idle, burst, steady)")
    mmio_exits: int = Field(0, ge=0, le=10_000_000,
                            description="each vCPU's exits to QEMU for device MMIO or port I/O per second of guest "
                                        "time (KVM_EXIT_MMIO, KVM_EXIT_IO), while the group writes: each costs "
                                        "costs.mmio_exit and takes the BQL (prepare_mmio_access), so it waits while "
                                        "a bitmap sync or a dirty-ring reap holds it; 0: none")

    @property
    def peak_rate(self) -> int:
        """The highest per-vCPU rate the group ever writes at (budgets and buffers are sized by it)."""
        return max([self.workload.rate, *(p.rate for p in self.phases)])

    @model_validator(mode="after")
    def _start_before_stop(self):
        if self.stop is not None and self.stop <= self.start:
            raise PydanticCustomError("stop", "stop must come after start",
                                      {"got": units.format_duration(self.stop),
                                       "allowed": f"after start = {units.format_duration(self.start)}"})
        return self


class MemoryConfig(_Model):
    size: Size = Field(description="guest RAM: one RAMBlock ('pc.ram'), at guest-physical 0 with machine.type none")
    zero_fraction: Fraction01 = Field(0.0, description="share of RAM that is zero at migration start (sent as 'duplicate')")
    zlib_ratio: float = Field(2.0, ge=1.0, le=4096.0, description="how much multifd zlib shrinks a data page "
                              "(4 KiB / ratio on the wire) [assumption about guest data: `dirtysim calibrate` gives "
                              "3.3-3.5 on text pages, 1.0 on random ones]")
    zstd_ratio: float = Field(2.2, ge=1.0, le=4096.0, description="how much multifd zstd shrinks a data page "
                              "[assumption: 3.7 on text pages, 1.0 on random ones]")
    backing: Literal["4k", "2m", "1g"] = Field(
        "4k", description="host page size backing guest RAM: 4k, or 2m/1g (hugetlbfs or THP), which KVM maps with "
                          "huge pages until dirty logging splits them; with manual protect and INITIALLY_SET the "
                          "first KVM_CLEAR_DIRTY_LOG of a page costs costs.clear_dirty_log_huge_per_page")

    @model_serializer(mode="wrap")
    def _backing_when_set(self, handler, info):
        """``backing`` appears only when not 4k: a scenario without it dumps as it always did (but in the JSON
        Schema's defaults, context ``defaults``)."""
        out = handler(self)
        if self.backing == MemoryConfig.model_fields["backing"].default and not (info.context or {}).get("defaults"):
            out.pop("backing", None)
        return out


class _PciDevice(_Model):
    bar: Size = Field(16 << 10, description="size of the device's MMIO BAR (mapped by a timeline 'bar' action)")
    state: Size = Field(4 << 10, le=16 << 30, description="the device's vmstate section, sent in the downtime "
                        "[assumption: virtio config, features and queue indices, a few KiB]")

    @field_validator("bar")
    @classmethod
    def _power_of_two(cls, value: int):
        """``pci_register_bar`` asserts a power-of-two size (the BAR's low bits are read-only zeros)."""
        if value < MIN_BAR or value & (value - 1):
            raise PydanticCustomError(
                "bar", "a PCI BAR size must be a power of two, at least 4KiB",
                {"got": units.format_size(value), "allowed": "4KiB, 8KiB, 16KiB, ..., e.g. 16MiB"})
        return value


class VirtioDevice(_PciDevice):
    """A virtio-pci device emulated in QEMU: a 'virtio' listener and queue-notify ioeventfds; no traffic modelled."""

    kind: Literal["virtio-net", "virtio-blk"]
    queues: int = Field(1, ge=1, le=64)


ROM_BAR_MAX = 2 << 30  # the expansion ROM BAR is 32 bits (PCI_ROM_ADDRESS_MASK): 2GiB is the largest it sizes


class VfioPci(_PciDevice):
    """An assigned device: the 'vfio' listener keeps the IOMMU mapping every RAM section; BAR 0 is mmap'd."""

    kind: Literal["vfio-pci"]
    bar: Size = Field(16 << 20, description="size of the device's BAR 0 (mapped by a timeline 'bar' action)")
    host: Optional[str] = Field(
        None, description="the host device's PCI address, which names its regions ('0000:01:00.0 BAR 0 mmaps[0]'); "
                    "default 0000:NN:00.0 with NN = the device's index + 1 [assumption: any address]")
    mmap: bool = Field(True, description="the BAR is mmap'd and mapped as a RAM device that KVM and vfio map "
                                         "(vfio-pci's x-no-mmap=off, QEMU's default); false: every access traps")
    rom: Size = Field(0, description="size of the host device's expansion ROM (vfio_pci_size_rom reads it from "
                                     "the device): BAR 6, MMIO that vfio_rom_read serves; 0: none, as rombar=0 or a "
                                     "device without one [assumption: NIC VFs have none]")

    @field_validator("rom")
    @classmethod
    def _rom_size(cls, value: int):
        """A ROM BAR is a power of two (PCI sizing); dirtysim's regions are whole pages, so at least 4KiB. The
        expansion ROM register holds address bits 31..11 (``pci_register_bar``: wmask ``~(size - 1)``, 32 bits
        of it), so a ROM of 4GiB or more could never be mapped: at most 2GiB."""
        if value and (value < MIN_BAR or value & (value - 1) or value > ROM_BAR_MAX):
            raise PydanticCustomError("rom", "a PCI ROM BAR size is 0 or a power of two, at least 4KiB and at most "
                                             "2GiB (the ROM BAR is a 32-bit register)",
                                      {"got": units.format_size(value), "allowed": "0B, 4KiB, 8KiB, ..., 2GiB, e.g. "
                                                                                   "64KiB"})
        return value

    @field_validator("host")
    @classmethod
    def _pci_address(cls, value: Optional[str]):
        """vfio-pci's ``host`` property: domain:bus:device.function, lower-case hex as sysfs names it."""
        if value is not None and not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]", value):
            raise PydanticCustomError("host", "a host PCI address is domain:bus:device.function (sysfs form)",
                                      {"got": value, "allowed": "e.g. 0000:01:00.0 (device 00-1f, function 0-7)"})
        return value
    def host_name(self, index: int) -> str:
        """vfio-pci's ``vbasedev.name``, the host PCI address: ``host``, or 0000:NN:00.0 with NN = index + 1."""
        return self.host or f"0000:{index + 1:02x}:00.0"

    state: Size = Field(1 << 20, le=16 << 30, description="the device's migration data in the downtime "
                        "(VFIO_DEVICE_STATE_STOP_COPY) [assumption: a NIC VF's state; vfio precopy of it is not "
                        "modelled]")


class _VhostUserDevice(_PciDevice):
    queues: int = Field(1, ge=1, le=64, description="queue pairs; each has a used ring page")
    buffers: Size = Field(64 << 20, description="guest RAM holding the device's buffers, used round-robin")
    buffer_offset: Optional[Size] = Field(
        None, description="start of the buffers as an offset in the RAM backend: guest-physical with machine.type "
                          "none, where ram-below-4g/ram-above-4g show it on a board (default: stacked below the top "
                          "of RAM)"
    )


class VhostUserNet(_VhostUserDevice):
    """A vhost virtio-net backend receiving packets (vhost-user, or vhost-net in the host kernel)."""

    kind: Literal["vhost-user-net", "vhost-net"]
    rx: Rate = Field(description="received payload written into guest memory")
    packet: Size = Field(1500, ge=64, le=64 << 10,
                         description="bytes per packet, one RX buffer each (64 B minimum Ethernet frame .. 64KiB)")

    @property
    def unit(self) -> int:
        return self.packet

    @property
    def rate(self) -> int:
        return self.rx


class VhostUserBlk(_VhostUserDevice):
    """A vhost-user virtio-blk backend serving reads: it writes the data into guest buffers."""

    kind: Literal["vhost-user-blk"]
    read: Rate = Field(description="read data written into guest memory")
    request: Size = Field(64 << 10, ge=512, le=64 << 20,
                          description="bytes per read request, whole 512-byte sectors (VIRTIO_BLK_SECTOR_SIZE)")

    @field_validator("request")
    @classmethod
    def _sectors(cls, value: int):
        if value % 512:
            raise PydanticCustomError("request", "a virtio-blk request is a whole number of 512-byte sectors",
                                      {"got": units.format_size(value), "allowed": "a multiple of 512B"})
        return value

    @property
    def unit(self) -> int:
        return self.request

    @property
    def rate(self) -> int:
        return self.read


# pci_add_option_rom: the ROM BAR is pow2ceil(romfile size); vgabios-stdvga.bin (SeaVGABIOS) is about 39 KiB
# [assumption: the size of the file QEMU ships; another build may round to 32 or 128 KiB]
VGA_ROM_SIZE = 64 << 10


class Vga(_Model):
    """``-device VGA`` (hw/display/vga-pci.c): its VRAM ``vga.vram`` is BAR 0, RAM with the VGA dirty-log client."""

    kind: Literal["VGA"]
    vgamem_mb: int = Field(16, description="VRAM size in MiB (vga-pci.c's vgamem_mb property, default 16); "
                                           "a power of two from 1 to 512")
    state: Size = Field(4 << 10, le=16 << 30, description="the device's vmstate section, sent in the downtime "
                        "[assumption: VGA registers and palette, a few KiB]; the VRAM migrates as a RAMBlock")

    @field_validator("vgamem_mb")
    @classmethod
    def _vram_size(cls, value: int):
        """``vga_common_init`` clamps to 1..512 and rounds up to a power of two; dirtysim refuses the others."""
        if not 1 <= value <= 512 or value & (value - 1):
            raise PydanticCustomError("vgamem_mb", "vga_common_init makes VRAM a power of two from 1 to 512 MiB",
                                      {"got": str(value), "allowed": "1, 2, 4, ..., 512"})
        return value

    @property
    def bar(self) -> int:
        """BAR 0, the VRAM (``pci_register_bar(..., 0, PCI_BASE_ADDRESS_MEM_PREFETCH, &s->vram)``)."""
        return self.vgamem_mb << 20


Device = Annotated[Union[VhostUserNet, VhostUserBlk, VirtioDevice, VfioPci, Vga], Field(discriminator="kind")]
VHOST_KINDS = ("vhost-user-net", "vhost-net", "vhost-user-blk")


class Machine(_Model):
    accel: Literal["kvm", "tcg"] = Field("kvm", description="kvm, or tcg (per-CPU address spaces, no eventfds)")
    memory: MemoryConfig
    vcpus: list[VcpuGroup] = Field(min_length=1, max_length=limits.MAX_VCPUS)
    devices: list[Device] = Field(default_factory=list, description="PCI devices: vhost, virtio, vfio, VGA")
    device_memory: Size = Field(0, description="memory-hotplug area (maxmem - size) for pc-dimm hotplug")
    device_state: Size = Field(
        256 << 10, le=64 << 30,
        description="the rest of the non-iterable device state sent during downtime (CPUs, chipset, timers; each "
                    "device in machine.devices adds its own state), at most 64GiB [modelling assumption]"
    )
    vmdesc: Size = Field(
        16 << 10, le=64 << 20,
        description="bytes of the vmdesc, the JSON description of every device's state that the source appends "
                    "after QEMU_VM_EOF (qemu_savevm_state_complete_precopy_non_iterable, should_send_vmdesc); it "
                    "counts in transferred, not in downtime-bytes [assumption: 16KiB, its size grows with the "
                    "devices; analyze-migration.py --dump desc prints it]")
    type: Literal["none", "pc", "q35"] = Field(
        "none", description="the board: none (RAM alone at guest-physical 0), or QEMU's pc (i440fx) or q35 map: RAM "
                            "split around the PCI hole, BIOS, option ROM, VGA window, 13 PAM segments (board.pc)")
    memory_backend: Optional[str] = Field(
        None, pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
        description="id of the RAM's memory-backend-ram (-object memory-backend-ram,id=ID -machine memory-backend=ID; "
                    "id_wellformed): the RAMBlock is then /objects/ID; default: QEMU's implicit pc.ram")
    max_ram_below_4g: Size = Field(
        0, le=4 << 30, description="pc/q35 max-ram-below-4g, at most 4GiB (pc_machine_set_max_ram_below_4g); "
                                   "0: QEMU's default (pc 3.5GiB, q35 4GiB)")
    smm: Literal["on", "off", "auto"] = Field(
        "auto", description="pc/q35 -machine smm= (x86_machine_is_smm_enabled): auto and on enable System "
                            "Management Mode (TCG has it; KVM is assumed to have KVM_CAP_X86_SMM): SMRAM on q35 "
                            "and, with KVM, the kvm-smram listener (memslots in KVM address space 1); off: neither")

    @field_validator("smm", mode="before")
    @classmethod
    def _smm_yaml_bool(cls, v):
        """YAML 1.1 reads a bare ``on``/``off`` as a boolean: take it as QEMU's OnOffAuto word it was written as."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    def switchover_state(self) -> int:
        """Bytes of device state ``qemu_savevm_state_complete_precopy_non_iterable`` writes in the downtime."""
        return self.device_state + sum(d.state for d in self.devices)

    @property
    def ram_idstr(self) -> str:
        """The RAM's RAMBlock: ``host_memory_backend_get_name``, the canonical path of a user's backend
        (x-use-canonical-path-for-ramblock-id is on), or the implicit backend's ``default_ram_id``."""
        return layout.DEFAULT_RAM_ID if self.memory_backend is None else f"/objects/{self.memory_backend}"

    @property
    def smm_enabled(self) -> bool:
        """``x86_machine_is_smm_enabled``: not off, on a board (KVM_CAP_X86_SMM assumed present)."""
        return self.type != "none" and self.smm != "off"

    def ram_ranges(self) -> list[tuple[int, int, int]]:
        """(guest-physical address, size, offset in the RAM backend) of each part of RAM the board shows."""
        return layout.ram_ranges(self.type, self.memory.size, self.max_ram_below_4g)

    @model_serializer(mode="wrap")
    def _board_keys_when_set(self, handler):
        """The board keys appear only when not their default: a scenario without them dumps as it always did."""
        out = handler(self)
        for key in ("type", "memory_backend", "max_ram_below_4g", "vmdesc", "smm"):
            if getattr(self, key) == Machine.model_fields[key].default:
                out.pop(key, None)
        return out


class DirtyTracking(_Model):
    """KVM dirty logging (``accel/kvm/kvm-all.c``), vhost log harvesting, and the deliberately wrong variants."""

    mode: Literal["bitmap", "ring"] = Field("bitmap", description="KVM dirty bitmap, or the per-vCPU dirty ring")
    manual_protect: bool = Field(True, description="KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (QEMU enables it when offered)")
    initially_set: bool = Field(
        True, description="KVM_DIRTY_LOG_INITIALLY_SET (needs manual_protect; default: same as manual_protect)"
    )
    clear_bitmap_shift: int = Field(
        CLEAR_BITMAP_SHIFT_DEFAULT,
        ge=CLEAR_BITMAP_SHIFT_MIN,
        le=CLEAR_BITMAP_SHIFT_MAX,
        description="x-clear-bitmap-shift: log2 pages per lazy-clear chunk (QEMU clamps to 6..31; dirtysim rejects)",
    )
    ring_size: int = Field(
        4096, ge=1024, le=65536,
        description="dirty-ring-size in entries, a power of two (ring mode; QEMU's 0 means bitmap mode)",
    )
    pml: bool = Field(True, description="x86 PML (kvm_intel enable_pml): a first write after protection sets the "
                                       "D-bit and logs the page with no fault, a PML-full exit per 512 logged pages "
                                       "(costs.pml_full_exit); without it each is a write-protect fault "
                                       "(costs.write_fault). Rings reserve 512 more entries (soft-full at N-576, "
                                       "else N-64)")
    reaper_period: Duration = Field(10**9, ge=limits.MIN_QUANTUM, description="kvm-reaper harvest period (1 s)")
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
        2 * 10**6, le=10**9, description="read-then-zero: time between the read and the store of 0 (a descheduled thread)"
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
    """Time costs of the tracking machinery (hardware-dependent: each default cites its source).

    Defaults from KVM's ``dirty_log_perf_test`` (tools/testing/selftests/kvm; 96 vCPUs x 1 GiB,
    TDP MMU, as posted with "KVM: x86/mmu: Optimize disabling dirty logging", 2021-11-10):
    GET 0.66 ms / 96 GiB ≈ 7 us per GiB; CLEAR 1.83 s / 25.2 M re-protected pages
    ≈ 73 ns per page. The write fault default (2 us) is a modelling assumption for
    a fast-path write-protect fault on an already-split 4 KiB mapping; the test's 14 us
    per first write includes 1 GiB hugepage splitting and is an upper bound. No
    public measurement of dirty-ring costs was found: the ring-full exit (10 us)
    and reap (50 ns per entry) are assumptions; reset re-protects like CLEAR.
    """

    write_fault: Duration = Field(2_000, description="vCPU time lost per write to a write-protected page")
    get_dirty_log_per_gib: Duration = Field(7_000, description="KVM_GET_DIRTY_LOG time per GiB of memslot")
    clear_dirty_log_per_page: Duration = Field(73, description="KVM_CLEAR_DIRTY_LOG time per re-protected page")
    clear_dirty_log_huge_per_page: Duration = Field(
        2, description="with machine.memory.backing 2m or 1g, the first KVM_CLEAR_DIRTY_LOG of a page since logging "
                       "started (INITIALLY_SET): KVM write-protects the huge mapping, split to 4 KiB lazily at the "
                       "next write; dirty_log_perf_test, 1 GiB hugepages, TDP MMU: iteration 1's clear 0.0497 s / "
                       "25.2 M pages = 2.0 ns per page, against iteration 2's 1.83 s = 73 ns (anchors C.6)")
    bitmap_sync_per_gib: Duration = Field(
        2_000, description="migration_bitmap_sync L2->L3 exchange per GiB (measured: 1.9 ms per TiB with the numba sync kernel, benchmarks/)"
    )
    ring_full_exit: Duration = Field(10_000, description="KVM_EXIT_DIRTY_RING_FULL round trip to userspace [assumption]")
    mmio_exit: Duration = Field(
        5_000, description="one MMIO or port-I/O exit to QEMU: the VM exit, KVM_RUN's return, the device's handler "
                           "under the BQL, re-entry (machine.vcpus[].mmio_exits) [assumption: a userspace exit round "
                           "trip of a few us, measurable on a host with kvm-unit-tests' x86/vmexit.c 'mmio' test; "
                           "a BQL wait comes on top]")
    ring_reap_per_entry: Duration = Field(50, description="collecting one ring entry in QEMU [assumption]")
    ring_reset_per_entry: Duration = Field(73, description="KVM_RESET_DIRTY_RINGS re-protect per entry (= CLEAR per page)")
    vhost_log_sync_per_gib: Duration = Field(2_000, description="scanning 1 GiB of vhost log (32 KiB of words)")
    pml_full_exit: Duration = Field(
        5_000, description="with PML, one PML-full VM exit: handle_pml_full -> vmx_flush_pml_buffer moves the 512 "
                           "logged GPAs into the dirty bitmap or ring, and the vCPU re-enters [assumption: a VM exit "
                           "round trip (~1-2 us) plus 512 mark_page_dirty_in_slot]")
    dirty_word_atomic: Duration = Field(
        10, description="one atomic read-modify-write of a dirty-bitmap word, paid per non-zero word: "
                        "physical_memory_set_dirty_lebitmap ORs each into every dirty client's bitmap (DIRTY_MEMORY_VGA, "
                        "and _MIGRATION while tracking; _CODE with TCG), physical_memory_sync_dirty_bitmap exchanges "
                        "each into bmap (qatomic_xchg) [assumption: a locked instruction on a streamed cache line]")
    log_start_per_gib: Duration = Field(
        20_000, description="turning dirty logging on for a memslot that is not write-protected at start (manual "
                            "protect with INITIALLY_SET: kvm_prepare_memory_region allocates the bitmap and sets it, "
                            "kvm_mmu_slot_apply_flags returns early), per GiB: dirty_log_perf_test's 'Enabling dirty "
                            "logging' takes 1.9-2.1 ms for 96 GiB (anchors C.6)")
    log_start_wp_per_gib: Duration = Field(
        4_000_000, description="turning dirty logging on where KVM protects the whole slot at once (legacy bitmap, "
                               "manual protect without INITIALLY_SET, dirty ring): kvm_mmu_slot_apply_flags write-"
                               "protects every 4 KiB mapping, or with PML clears their D-bits "
                               "(kvm_mmu_slot_leaf_clear_dirty), then flushes TLBs; per GiB, 262144 SPTEs [assumption: "
                               "~15 ns per SPTE for the TDP MMU walk; no public measurement found]")
    memslot_update: Duration = Field(
        20_000, description="one KVM_SET_USER_MEMORY_REGION while vCPUs are held out (atomic update) [assumption]"
    )
    migration_page: Duration = Field(
        100, description="migration thread, per page it sends or queues: find_next_bit, migration_bitmap_clear_dirty, "
                         "the page header (ram_find_and_save_block -> ram_save_target_page) [assumption: a few hundred "
                         "instructions]")
    zero_check_zero_page: Duration = Field(
        300, description="buffer_is_zero over a zero page: the whole 4 KiB is read. `dirtysim calibrate` on the CI "
                         "machine (EPYC VM, 2026-12): 430 ns in address order from DRAM, 850-1100 ns in random order, "
                         "150-250 ns in cache, with a plain kernel; QEMU's AVX2 one takes about 2/3 of that")
    zero_check_data_page: Duration = Field(
        70, description="buffer_is_zero over a data page: it exits at the 3-byte sample, three cache misses "
                        "(`dirtysim calibrate` on the CI machine: 66-84 ns)")
    page_send: Duration = Field(
        2_500, description="one normal page into the socket: header, writev of 4 KiB, TCP copy (`dirtysim calibrate` "
                           "on the CI machine, loopback: 2.2-2.6 us; one TCP connection moves 1617 MiB/s = 2.4 us per "
                           "page on a 100 Gbit link, cloud-hypervisor PR 7669; KubeVirt needs 8-16 multifd channels "
                           "for 100 Gbit/s)")
    multifd_packet: Duration = Field(
        5_000, description="one multifd packet in its sender thread: header, sendmsg, the channel handoff "
                           "(multifd_send, sem_wait/post) [assumption]")
    zlib_page: Duration = Field(
        60_000, description="multifd zlib compressing one data page, level 1, one stream flushed per packet "
                            "(`dirtysim calibrate` on the CI machine: text 55 us, random bytes 110-140 us)")
    xbzrle_page: Duration = Field(
        1_000, description="XBZRLE, per page it touches: the cache lookup and the copy into the cache, or "
                           "xbzrle_encode_buffer comparing the cached copy with the page [assumption: two 4 KiB reads "
                           "and a write; `dirtysim calibrate` measures a 4 KiB copy from DRAM at 0.6-0.9 us]")
    zstd_page: Duration = Field(
        8_000, description="multifd zstd compressing one data page, level 1 (zstandard 0.25 on the CI machine: "
                           "7.7 us for half text, half random pages)")
    vm_stop_per_vcpu: Duration = Field(
        10_000, description="vm_stop_force_state -> pause_all_vcpus: kick one vCPU out of KVM_RUN and wait for it "
                            "[assumption: a signal and a condition-variable wake-up, 5-20 us]")
    vhost_stop_per_queue: Duration = Field(
        50_000, description="vhost_dev_stop: GET_VRING_BASE for one virtqueue, a round trip to the backend that "
                            "first completes the queue's in-flight requests [assumption]")
    block_drain: Duration = Field(
        500_000, description="bdrv_drain_all for one block device: its in-flight requests complete [assumption: "
                             "one request's service time on NVMe-class storage]")
    postcopy_fault: Duration = Field(
        15_000, description="postcopy, destination: the fault thread reads the userfault and sends REQ_PAGES "
                            "(postcopy_ram_fault_thread -> migrate_send_rp_req_pages) [assumption: with 100us latency "
                            "and postcopy_place, a preempt request takes ~233us, P. Xu's 229-233us]")
    postcopy_place: Duration = Field(
        15_000, description="postcopy, destination: UFFDIO_COPY of a received page and the wake of its waiters "
                            "(postcopy_place_page) [assumption, as postcopy_fault]")
    page_hash: Duration = Field(
        500, description="calc-dirty-rate hashing one sampled 4 KiB page (compute_page_hash, xxHash64 rounds): "
                         "a page read from DRAM at ~10 GB/s [assumption; xxHash's own benchmark gives ~19 GB/s "
                         "in cache]")

    @field_validator("*")
    @classmethod
    def _one_operation(cls, value: int, info):
        """Each cost is of one fault, ioctl, entry or GiB: above 1 s it is a typo (and would stall the run)."""
        if value > 10**9:
            raise PydanticCustomError("cost", "more than any single operation costs",
                                      {"got": units.format_duration(value), "allowed": "0 .. 1s"})
        return value

    @model_serializer(mode="wrap")
    def _huge_clear_when_set(self, handler, info):
        """``clear_dirty_log_huge_per_page`` appears only when not its default (it costs only with huge backing):
        a scenario without it dumps as it always did. The JSON Schema's defaults (context ``defaults``) have it."""
        out = handler(self)
        key = "clear_dirty_log_huge_per_page"
        if getattr(self, key) == Costs.model_fields[key].default and not (info.context or {}).get("defaults"):
            out.pop(key, None)
        return out

    def worst_sync_ns(self, ram_bytes: int) -> int:
        """An upper bound of one sync's cost (GET, sync, vhost scan per GiB; CLEAR per page)."""
        gib = -(-ram_bytes // (1 << 30))
        per_gib = self.get_dirty_log_per_gib + self.bitmap_sync_per_gib + self.vhost_log_sync_per_gib
        return per_gib * gib + self.clear_dirty_log_per_page * (ram_bytes // PAGE_SIZE)


class Network(_Model):
    bandwidth: Rate = Field(1_250_000_000, ge=1, description="link bandwidth (default 10Gbit/s); the wire time divides by it")
    latency: Duration = Field(100_000, le=10 * 10**9,
                              description="one-way latency, paid once at the end of switchover (at most 10s); "
                                          "postcopy pays it on every page request and page")
    send_buffer: Size = Field(
        15_000_000, le=1 << 30,
        description="postcopy without preempt: bytes of background pages queued in the socket ahead of a requested "
                    "page while the push is unthrottled [assumption: P. Xu measured 12.1 ms vanilla vs 0.23 ms preempt "
                    "on 10 GbE, ~15 MB of queue]")


# qapi/migration.json MigrationCapability values besides those modelled (they do not change how
# RAM migrates, or are deprecated).
UNBUILT_CAPABILITIES = frozenset({
    "rdma-pin-all", "zero-blocks", "events", "x-colo", "release-ram", "return-path",
    "pause-before-switchover", "dirty-bitmaps", "late-block-activate",
    "x-ignore-shared", "validate-uuid", "background-snapshot", "zero-copy-send",
    "switchover-ack", "mapped-ram"})
MODELLED_CAPABILITIES = "auto-converge, dirty-limit, multifd, xbzrle, postcopy-ram, postcopy-preempt, postcopy-blocktime"


class Capabilities(_Model):
    """``migrate-set-capabilities``: every capability is off by default (``options.c`` DEFINE_PROP_MIG_CAP).

    QEMU refuses to change capabilities while a migration runs ("There's a
    migration process in progress"), so they are fixed for the run.
    """

    auto_converge: bool = Field(False, description="auto-converge: throttle the vCPUs (migration/cpu-throttle.c)")
    dirty_limit: bool = Field(False, description="dirty-limit: cap each vCPU's dirty rate (system/dirtylimit.c); "
                                                 "needs the dirty ring, excludes auto-converge")
    multifd: bool = Field(False, description="multifd: RAM pages go out on multifd-channels sender threads "
                                             "(migration/multifd.c)")
    xbzrle: bool = Field(False, description="xbzrle: after the first lap, a page found in the XBZRLE cache goes "
                                           "out as its delta (migration/xbzrle.c); not with multifd")
    postcopy_ram: bool = Field(False, description="postcopy-ram: after migrate-start-postcopy the guest runs on the "
                                                  "destination and pulls missing pages (migration/postcopy-ram.c)")
    postcopy_preempt: bool = Field(False, description="postcopy-preempt: requested pages go on their own channel, "
                                                      "not behind the queued background pages")
    postcopy_blocktime: bool = Field(False, description="postcopy-blocktime: the destination reports how long vCPUs "
                                                        "were blocked on page faults")

    @model_validator(mode="before")
    @classmethod
    def _not_built(cls, data):
        """QEMU's other capabilities exist but are not modelled yet: say so rather than "unknown key"."""
        if isinstance(data, dict):
            for key, value in data.items():
                if key in UNBUILT_CAPABILITIES:
                    raise fail(("migration", "capabilities", key), "a QEMU capability dirtysim does not model yet",
                               str(value), MODELLED_CAPABILITIES)
        return data


class MigrationParameters(_Model):
    """``migrate-set-parameters``: the parameters a running migration re-reads (``migration/options.c``)."""

    max_bandwidth: Rate = Field(
        128 << 20, description="max-bandwidth (MAX_THROTTLE = 128 MiB/s); 0 (or under 10 B/s) is unlimited, as in "
                               "QEMU: migration_rate_set stores max-bandwidth / 10 and 0 disables the limit")
    downtime_limit: Duration = Field(300_000_000, description="downtime-limit (300 ms)")
    avail_switchover_bandwidth: Rate = Field(0, description="avail-switchover-bandwidth (0 = use the estimate)")
    throttle_trigger_threshold: int = Field(50, ge=1, le=100, description="throttle-trigger-threshold (%): a "
                                            "period is high when its dirty bytes exceed this share of its transfer")
    cpu_throttle_initial: int = Field(20, ge=1, le=99, description="cpu-throttle-initial (%)")
    cpu_throttle_increment: int = Field(10, ge=1, le=99, description="cpu-throttle-increment (%)")
    cpu_throttle_tailslow: bool = Field(False, description="cpu-throttle-tailslow: smaller steps near the need")
    max_cpu_throttle: int = Field(99, ge=1, le=99, description="max-cpu-throttle (%), at least cpu-throttle-initial")
    vcpu_dirty_limit: int = Field(1, ge=1, le=(1 << 64) - 1, description="vcpu-dirty-limit (MB/s, computed as MiB/s): each vCPU's "
                                                       "quota under dirty-limit")
    x_vcpu_dirty_limit_period: Duration = Field(
        10**9, description="x-vcpu-dirty-limit-period: how often dirty-limit measures and adjusts (1 .. 1000 ms)")

    @model_validator(mode="before")
    @classmethod
    def _qemu_units(cls, data):
        """Under QEMU's spellings a bare integer has QEMU's unit: ms for downtime-limit, bytes/s for bandwidths."""
        if isinstance(data, dict):
            data = dict(data)
            for key, unit in QEMU_BARE_UNITS.items():
                if type(data.get(key)) is int:
                    data[key] = f"{data[key]}{unit}"
        return data

    @field_validator("downtime_limit")
    @classmethod
    def _downtime_max(cls, value: Optional[int]):
        """``migrate_params_check``: downtime-limit is at most MAX_MIGRATE_DOWNTIME (2000 s)."""
        if value is not None and value > 2_000 * 10**9:
            raise PydanticCustomError("downtime_limit", "above QEMU's maximum (migrate_params_check)",
                                      {"got": units.format_duration(value), "allowed": "0 .. 2000s"})
        return value

    @field_validator("x_vcpu_dirty_limit_period")
    @classmethod
    def _period_range(cls, value: Optional[int]):
        """``migrate_params_check``: "x-vcpu-dirty-limit-period expects a value between 1 and 1000" (ms)."""
        if value is not None and (value % 10**6 or not 10**6 <= value <= 10**9):
            raise PydanticCustomError("x_vcpu_dirty_limit_period", "QEMU takes whole milliseconds, 1 to 1000 "
                                      "(migrate_params_check)", {"got": units.format_duration(value),
                                                                 "allowed": "1ms .. 1000ms"})
        return value


def _throttle_range(params: MigrationParameters, loc: tuple) -> None:
    """``migrate_params_check``: max-cpu-throttle lies between cpu-throttle-initial and 99."""
    high, low = params.max_cpu_throttle, params.cpu_throttle_initial
    if high < low:
        raise fail(loc + ("max_cpu_throttle",), "max-cpu-throttle expects an integer in the range of "
                   "cpu-throttle-initial to 99 (migrate_params_check)", str(high), f"{low} .. 99")


XBZRLE_CACHE_SIZE_ERROR = "Option xbzrle_cache_size expects a power of two no less than the target page size"


class Migration(MigrationParameters):
    """Migration capabilities and parameters (``migration/options.c``), and when to start and give up."""

    start_at: Duration = Field(0, description="simulated time at which 'migrate' is issued")
    capabilities: Capabilities = Capabilities()
    zero_page_detection: Literal["none", "legacy", "multifd"] = Field(
        "multifd", description="zero-page-detection; without multifd, legacy and multifd both scan in the migration thread"
    )
    multifd_channels: int = Field(2, ge=1, le=255, description="multifd-channels (2): sender threads and "
                                  "connections (migrate_params_check: 1 .. 255)")
    xbzrle_cache_size: Size = Field(64 << 20, description="xbzrle-cache-size (64 MiB): a power of two, at least "
                                    "one page (migrate_params_check)")
    multifd_compression: Literal["none", "zlib", "zstd"] = Field(
        "none", description="multifd-compression; the compressed size of a data page is 4 KiB / "
                            "machine.memory.<method>_ratio (qpl, uadk, qatzip are not modelled)")
    timeout: Duration = Field(600 * 10**9, description="dirtysim: cancel with stop-reason 'timeout' after this long")
    x_postcopy_after_syncs: Optional[int] = Field(
        None, ge=1, description="dirtysim (guestperf's post_copy_iters): migrate-start-postcopy once dirty-sync-count "
                                "reaches this; needs postcopy-ram")
    max_syncs: Optional[int] = Field(None, ge=1, description="dirtysim (guestperf's max_iters): cancel with "
                                     "stop-reason 'max-syncs' once dirty-sync-count exceeds this")

    @field_validator("xbzrle_cache_size")
    @classmethod
    def _cache_size(cls, value: int):
        """``migrate_params_check``: a power of two of at least one target page (nothing rounds it)."""
        if value < PAGE_SIZE or value & (value - 1):
            raise PydanticCustomError("xbzrle_cache_size", f"{XBZRLE_CACHE_SIZE_ERROR} (migrate_params_check)",
                                      {"got": units.format_size(value), "allowed": "4KiB, 8KiB, ..., e.g. 64MiB"})
        return value


class Engine(_Model):
    quantum: Duration = Field(1_000_000, ge=limits.MIN_QUANTUM, le=10**9,
                              description="vCPU run slice: writes are applied in one batch per quantum (10us .. 1s)")
    send_quantum: Duration = Field(1_000_000, ge=limits.MIN_QUANTUM, le=10**9,
                                   description="longest send slice of the migration thread (10us .. 1s)")


class Outputs(_Model):
    dir: Optional[str] = Field(None, min_length=1, description="output directory (default out/<name>)")
    guest_sample: Duration = Field(100_000_000, ge=10**6, le=60 * 10**9,
                                   description="guest.csv: how often each vCPU's run time and writes are sampled "
                                               "(1ms .. 60s)")

    @field_validator("dir")
    @classmethod
    def _no_nul(cls, value: Optional[str]):
        if value is not None and "\0" in value:
            raise PydanticCustomError("dir", "a path cannot contain a NUL character",
                                      {"got": repr(value), "allowed": "a directory path"})
        return value
    plots: bool = True


class Hotplug(_Model):
    """``device_add pc-dimm``: a new RAMBlock mapped in the device-memory area."""

    id: str = Field(min_length=1, max_length=64)
    size: Size


class Unplug(_Model):
    """``device_del`` of a pc-dimm."""

    id: str = Field(min_length=1, max_length=64)


class BarMap(_Model):
    """The guest (re)programs a device's BAR: map it at ``addr`` (or move it there)."""

    device: int = Field(ge=0, strict=True, description="index in machine.devices")
    addr: Size
    rom: bool = Field(False, description="the device's expansion ROM BAR (PCI_ROM_SLOT) instead of BAR 0: a VGA's "
                                         "option ROM, as the firmware maps it to copy the ROM out")


class Pam(_Model):
    """PAM. ``machine.type: none``: ``enabled`` toggles one read-only shadow ROM over low RAM at 0xC0000-0xFFFFF.
    pc/q35: ``segment`` and ``mode``, the host bridge's ``pam_update`` of one segment (``board.layout.pam_segment``)."""

    enabled: Optional[bool] = Field(None, description="machine.type none: the shadow ROM on or off")
    segment: Optional[int] = Field(None, ge=0, lt=layout.PAM_REGIONS_COUNT, strict=True,
                                   description="pc/q35: pam_regions index; 0 is 0xF0000 (64KiB), 1..12 are "
                                               "0xC0000 + 16KiB * (i - 1)")
    mode: Optional[Literal[layout.PAM_MODES]] = Field(
        None, description="pc/q35: the PAM attribute, DRAM disabled (the ROMs show through), read-only, write-only, "
                          "read-write")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.enabled is None) == (self.segment is None) or (self.segment is None) != (self.mode is None):
            given = [k for k in ("enabled", "segment", "mode") if getattr(self, k) is not None]
            raise PydanticCustomError("pam", "a pam action is enabled (machine.type none), or segment and mode "
                                      "(pc, q35)", {"got": ", ".join(given) or "none",
                                                    "allowed": "enabled, or segment and mode"})
        return self

    @model_serializer(mode="wrap")
    def _given_keys(self, handler):
        """Only the keys of the form used, so a ``none`` machine's action dumps as it always did."""
        return {k: v for k, v in handler(self).items() if v is not None}


class Pciexbar(_Model):
    """q35: the firmware writes the MCH's PCIEXBAR (``mch_write_config`` -> ``mch_update_pciexbar``):
    MMCONFIG (``pcie-mmcfg-mmio``) leaves its old place and, when enabled, appears at ``base``."""

    enabled: bool = Field(description="PCIEXBAREN: MMCONFIG mapped (true) or not")
    base: Size = Field(layout.PCIEXBAR_DEFAULT, description="guest-physical address, a multiple of length below "
                                                              "64GiB (MCH_HOST_BRIDGE_PCIEXBAR_ADMSK); SeaBIOS and "
                                                              "OVMF use QEMU's default 0xB0000000")
    length: Size = Field(layout.PCIE_MMCFG_SIZE_MAX, description="256MiB, 128MiB or 64MiB (PCIEXBAR's LENGTH field)")

    @field_validator("length")
    @classmethod
    def _encodable_length(cls, value: int):
        """PCIEXBAR's LENGTH field (``mch_update_pciexbar``) encodes three lengths."""
        if value not in layout.PCIEXBAR_LENGTHS:
            raise PydanticCustomError("pciexbar", "PCIEXBAR encodes an MMCONFIG length of 256MiB, 128MiB or 64MiB",
                                      {"got": units.format_size(value), "allowed": "256MiB, 128MiB, 64MiB"})
        return value

    def base_error(self) -> Optional[tuple[str, str, str]]:
        """(message, got, allowed) when ``base`` is not what the register can hold: ``mch_update_pciexbar`` masks
        the address by the length's ADMSK (bits 26..35). The scenario reports it at timeline.N.pciexbar.base."""
        if self.base % self.length or self.base + self.length > layout.PCIEXBAR_ADDR_LIMIT:
            return ("PCIEXBAR holds a base aligned to the length, below 64GiB", f"{self.base:#x}",
                    f"a multiple of {units.format_size(self.length)} below 64GiB")
        return None
        return self


class Ioeventfd(_Model):
    """``virtio_bus_set_host_notifier``: start (or stop) a virtio device's queue-notify ioeventfds."""

    device: int = Field(ge=0, strict=True, description="index in machine.devices")
    enabled: bool = True


class CalcDirtyRate(_Model):
    """QMP ``calc-dirty-rate``: measure the guest's dirty rate (``migration/dirtyrate.c``), during a migration too."""

    calc_time: int = Field(description="measurement time in calc_time_unit (50 ms .. 60 s)")
    calc_time_unit: Literal["second", "millisecond"] = "second"
    sample_pages: Optional[int] = Field(None, description="samples per GiB, page-sampling only (128 .. 16384; "
                                                          "default 512)")
    mode: Literal["page-sampling", "dirty-bitmap", "dirty-ring", "x-sampled-wp", "x-wss-curve"] = Field(
        "page-sampling", description="QEMU's three modes, or dirtysim's estimators x-sampled-wp, x-wss-curve")
    x_sample_shift: Optional[int] = Field(None, description="x- modes: write-protect one page in 2^shift (0 .. 6; "
                                                            "default 6)")

    def config(self, scenario: "Scenario"):
        """``qmp_calc_dirty_rate``'s checks (``DirtyRateError`` with QEMU's message)."""
        from ..dirtyrate.config import DirtyRateConfig, tracking_flags

        return DirtyRateConfig.from_qmp(self.calc_time, self.calc_time_unit, self.sample_pages, self.mode,
                                        sample_shift=self.x_sample_shift, **tracking_flags(scenario))


def _annotated(field):
    """A field's type with its units parser and bounds, for its optional twin."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


SetParameters = create_model(
    "SetParameters", __base__=MigrationParameters,
    __doc__="QMP ``migrate-set-parameters`` during the run: only the parameters given change.",
    **{name: (Optional[_annotated(f)], Field(None, description=f.description))
       for name, f in MigrationParameters.model_fields.items()})


def parameter_changes(params: "SetParameters") -> dict:
    """The parameters a migrate-set-parameters gives (by field name), and their values."""
    return {name: getattr(params, name) for name in sorted(params.model_fields_set) if getattr(params, name) is not None}


class MigrateCancel(_Model):
    """QMP ``migrate-cancel``: the migration stops (status cancelled), the guest runs on at the source."""


class MigrateStartPostcopy(_Model):
    """QMP ``migrate-start-postcopy``: switch to postcopy at the migration thread's next iteration."""


TIMELINE_ACTIONS = ("hotplug", "unplug", "bar", "pam", "ioeventfd", "calc_dirty_rate", "set", "migrate_cancel",
                    "migrate_start_postcopy", "pciexbar")


class TimelineEntry(_Model):
    at: Duration
    hotplug: Optional[Hotplug] = None
    unplug: Optional[Unplug] = None
    bar: Optional[BarMap] = None
    pam: Optional[Pam] = None
    ioeventfd: Optional[Ioeventfd] = None
    calc_dirty_rate: Optional[CalcDirtyRate] = None
    set: Optional[SetParameters] = None
    migrate_cancel: Optional[MigrateCancel] = None
    migrate_start_postcopy: Optional[MigrateStartPostcopy] = None
    pciexbar: Optional[Pciexbar] = None

    @model_serializer(mode="wrap")
    def _pciexbar_when_given(self, handler):
        """``pciexbar`` appears only when given: other entries dump as they always did."""
        out = handler(self)
        if self.pciexbar is None:
            out.pop("pciexbar", None)
        return out

    @model_validator(mode="after")
    def _one_action(self):
        given = [k for k in TIMELINE_ACTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError("timeline", "a timeline entry needs exactly one action",
                                      {"allowed": f"one of {', '.join(TIMELINE_ACTIONS)}",
                                       "got": ", ".join(given) or "none"})
        return self

    @property
    def action(self) -> tuple[str, _Model]:
        return next((k, getattr(self, k)) for k in TIMELINE_ACTIONS if getattr(self, k) is not None)


class WhatIf(_Model):
    """Counterfactuals QEMU does not allow, to see what would happen."""

    hotplug_during_migration: bool = Field(
        False, description="QEMU refuses device_add/device_del while migrating (qdev_device_add_from_qdict)"
    )
    postcopy_skip_discard: bool = Field(
        False, description="WRONG on purpose: the switch sends no discard, so the destination keeps stale copies of "
                           "re-dirtied pages (the oracle must see the loss)")


class Scenario(_Model):
    """A whole scenario. Top-level keys starting with ``x-`` are ignored: a place for YAML anchors."""

    model_config = ConfigDict(json_schema_extra={"patternProperties": {"^x-": {}}})

    name: Optional[str] = Field(None, description="default: the file name without .yaml; names out/<name>")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="root of the run's numpy SeedSequence")
    machine: Machine
    dirty_tracking: DirtyTracking = DirtyTracking()
    costs: Costs = Costs()
    network: Network = Network()
    migration: Migration = Migration()
    engine: Engine = Engine()
    outputs: Outputs = Outputs()
    timeline: list[TimelineEntry] = Field(default_factory=list, description="memory-map actions at given times")
    what_if: WhatIf = WhatIf()

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, data):
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        return data

    @field_validator("name")
    @classmethod
    def _name_is_a_directory_name(cls, value: Optional[str]):
        """The name becomes the output directory ``out/<name>``: one plain path component."""
        if value is None:
            return value
        bad = next((c for c in value if c in "/\\" or ord(c) < 32 or c == "\x7f"), None)
        if not value or value in (".", "..") or bad is not None or len(value.encode()) > 100:
            raise PydanticCustomError(
                "name", "not usable as a directory name", {
                    "got": repr(value) if len(value) <= 60 else f"{len(value.encode())} bytes",
                    "allowed": "1 to 100 bytes, no / or \\ or control characters, not . or .."})
        return value

    @model_validator(mode="after")
    def _fits(self):
        """Cross-field rules, in file order: RAM, vCPUs, devices, tracking, timeline, then the run's cost."""
        self._ram_fits()
        self._board_fits()
        self._vcpus_fit()
        self._devices_fit()
        self._tcg_rules()
        self._migration_fits()
        self._timeline_fits()
        self._parameters_fit()
        self._work_fits()
        return self

    def _ram_fits(self) -> None:
        ram, dm = self.machine.memory.size, self.machine.device_memory
        if ram % (64 * PAGE_SIZE) or ram < (1 << 20) or ram > limits.MAX_RAM:
            raise fail(("machine", "memory", "size"), "RAM size must be at least 1MiB and a multiple of 256KiB",
                       units.format_size(ram), f"e.g. 512MiB, 16GiB; at most {units.format_size(limits.MAX_RAM)}")
        if dm % (64 * PAGE_SIZE) or ram + dm > limits.MAX_RAM:
            raise fail(("machine", "device_memory"), "the device-memory area must be a multiple of 256KiB and, "
                       "with RAM, within dirtysim's ceiling", units.format_size(dm),
                       f"a multiple of 256KiB, at most {units.format_size(limits.MAX_RAM - ram)}")

    def _board_fits(self) -> None:
        """pc/q35 (``board.pc``): the split falls on a 2 MiB run (workloads reach RAM in 2 MiB runs through the
        aliases), vhost buffers lie in one RAM range the guest sees, and PAM actions name a segment; ``none``
        keeps its one shadow ROM."""
        m, run = self.machine, 512 * PAGE_SIZE
        pams = [(i, e.pam) for i, e in enumerate(self.timeline) if e.pam is not None]
        for i, entry in enumerate(self.timeline):
            if entry.pciexbar is not None and m.type != "q35":
                raise fail(("timeline", i, "pciexbar"), "PCIEXBAR is the q35 host bridge's (MMCONFIG)",
                           f"machine.type {m.type}", "machine.type q35")
            if entry.pciexbar is not None and entry.pciexbar.base_error():
                raise fail(("timeline", i, "pciexbar", "base"), *entry.pciexbar.base_error())
        if m.type == "none":
            if m.max_ram_below_4g:
                raise fail(("machine", "max_ram_below_4g"), "only the pc and q35 boards split RAM",
                           units.format_size(m.max_ram_below_4g), "0, or machine.type pc or q35")
            if m.smm != "auto":
                raise fail(("machine", "smm"), "only the pc and q35 boards have SMM (machine.type none has no "
                           "SMRAM)", m.smm, "auto, or machine.type pc or q35 with on, off or auto")
            for i, pam in pams:
                if pam.segment is not None:
                    raise fail(("timeline", i, "pam"), "machine.type none has one shadow ROM, no PAM segments",
                               f"segment {pam.segment}", "enabled: true or false (or machine.type pc or q35)")
            return
        for key in ("memory", "max_ram_below_4g"):
            value = m.memory.size if key == "memory" else m.max_ram_below_4g
            if value % run:
                raise fail(("machine", key) + (("size",) if key == "memory" else ()),
                           f"machine.type {m.type}: dirtysim maps RAM to the board in 2MiB runs",
                           units.format_size(value), "a multiple of 2MiB")
        ranges = m.ram_ranges()
        for i, ((offset, size), dev) in enumerate(zip(self.device_buffers(), m.devices)):
            if dev.kind not in VHOST_KINDS:
                continue
            inside = any(start <= offset and offset + size <= start + length for _, length, start in ranges)
            hidden = offset < 1 << 20 and offset + size > layout.SMRAM_C_BASE  # the VGA window and the ROMs
            if not inside or hidden:
                split = ranges[0][1]
                allowed = f"within 0 .. 640KiB or 1MiB .. {units.format_size(split)}" + (
                    f", or {units.format_size(split)} .. {units.format_size(m.memory.size)}" if len(ranges) > 1
                    else "") + " of the backend"
                raise fail(("machine", "devices", i, "buffer_offset"), f"machine.type {m.type}: a vhost device's "
                           "buffers lie in one RAM range the board shows (ram-below-4g or ram-above-4g) and "
                           "outside 0xA0000-0xFFFFF", f"{units.format_size(offset)} + {units.format_size(size)}",
                           allowed)
        for i, group in enumerate(m.vcpus):
            offset, size = self.working_set(group)
            if offset % run or size % run:
                raise fail(("machine", "vcpus", i, "workload", "offset"), f"machine.type {m.type}: a working set "
                           "reaches RAM through the board in 2MiB runs", f"{units.format_size(offset)} + "
                           f"{units.format_size(size)}", "offset and working_set multiples of 2MiB")
        for i, pam in pams:
            if pam.enabled is not None:
                raise fail(("timeline", i, "pam"), f"machine.type {m.type} has 13 PAM segments (pam_update)",
                           f"enabled: {str(pam.enabled).lower()}", f"segment: 0 .. {layout.PAM_REGIONS_COUNT - 1} "
                           f"and mode: {', '.join(layout.PAM_MODES)}")

    def _vcpus_fit(self) -> None:
        ram, total = self.machine.memory.size, 0
        self._resolve_visible_rates()
        for i, group in enumerate(self.machine.vcpus):
            total += group.count
            if total > limits.MAX_VCPUS:
                raise fail(("machine", "vcpus", i, "count"), "too many vCPUs across the groups", f"{total} so far",
                           f"at most {limits.MAX_VCPUS} in all (QEMU's q35 max_cpus)")
            w = group.workload
            ws = ram - w.offset if w.working_set is None else w.working_set
            loc = ("machine", "vcpus", i, "workload")
            if w.offset + ws > ram or ws < PAGE_SIZE:
                raise fail(loc + ("working_set",), "the working set does not fit in RAM",
                           f"offset {units.format_size(w.offset)} + {units.format_size(max(ws, 0))}",
                           f"offset + working_set <= {units.format_size(ram)}")
            if isinstance(w, HotsetWorkload) and (w.hot_offset + w.hot > ws or w.hot < PAGE_SIZE):
                raise fail(loc + ("hot",), "the hot region does not fit in the working set",
                           units.format_size(w.hot), f"4KiB <= hot, hot_offset + hot <= {units.format_size(ws)}")
            if w.data_only and (w.offset % (2 << 20) or ws % (2 << 20) or isinstance(w, TraceWorkload)):
                raise fail(loc + ("data_only",), "a data-only working set is whole 2MiB runs (and not a trace)",
                           f"offset {units.format_size(w.offset)}, working_set {units.format_size(ws)}",
                           "offset and working_set multiples of 2MiB")
            if w.data_only and self.machine.memory.zero_fraction == 1.0:
                raise fail(loc + ("data_only",), "all RAM is zero at boot (zero_fraction 1): no data to write",
                           "true", "data_only: false, or zero_fraction below 1")
            if isinstance(w, DatabaseWorkload) and (w.log_offset + w.log > ws or w.log < PAGE_SIZE):
                raise fail(loc + ("log",), "the log does not fit in the working set",
                           units.format_size(w.log), f"4KiB <= log, log_offset + log <= {units.format_size(ws)}")

    def _trace_fits(self, group: VcpuGroup, loc: tuple) -> None:
        """A trace is one vCPU's writes, read before the run so a bad file fails first; rate is not used."""
        from ..guest.trace import TraceError, load_trace

        w = group.workload
        if group.count != 1:
            raise fail(loc[:-1] + ("count",), "a trace is replayed by one vCPU", str(group.count), "count: 1")
        if w.rate or w.visible_rate:
            raise fail(loc + ("rate",), "a trace sets its own times; it takes no rate",
                       units.format_rate(w.rate or w.visible_rate), "no rate or visible_rate with kind: trace")
        try:
            times, pages = load_trace(w.file)
        except TraceError as exc:
            raise fail(loc + ("file",), str(exc), w.file, "a trace file (dirtysim/guest/trace.py)") from None
        top = int(pages.max()) * PAGE_SIZE
        if top >= self.machine.memory.size + self.machine.device_memory + (4 << 30):
            raise fail(loc + ("file",), f"the trace writes at {top:#x}, beyond any memory of this machine", w.file,
                       "addresses inside RAM (writes to holes are counted as unassigned)")
        self.machine.vcpus[self.machine.vcpus.index(group)] = group.model_copy(
            update={"workload": w.model_copy(update={"rate": 0})})

    def _resolve_visible_rates(self) -> None:
        """Each workload's write rate: given, or converted from ``visible_rate`` (``scenario.visible``)."""
        from . import visible

        for i, group in enumerate(self.machine.vcpus):
            w, loc = group.workload, ("machine", "vcpus", i, "workload")
            if isinstance(w, TraceWorkload):
                self._trace_fits(group, loc)
                continue
            if w.visible_rate is None:
                if w.rate is None:
                    raise fail(loc + ("rate",), "a workload needs a rate or a visible_rate", "neither",
                               "rate: 64MiB/s, or visible_rate: 32MiB/s")
                continue
            ram = self.machine.memory.size
            pages = (ram - w.offset if w.working_set is None else w.working_set) // PAGE_SIZE
            if isinstance(w, (ZipfWorkload, DatabaseWorkload)):
                raise fail(loc + ("visible_rate",), f"not converted for a {w.kind} workload (no closed form)",
                           units.format_rate(w.visible_rate), "rate for zipf and database workloads")
            if isinstance(w, SequentialWorkload):
                regions = None
            elif isinstance(w, HotsetWorkload):
                hot = min(w.hot // PAGE_SIZE, pages)
                regions = [(hot, w.hot_share), (pages - hot, 1.0 - w.hot_share)]
            else:
                regions = [(max(pages, 1), 1.0)]
            target = w.visible_rate / PAGE_SIZE
            try:
                r = target if regions is None else visible.write_rate(target, regions)
                if regions is None and target >= pages / visible.PERIOD_S:
                    raise ValueError(f"the sweep covers only {pages} pages")
            except ValueError as exc:
                raise fail(loc + ("visible_rate",), f"migration cannot see that rate from this workload: {exc}",
                           units.format_rate(w.visible_rate), "less than the working set per second") from None
            rate = round(r * PAGE_SIZE / group.count)  # the group's vCPUs share the working set and the rate
            if w.rate is not None and w.rate != rate:
                raise fail(loc + ("rate",), "give rate or visible_rate, not both (or the rate visible_rate gives)",
                           units.format_rate(w.rate), f"{units.format_rate(rate)}, what visible_rate converts to")
            self.machine.vcpus[i] = group.model_copy(update={"workload": w.model_copy(update={"rate": rate})})

    def _devices_fit(self) -> None:
        ram = self.machine.memory.size
        vgas = [i for i, dev in enumerate(self.machine.devices) if dev.kind == "VGA"]
        if len(vgas) > 1:  # vga_common_init: a global_vmstate VGA's RAMBlock is "vga.vram", one per machine
            raise fail(("machine", "devices", vgas[1], "kind"), "Only one global VGA device can be used at a time "
                       "(vga_common_init)", "VGA", "one VGA device")
        attached: dict[str, int] = {}
        for i, dev in enumerate(self.machine.devices):
            if dev.kind == "vfio-pci":  # vfio_legacy_attach_device: one host device, one vfio-pci
                name = dev.host_name(i)
                if name in attached:
                    raise fail(("machine", "devices", i, "host"), f"vfio {name}: device is already attached "
                               f"(as device {attached[name]})", name, "a host address no other vfio-pci device has")
                attached[name] = i
        for i, (dev, (offset, size)) in enumerate(zip(self.machine.devices, self.device_buffers())):
            loc = ("machine", "devices", i)
            if dev.kind in VHOST_KINDS and self.machine.accel != "kvm":
                raise fail(loc + ("kind",), f"device {i} ({dev.kind}): vhost devices need KVM (ioeventfds and "
                           "irqfds); TCG provides no eventfds", dev.kind, "accel: kvm, or a virtio-net/virtio-blk device")
            if dev.kind not in VHOST_KINDS:
                continue
            need = (dev.queues + -(-dev.unit // PAGE_SIZE)) * PAGE_SIZE
            if offset < 0 or offset + size > ram or offset % PAGE_SIZE or size % PAGE_SIZE or size < need:
                raise fail(loc + ("buffers",), f"device {i} ({dev.kind}): its buffers do not fit in RAM",
                           f"{units.format_size(size)} at {offset:#x}",
                           f"whole pages, at least {units.format_size(need)} ({dev.queues} used-ring page(s) + one "
                           f"{'packet' if isinstance(dev, VhostUserNet) else 'request'}), inside "
                           f"{units.format_size(ram)} of RAM")

    def _tcg_rules(self) -> None:
        """TCG has no KVM dirty log: no ring (KVM_CAP_DIRTY_LOG_RING), no KVM_CLEAR_DIRTY_LOG variants."""
        if self.machine.accel != "tcg":
            return
        dt = self.dirty_tracking
        if dt.mode == "ring":
            raise fail(("dirty_tracking", "mode"), "the dirty ring is a KVM feature (kvm_dirty_ring_init); TCG "
                       "guests dirty global dirty memory directly", "ring", "bitmap with accel: tcg")
        for key in ("kvm_clear", "send_order"):
            if getattr(dt, key) != DirtyTracking.model_fields[key].default:
                raise fail(("dirty_tracking", key), "a KVM_CLEAR_DIRTY_LOG variant, but accel is tcg",
                           getattr(dt, key), "the default with accel: tcg")

    def _migration_fits(self) -> None:
        """``migrate_caps_check`` and ``migrate_params_check``'s cross-parameter rules, with QEMU's messages."""
        mig = self.migration
        _throttle_range(mig, ("migration",))
        if mig.capabilities.xbzrle and mig.capabilities.multifd:
            raise fail(("migration", "capabilities", "xbzrle"), "Multifd is not compatible with xbzrle "
                       "(migrate_caps_check)", "true, with multifd: true", "one of the two")
        if mig.capabilities.dirty_limit:
            loc = ("migration", "capabilities", "dirty_limit")
            if mig.capabilities.auto_converge:
                raise fail(loc, "dirty-limit conflicts with auto-converge either of then available currently "
                           "(migrate_caps_check)", "true, with auto-converge: true", "one of the two")
            if self.machine.accel != "kvm" or self.dirty_tracking.mode != "ring":
                raise fail(loc, "dirty-limit requires KVM with accelerator property 'dirty-ring-size' set "
                           "(migrate_caps_check)", f"accel {self.machine.accel}, dirty_tracking.mode "
                           f"{self.dirty_tracking.mode}", "accel: kvm with dirty_tracking.mode: ring")
        self._postcopy_fits()

    def _postcopy_fits(self) -> None:
        """``migrate_caps_check``'s postcopy rules with QEMU's messages, and what dirtysim does not model yet."""
        from .postcopy import postcopy_refusal

        refusal = postcopy_refusal(self)
        if refusal is not None:
            raise fail(*refusal)

    def _parameters_fit(self) -> None:
        """``migrate_params_test_apply`` + ``migrate_params_check``: each migrate-set-parameters, applied in time
        order onto the parameters in force, must leave max-cpu-throttle at or above cpu-throttle-initial."""
        params = self.migration
        for i, entry in sorted(enumerate(self.timeline), key=lambda item: item[1].at):
            if entry.set is not None:
                params = params.model_copy(update=parameter_changes(entry.set))
                _throttle_range(params, ("timeline", i, "set"))

    def _timeline_fits(self) -> None:
        ndev, plugged, dm = len(self.machine.devices), {}, self.machine.device_memory
        end = self.migration.start_at + self.migration.timeout
        for i, entry in enumerate(self.timeline):
            kind, act = entry.action
            loc = ("timeline", i, kind)
            if entry.at > end:
                raise fail(("timeline", i, "at"), "after the end of the run", units.format_duration(entry.at),
                           f"at most migration.start_at + migration.timeout = {units.format_duration(end)}")
            if kind in ("bar", "ioeventfd") and act.device >= ndev:
                raise fail(loc + ("device",), "no such device", str(act.device),
                           f"0 .. {ndev - 1} (machine.devices)" if ndev else "none: machine.devices is empty")
            if kind == "bar":
                self._bar_fits(act, loc)
            if kind == "ioeventfd" and self.machine.devices[act.device].kind in ("vfio-pci", "VGA"):
                kind_ = self.machine.devices[act.device].kind
                raise fail(loc + ("device",), f"device {act.device} ({kind_}) has no virtio queues",
                           str(act.device), "a virtio or vhost device")
            if kind == "hotplug" and act.id in plugged:
                raise fail(loc + ("id",), "a DIMM with this id is already plugged (qdev_set_id: Duplicate device ID)",
                           act.id, f"an id other than {', '.join(plugged)}")
            if kind == "hotplug":
                if act.size % (64 * PAGE_SIZE) or act.size == 0:
                    raise fail(loc + ("size",), "a DIMM size must be a multiple of 256KiB",
                               units.format_size(act.size), "e.g. 1GiB")
                plugged[act.id] = act.size
                if sum(plugged.values()) > dm:
                    raise fail(loc + ("size",), "the DIMMs do not fit in machine.device_memory",
                               units.format_size(sum(plugged.values())), f"at most {units.format_size(dm)} plugged at once")
            if kind == "calc_dirty_rate":
                from ..dirtyrate.config import DirtyRateError

                try:
                    act.config(self)
                except DirtyRateError as exc:
                    raise fail(loc, f"calc-dirty-rate refuses it: {exc}",
                               f"{act.mode}, {act.calc_time} {act.calc_time_unit}",
                               "what qmp_calc_dirty_rate accepts") from None
            if kind == "set":
                if not act.model_fields_set:
                    raise fail(loc, "migrate-set-parameters needs at least one parameter", "none",
                               ", ".join(MigrationParameters.model_fields))
            if kind == "unplug" and plugged.pop(act.id, None) is None:
                raise fail(loc + ("id",), "no DIMM with this id is plugged at that point", act.id,
                           ", ".join(plugged) or "none")

    def _work_fits(self) -> None:
        """Refuse a run whose simulation steps or page writes would exceed dirtysim's budgets.

        The guest runs until the timeout at most; the switchover then sends the device state and up
        to a downtime's worth of pages with the guest stopped, stepped every 100 ms of simulated time.
        """
        mig, eng = self.migration, self.engine
        horizon = mig.start_at + mig.timeout
        switchover = self.machine.device_state * 10**9 // self.network.bandwidth + mig.downtime_limit
        horizon += self.costs.worst_sync_ns(self.machine.memory.size + self.machine.device_memory)  # an overrun
        backends = [d for d in self.machine.devices if d.kind in VHOST_KINDS]
        n = limits.steps(horizon, mig.timeout, eng.quantum, eng.send_quantum, 1 + len(backends),
                         self.timer_periods(), len(self.timeline)) + switchover // limits.BUFFER_DELAY_NS
        if n > limits.MAX_STEPS:
            slow_link = switchover > horizon
            raise fail(("network", "bandwidth") if slow_link else ("engine", "quantum"),
                       "the run would take too many simulation steps",
                       f"about {n:.2e} for {horizon / 1e9:.0f}s of run and {switchover / 1e9:.0f}s of switchover",
                       f"at most {limits.MAX_STEPS:.0e}: " + ("a faster link or less machine.device_state" if slow_link
                       else "a longer quantum/send_quantum or a shorter migration.timeout"))
        per_s = sum(g.count * g.peak_rate for g in self.machine.vcpus) / PAGE_SIZE
        per_s += sum(d.rate / d.unit * -(-d.unit // PAGE_SIZE) for d in backends)
        if per_s * eng.quantum / 1e9 > limits.MAX_WRITES_PER_QUANTUM:
            raise fail(("engine", "quantum"), "too many page writes in one quantum",
                       f"about {per_s * eng.quantum / 1e9:.2e} per {units.format_duration(eng.quantum)}",
                       f"at most {limits.MAX_WRITES_PER_QUANTUM}: a shorter quantum or lower rates")
        if per_s * horizon / 1e9 > limits.MAX_WRITES:
            raise fail(("migration", "timeout"), "the run would make too many page writes",
                       f"about {per_s * horizon / 1e9:.2e} in {horizon / 1e9:.0f}s",
                       f"at most {limits.MAX_WRITES:.0e}: lower rates or a shorter migration.timeout")

    def timer_periods(self) -> list[int]:
        """The shortest ns between wake-ups of each periodic thread of the run (for the step budget)."""
        timers = [self.outputs.guest_sample]
        if self.dirty_tracking.mode == "ring":
            timers.append(self.dirty_tracking.reaper_period)
        if self.migration.capabilities.auto_converge:  # the throttle ticks every 10 ms / (1 - p) at the fastest
            timers.append(10**7)
        if self.migration.capabilities.dirty_limit:  # dirtyrate-stat: x-vcpu-dirty-limit-period, 1 ms at the least
            timers.append(10**6)
        return timers

    def to_file(self) -> dict:
        """The resolved scenario as a scenario file would say it: sizes, rates and durations with units."""
        return self.model_dump(mode="json", context={"units": True})

    def device_memory_base(self) -> int:
        """The DIMM area starts above 4 GiB and above RAM, 1 GiB aligned (``layout.device_memory_base``)."""
        m = self.machine
        return layout.device_memory_base(m.type, m.memory.size, m.max_ram_below_4g)

    def _bar_fits(self, act: "BarMap", loc: tuple) -> None:
        dev = self.machine.devices[act.device]
        bar = dev.bar
        if act.rom:
            bar = VGA_ROM_SIZE if dev.kind == "VGA" else getattr(dev, "rom", 0)
            if not bar:
                raise fail(loc + ("rom",), f"device {act.device} ({dev.kind}) has no option ROM", "true",
                           f"false, a VGA device (its {units.format_size(VGA_ROM_SIZE)} vga.rom) or a vfio-pci "
                           "device with a rom size")
        taken = [(gpa, size) for gpa, size, _ in self.machine.ram_ranges()]
        taken.append((self.device_memory_base(), self.machine.device_memory))
        if self.machine.type != "none":  # below 1 MiB and pc.bios are the board's
            taken += [(0, layout.MIB), ((1 << 32) - layout.BIOS_SIZE, layout.BIOS_SIZE)]
        if act.addr % bar:
            raise fail(loc + ("addr",), f"device {act.device} ({dev.kind}): a BAR address must be aligned to the "
                       "BAR size (PCI BARs are naturally aligned)", f"{act.addr:#x}",
                       f"a multiple of {units.format_size(bar)}")
        holds_ram = dev.kind == "VGA" or (dev.kind == "vfio-pci" and dev.mmap and not act.rom)  # map_bar's regions
        if holds_ram and self.machine.type != "none" and act.addr < layout.HPET_BASE + layout.HPET_LEN \
                and layout.HPET_BASE < act.addr + bar:
            raise fail(loc + ("addr",), f"device {act.device} ({dev.kind}): a BAR over the board's 1KiB hpet window "
                       "would split its RAM off page boundaries (QEMU pads such a section to pages, "
                       "kvm_align_section; dirtysim does not)", f"{act.addr:#x}",
                       f"a multiple of {units.format_size(bar)} that leaves out "
                       f"{layout.HPET_BASE:#x} .. {layout.HPET_BASE + layout.HPET_LEN - 1:#x}")
        if act.addr + bar > MAX_PHYS_ADDR or any(lo < act.addr + bar and act.addr < lo + n for lo, n in taken if n):
            raise fail(loc + ("addr",), f"device {act.device} ({dev.kind}): a BAR must lie outside RAM and the DIMM "
                       "area, below 2**52 (dirtysim keeps memslots 256 KiB aligned, so it does not split RAM "
                       "around BARs)", f"{act.addr:#x}",
                       f"a multiple of {units.format_size(bar)} at or above "
                       f"{units.format_size(max(lo + n for lo, n in taken if n))}")

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
