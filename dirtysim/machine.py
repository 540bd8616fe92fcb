"""The simulated host + guest, built the way QEMU builds a pc machine, in QEMU's order.

Accelerator init registers its listeners first (KVM: ``kvm-memory`` on memory,
``kvm-io`` on I/O; TCG: a ``tcg`` listener on each CPU's ``cpu-memory-N`` and
``cpu-smm-N``). Then the board maps RAM and firmware, and the devices are
realized (``Machine._devices``): ``vhost`` per vhost network backend,
``device-memory`` for the DIMM area, then each device in command-line order
with its listeners (``vhost``, ``virtio``, ``vfio``), BARs and option ROM. On a
board the machine-done notifiers follow (KVM with SMM: ``kvm-smram`` on
KVM-SMRAM; TCG: each CPU's SMM view gets /machine/smram), then the system
reset. The oracle lives here too.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import simpy

from .accel.cost import CostMeter
from .accel.kvm import KvmDirtyLog, KvmMemoryListener, KvmRingMemoryListener
from .accel.kvm_io import KvmIoListener
from .accel.kvm_smram import register_smram_listener
from .accel.tcg import TcgDirtyMemory, TcgListener
from .accel.vfio import VfioListener
from .accel.vhost import VhostListener, VhostLog
from .accel.virtio import DeviceMemoryListener, VirtioListener
from .board.devices import vfio_bar_register, vga_common_init
from .board.pc import PcBoard
from .bql import Bql
from .dirty import kernels
from .dirty.ramlist import RAMBlock, RAMList
from .events import schema as ev
from .events.log import Recorder
from .guest.lazy import LazyActor
from .guest.sampler import GuestSampler
from .guest.trace import TraceReplayer, load_trace
from .guest.vcpu import Guest
from .guest.vhost_backend import VhostUserBackend
from .guest.workload import make_workload
from .memory.address_space import MemorySystem
from .migration.dirtylimit import DirtyLimit
from .oracle.guest_map import GuestMap
from .memory.region import (MemoryRegion, memory_region_init, memory_region_init_alias, memory_region_init_io,
                            memory_region_init_ram, memory_region_init_rom)
from .scenario.schema import PAGE_SIZE, VGA_ROM_SIZE, Pam, Scenario, TraceWorkload

SYSTEM_MEMORY_SIZE = 1 << 52  # the "system" container spans the guest-physical space
CPU_AS_ROOT_SIZE = 1 << 64  # tcg_cpu_realizefn: memory_region_init(cpu_as_root, ..., "memory", ~0ull)
IO_SPACE_SIZE = 1 << 16  # "io": x86 port I/O
ZERO_GRANULE_PAGES = 512  # zero memory comes in 2 MiB runs (free guest memory is page-block sized)
PAM_BASE, PAM_SIZE = 0xC0000, 0x40000  # the shadow-ROM window below 1 MiB
GIB = 1 << 30


class Machine:
    """RAM, memory API, accelerator, devices, vCPUs, and the page oracle."""

    def __init__(self, env: simpy.Environment, scenario: Scenario, recorder: Recorder, seeds: np.random.SeedSequence,
                 on_listener_call: Optional[Callable[[ev.ListenerCall, bool], None]] = None):
        """``on_listener_call``: told of every listener hook call and whether the listener acted on it
        (``MemoryListener.acts_on``), from the first registration on; ``dirtysim listeners`` filters with it."""
        self.env, self.recorder, self.scenario = env, recorder, scenario
        m, dt, costs = scenario.machine, scenario.dirty_tracking, scenario.costs
        nvcpus = sum(g.count for g in m.vcpus)
        self.seeds = seeds  # later streams (a dirty-rate measurement) spawn from it without disturbing these
        layout_seed, *vcpu_seeds = seeds.spawn(1 + nvcpus)
        self.ram_list = RAMList()
        self.memory = MemorySystem(recorder, tcg_enabled=m.accel == "tcg")
        self.memory.on_listener_call = on_listener_call
        self.meter = CostMeter()
        self.device_state = m.device_state
        self.reaper_period = dt.reaper_period
        self._lost_seen = 0
        self.block_listeners: list[Callable[[str, RAMBlock], None]] = []  # ram_block_notify_add / _remove
        self.system_memory = memory_region_init("system", SYSTEM_MEMORY_SIZE)
        self.guest_map = GuestMap(self.system_memory)  # the oracle's own view of guest RAM
        self.memory.topology_hooks.append(self.guest_map.refresh)
        self.as_memory = self.memory.address_space_init(self.system_memory, "memory")
        self.as_io = self.memory.address_space_init(memory_region_init_io("io", IO_SPACE_SIZE), "I/O")
        self.trackers: list = []  # listeners that hold dirty bits for a later sync
        self.bql = Bql()
        self.kvm: Optional[KvmDirtyLog] = None
        if m.accel == "kvm":
            self._kvm_init(dt, costs, nvcpus)
        else:
            self._tcg_init(nvcpus)
        self.ram = self._map_ram(scenario, np.random.default_rng(layout_seed))
        groups = [g for g in m.vcpus for _ in range(g.count)]
        writer = self.kvm if self.kvm is not None else self.tcg_memory
        self.guest = Guest([make_workload(scenario, g) for g in groups],
                           [np.random.default_rng(seed) for seed in vcpu_seeds], [g.workload.rate for g in groups],
                           writer, self.guest_map, scenario.engine.quantum, costs.write_fault, recorder,
                           pml_exit_ns=costs.pml_full_exit if self.kvm is not None and dt.pml else None,
                           bql=self.bql, mmio=([g.mmio_exits for g in groups], costs.mmio_exit))
        runs = {v: self._runs(g) for v, g in enumerate(groups) if g.workload.data_only or self.board is not None}
        if runs:
            self.guest.set_data_runs(runs)
        self.traces = [TraceReplayer(*load_trace(g.workload.file), self.guest, v)
                       for v, g in enumerate(groups) if isinstance(g.workload, TraceWorkload)]
        if self.kvm is not None:
            self._ring_full_exit = costs.ring_full_exit
            self.guest.on_ring_full = self._ring_full
            self.kvm.on_ring_full = lambda v: self.guest.stall(v, self._ring_full(v))  # a trace's exits
            self.kvm_listener.on_inhibit = self._stall_inhibit
        self.dirtylimit: Optional[DirtyLimit] = None  # system/dirtylimit.c, with a dirty ring
        if self.kvm is not None and self.kvm.ring:
            self.dirtylimit = DirtyLimit(env, self, recorder, dt.ring_size)
        self.sampler = GuestSampler(env, self.guest, recorder, scenario.outputs.guest_sample)
        self.devices: list[dict] = []
        self.vfio_container: Optional[VfioListener] = None  # the vfio container of address_space_memory
        self.backends: list[VhostUserBackend] = []
        self._devices(scenario)
        self.dimms: dict[str, tuple] = {}
        # Without a board only scenarios that toggle PAM get pc.rom, so the others keep exactly one RAMBlock.
        toggles = any(e.pam for e in scenario.timeline)
        self.pam_rom = self._map_pam_rom() if self.board is None and toggles else None
        if self.board is not None:
            self._machine_done(dt, costs, nvcpus)
            self.board.reset()  # qdev_machine_creation_done: the notifiers, then qemu_system_reset

    # -- accelerators ----------------------------------------------------------------------------------
    def _kvm_init(self, dt, costs, nvcpus: int) -> None:
        """``kvm_init``: ``kvm_memory_listener_register`` (kvm-memory) and the ``kvm-io`` listener."""
        self.kvm = KvmDirtyLog(self.ram_list, dt, nvcpus, self.scenario.machine.memory.backing)
        cls = KvmRingMemoryListener if self.kvm.ring else KvmMemoryListener
        self.kvm_listener = cls(self.kvm, self.memory, dt, costs, self.meter)
        self.memory.memory_listener_register(self.kvm_listener, self.as_memory)
        self.kvm_io = KvmIoListener()
        self.memory.memory_listener_register(self.kvm_io, self.as_io)
        self.kvm_listener.on_loss_window = self.audit
        self.trackers.append(self.kvm_listener)

    def _tcg_init(self, nvcpus: int) -> None:
        """``tcg_cpu_realizefn``: cpu-memory-N over system memory; cpu-smm-N over its own ``memory`` root holding
        a ``memory`` alias of system memory (priority 0), where machine-done adds SMRAM (``_machine_done``)."""
        self.tcg_listeners = []
        self.tcg_smm_roots: list[MemoryRegion] = []
        for cpu in range(nvcpus):
            cpu_as = self.memory.address_space_init(self.system_memory, f"cpu-memory-{cpu}")
            smm_root = memory_region_init("memory", CPU_AS_ROOT_SIZE)
            smm_root.add_subregion(0, memory_region_init_alias("memory", self.system_memory, 0, CPU_AS_ROOT_SIZE))
            self.tcg_smm_roots.append(smm_root)
            smm_as = self.memory.address_space_init(smm_root, f"cpu-smm-{cpu}")
            if cpu == 0:
                self.tcg_memory = TcgDirtyMemory(self.ram_list, self.memory, cpu_as)
            for asp in (cpu_as, smm_as):
                refresh = self.tcg_memory.refresh if asp is cpu_as and cpu == 0 else None
                listener = TcgListener(cpu, refresh)
                self.memory.memory_listener_register(listener, asp)
                self.tcg_listeners.append(listener)

    def _machine_done(self, dt, costs, nvcpus: int) -> None:
        """The board's machine-done notifiers, last registered first (``notifier_list_add`` inserts at the head).

        TCG (``tcg_cpu_machine_done``, CPU N-1 first): an enabled ``smram``
        alias of /machine/smram (4 GiB) in each CPU's SMM root at priority 1,
        whenever the board has SMRAM (the i440fx builds it even with smm off).
        KVM with SMM (``register_smram_listener``, added first by
        ``kvm_arch_init``, so run last): the ``kvm-smram`` listener
        (``accel.kvm_smram``).
        """
        smram = self.board.smram
        if self.kvm is None:
            for root in reversed(self.tcg_smm_roots) if smram is not None else ():
                alias = memory_region_init_alias("smram", smram, 0, smram.size)
                self.memory.memory_region_add_subregion(root, 0, alias, priority=1)
        elif self.scenario.machine.smm_enabled:
            self.as_smram, self.smram_listener = register_smram_listener(
                self.memory, self.system_memory, smram, self.kvm_listener, nvcpus,
                self.scenario.machine.memory.backing, dt, costs, self.meter)
            self.smram_listener.on_inhibit = self._stall_inhibit
            self.smram_listener.on_loss_window = self.audit
            self.trackers.append(self.smram_listener)

    # -- RAM and devices -------------------------------------------------------------------------------
    def _runs(self, group) -> np.ndarray:
        """First guest page of each 2 MiB run of a group's working set (data-only: of those that held data at boot).

        Workloads address RAM by offset in the backend; the board's aliases
        (``ram-below-4g``, ``ram-above-4g``) put each run at its guest-physical
        address, which is the offset itself without a board.
        """
        offset, size = self.scenario.working_set(group)
        first, end = offset // PAGE_SIZE // ZERO_GRANULE_PAGES, (offset + size) // PAGE_SIZE // ZERO_GRANULE_PAGES
        runs = np.arange(first, end, dtype=np.int64)
        if group.workload.data_only:
            nonzero = self.ram_list.nonzero[self.ram.words]
            per = ZERO_GRANULE_PAGES // 64  # words per run: a run is all data or all zero
            runs = first + np.flatnonzero(nonzero[first * per:end * per:per] != 0)
        pages = runs * ZERO_GRANULE_PAGES
        gpa = np.empty_like(pages)
        for base, length, start in self.scenario.machine.ram_ranges():
            inside = (pages >= start // PAGE_SIZE) & (pages < (start + length) // PAGE_SIZE)
            gpa[inside] = pages[inside] + (base - start) // PAGE_SIZE
        return gpa

    def _stall_inhibit(self, ns: int) -> None:
        """``accel_ioctl_inhibit_begin`` holds the running vCPUs; before they start (machine creation and the
        system reset, e.g. q35's ``mch_reset`` swapping RAM for the ROMs under PAM) none is held."""
        if self.guest.started:
            self.guest.stall_inhibit(ns)

    def _gpa_of(self, offset: int) -> int:
        """Guest-physical address of a byte of the RAM backend (``ram-below-4g`` / ``ram-above-4g``; itself
        without a board). The schema keeps device buffers inside one range (``Scenario._board_fits``)."""
        for base, length, start in self.scenario.machine.ram_ranges():
            if start <= offset < start + length:
                return base + offset - start
        raise ValueError(f"offset {offset:#x} is not in the RAM backend")

    def _map_ram(self, scenario: Scenario, rng: np.random.Generator) -> RAMBlock:
        """The RAM backend (created before the machine, as ``-object memory-backend-ram``), then the board.

        Without a board (``machine.type: none``) the backend is mapped alone at
        guest-physical 0; pc and q35 alias it around their holes (``board.pc``).
        """
        m = scenario.machine
        pages = m.memory.size // PAGE_SIZE
        block = self._ram(m.ram_idstr, m.memory.size, _initial_contents(pages, m.memory.zero_fraction, rng)).ram_block
        self.board: Optional[PcBoard] = None
        if m.type == "none":
            self.memory.memory_region_add_subregion(self.system_memory, 0, block.mr)
        else:
            self.board = PcBoard(self.memory, self.system_memory, m.type, block.mr, m.max_ram_below_4g, self._rom,
                                 smm=m.smm_enabled, kvm_irqchip=m.accel == "kvm")
        return block

    def _rom(self, idstr: str, size: int) -> MemoryRegion:
        """A ROM and its RAMBlock holding data (firmware, option ROMs), migrated like RAM.

        [departure: a PCI option ROM's RAMBlock is ``<guest PCI address>/<name>`` in QEMU
        (``vmstate_register_ram`` with the device as owner); dirtysim gives devices no guest PCI address
        and names it ``<name>``.]

        dirtysim's RAMBlocks are whole 64-page words, so a smaller ROM's block
        (pc.rom: 128 KiB) is padded to 256 KiB [deviation: QEMU's is 128 KiB;
        migration sends the 32 padding pages once].
        """
        words = -(-size // PAGE_SIZE // 64)
        block = self._ram_block_add(idstr, words * 64 * PAGE_SIZE, ~np.zeros(words, dtype=np.uint64))
        block.mr = memory_region_init_rom(idstr, size, block)
        return block.mr

    def _devices(self, scenario: Scenario) -> None:
        """The devices in QEMU's order: network backends, the DIMM area, then each ``-device`` realized in turn.

        ``-netdev`` backends (vhost-net, vhost-user-net) run ``vhost_dev_init`` when they are created
        (``net_init_clients``), before any device. Then ``device-memory`` (``machine_memory_devices_init``).
        Then, in command-line order, each device's realize: a vhost-user-blk runs ``vhost_dev_init``
        (its ``vhost`` listener), every virtio device registers ``virtio`` (``virtio_device_realize``), a
        vfio-pci device attaches to its container, whose ``vfio`` listener is registered and replayed
        the current map (``vfio_device_attach``), then registers its BAR (``vfio_bars_register``); a VGA
        creates its VRAM (``vga_common_init``), and ``pci_qdev_realize`` then loads its option ROM
        (``pci_add_option_rom``). BARs are registered, not mapped: the guest maps them later.

        [departures: QEMU creates netdevs and the DIMM area before the board (``pc_memory_init`` builds
        device-memory between the RAM aliases and the firmware); dirtysim does both after the board, so
        those listeners get the board's sections in their registration replay rather than as region_add
        calls of the board's transactions: the same sections, delivered differently.]
        """
        dt, m = scenario.dirty_tracking, scenario.machine
        logs: dict[str, VhostLog] = {}
        buffers = scenario.device_buffers()
        self.devices = [{"name": f"{spec.kind}{i}", "spec": spec, "fds": []} for i, spec in enumerate(m.devices)]
        for dev in self.devices:
            if dev["spec"].kind in ("vhost-net", "vhost-user-net"):
                self._vhost_dev_init(dev, buffers, logs, scenario)
        self.device_memory = None
        if m.device_memory:
            base = scenario.device_memory_base()
            self.device_memory = memory_region_init("device-memory", m.device_memory)
            self.memory.memory_region_add_subregion(self.system_memory, base, self.device_memory)
            self.as_device_memory = self.memory.address_space_init(self.device_memory, "device-memory")
            self.device_memory_listener = DeviceMemoryListener()
            self.memory.memory_listener_register(self.device_memory_listener, self.as_device_memory)
        for i, dev in enumerate(self.devices):
            kind = dev["spec"].kind
            if kind == "vfio-pci":
                dev["vfio"] = self._vfio_attach(dev["name"])
                if dev["spec"].rom:  # vfio_pci_size_rom, before vfio_bars_register: MMIO, reads trap to the device
                    dev["rom"] = memory_region_init_io(f"vfio[{dev['spec'].host_name(i)}].rom", dev["spec"].rom)
            dev["bar"] = self._bar(i, dev["spec"])
            if kind == "vhost-user-blk":
                self._vhost_dev_init(dev, buffers, logs, scenario)
            if kind not in ("vfio-pci", "VGA"):
                dev["virtio"] = VirtioListener(dev["name"])
                self.memory.memory_listener_register(dev["virtio"], self.as_memory)
            if kind == "VGA":
                dev["rom"] = self._rom("vga.rom", VGA_ROM_SIZE)

    def _vfio_attach(self, device: str) -> VfioListener:
        """``vfio_device_attach``: the first device creates the container of ``address_space_memory`` and
        registers its ``vfio`` listener (``vfio_listener_register``, replayed the current map); later devices
        join that container (``vfio_connect_container`` / ``iommufd_cdev_attach`` reuse one of the address
        space's containers), so one listener maps DMA for all of them. [departure: QEMU opens a new
        container when a group cannot share the existing one's IOMMU; dirtysim's always can.]
        """
        if self.vfio_container is None:
            self.vfio_container = VfioListener(self.recorder, device)
            self.memory.memory_listener_register(self.vfio_container, self.as_memory)
        else:
            self.vfio_container.devices.append(device)
        return self.vfio_container

    def _vhost_dev_init(self, dev: dict, buffers: list[tuple[int, int]], logs: dict[str, VhostLog],
                        scenario: Scenario) -> None:
        """``vhost_dev_init``: the device's ``vhost`` listener (sharing its backend type's log), and its backend."""
        spec, name, dt = dev["spec"], dev["name"], scenario.dirty_tracking
        gpa = self._gpa_of(buffers[self.devices.index(dev)][0])  # the driver's buffers: where the board shows them
        log = logs.setdefault("vhost-kernel" if spec.kind == "vhost-net" else "vhost-user", VhostLog())
        used = np.arange(gpa // PAGE_SIZE, gpa // PAGE_SIZE + spec.queues, dtype=np.int64)
        listener = VhostListener(name, log, self.ram_list, self.memory, self.env, self.sleep, scenario.costs,
                                 self.meter, dt.vhost_harvest, dt.vhost_harvest_gap, used)
        listener.on_loss_window = self.audit
        self.memory.memory_listener_register(listener, self.as_memory)
        self.trackers.append(listener)
        self.backends.append(VhostUserBackend(name, spec, gpa, listener, self.ram_list, self.guest_map,
                                              scenario.engine.quantum))

    def _bar(self, index: int, spec) -> MemoryRegion:
        """The region a device registers as the BAR a timeline ``bar`` action maps (``pci_register_bar``).

        vfio-pci: ``board.devices.vfio_bar_register``; VGA: its VRAM (``board.devices.vga_common_init``);
        virtio and vhost devices: one MMIO region ``<name>-bar`` [dirtysim's name; QEMU's virtio-pci BAR 4
        is ``virtio-pci`` with the ``virtio-pci-common-*``, ``-notify-*`` ... capability regions inside].
        """
        if spec.kind == "vfio-pci":
            return vfio_bar_register(self.memory, spec.host_name(index), 0, spec.bar, spec.mmap)
        if spec.kind == "VGA":
            return vga_common_init(self.memory, spec.bar, self._ram)
        return memory_region_init_io(f"{spec.kind}{index}-bar", spec.bar)

    def _ram(self, idstr: str, size: int, contents: Optional[np.ndarray] = None) -> MemoryRegion:
        """``memory_region_init_ram``: a RAM region and its migratable RAMBlock (zero-filled without ``contents``)."""
        block = self._ram_block_add(idstr, size, contents)
        block.mr = memory_region_init_ram(idstr, size, block)
        return block.mr

    def _ram_block_add(self, idstr: str, size: int, contents: Optional[np.ndarray] = None) -> RAMBlock:
        block = self.ram_list.ram_block_add(idstr, size, contents)
        self.recorder.emit(ev.RamBlockAdded, idstr=idstr, offset=block.offset, size=size)
        return block

    # -- memory-map actions (the timeline) -------------------------------------------------------------
    def hotplug_dimm(self, dimm_id: str, size: int) -> RAMBlock:
        """``pc_dimm_plug``: a new RAMBlock (all dirty, ``ram_block_add``) mapped in the device-memory area."""
        offset = self._free_dimm_offset(size)
        block = self._ram(dimm_id, size).ram_block
        self.memory.memory_region_add_subregion(self.device_memory, offset, block.mr)
        self.dimms[dimm_id] = (block, offset)
        for notify in self.block_listeners:
            notify("add", block)
        return block

    def unplug_dimm(self, dimm_id: str) -> None:
        """``pc_dimm_unplug``: unmap (KVM collects the slot's dirty bits first), then free the RAMBlock."""
        block, _ = self.dimms.pop(dimm_id)
        self.memory.memory_region_del_subregion(self.device_memory, block.mr)
        for notify in self.block_listeners:
            notify("remove", block)
        self.ram_list.ram_block_remove(block)
        self.recorder.emit(ev.RamBlockRemoved, idstr=block.idstr)

    def _free_dimm_offset(self, size: int) -> int:
        """``memory_device_get_free_addr``: the lowest gap in the device-memory area that fits (first fit)."""
        used = sorted((off, blk.used_length) for blk, off in self.dimms.values())
        offset = 0
        for off, length in used:
            if offset + size <= off:
                break
            offset = max(offset, off + length)
        return offset

    def map_bar(self, index: int, addr: int, rom: bool = False) -> None:
        """The guest programs a BAR: map it, or move it (``memory_region_set_address``).

        On a board the BAR goes into ``pci`` (``pci_update_mappings``: priority 1 in the bus's address space).
        ``rom``: the expansion ROM BAR (``PCI_ROM_SLOT``). A VGA's, which ``pci_add_option_rom`` registered, is a
        read-only RAM region, so KVM maps it as a read-only memslot and vfio maps it read-only
        (``section->readonly``); a vfio device's (``vfio_pci_size_rom``) is MMIO, which both skip.
        [departure: the firmware's later disabling of the ROM BAR is not modelled;
        a mapped BAR stays mapped.]
        """
        bar = self.devices[index]["rom" if rom else "bar"]
        if bar.container is None:
            container = self.system_memory if self.board is None else self.board.pci
            self.memory.memory_region_add_subregion(container, addr, bar, priority=1)
        else:
            self.memory.memory_region_set_address(bar, addr)

    def _map_pam_rom(self) -> MemoryRegion:
        """``machine.type: none``: one ``pc.rom`` over 0xC0000-0xFFFFF, mapped disabled (a PAM in one piece)."""
        rom = self._rom("pc.rom", PAM_SIZE)
        rom.enabled = False
        self.memory.memory_region_add_subregion(self.system_memory, PAM_BASE, rom, priority=1)
        return rom

    def set_pam(self, act: Pam) -> str:
        """A timeline ``pam`` action; returns its target. pc/q35: ``pam_update`` of one segment;
        none: the one shadow ROM over low RAM, on or off, and the RAM range splits around it."""
        if act.segment is not None:
            self.board.pam_update(act.segment, act.mode)
            return f"pam_regions[{act.segment}]"
        self.memory.memory_region_set_enabled(self.pam_rom, act.enabled)
        return "pc.rom"

    def set_ioeventfds(self, index: int, enabled: bool) -> str:
        """``virtio_bus_set_host_notifier``: one ioeventfd per queue in the BAR's notify area (KVM only)."""
        if self.kvm is None:
            return "refused: ioeventfds need KVM (kvm_eventfds_enabled is false with TCG)"
        dev = self.devices[index]
        with self.memory.transaction():
            for q in range(getattr(dev["spec"], "queues", 1)):
                args = (dev["bar"], 4 * q, 2, True, q, f"{dev['name']}-q{q}")
                if enabled:
                    self.memory.memory_region_add_eventfd(*args)
                else:
                    self.memory.memory_region_del_eventfd(*args)
        return "done"

    # -- running -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the actors: vCPUs, device backends (lazy, from time 0), and the kvm-reaper thread in ring mode."""
        for actor in self.lazy_actors:
            actor.start()
        self.env.process(self.sampler.run(self.sleep))
        if self.kvm is not None and self.kvm.ring:
            self.env.process(self._reaper(self.kvm_listener))

    @property
    def lazy_actors(self) -> list[LazyActor]:
        return [self.guest, *self.backends, *self.traces]

    def sleep(self, ns: int):
        """A SimPy process waits ``ns``; on waking, the guest and the backends are brought up to now.

        Every process that reads or changes guest-visible state (the migration
        thread, the reaper, the timeline, vhost's delayed store) waits through
        this, so it sees exactly the quanta SimPy would have run before it.
        """
        snapshot = [actor.next_t for actor in self.lazy_actors]
        yield self.env.timeout(ns)
        now = self.env.now
        for actor, next_t in zip(self.lazy_actors, snapshot):
            actor.advance(now, next_t == now)

    def finish(self) -> None:
        """The simulation stops at ``now``: quanta starting now were scheduled before the stop and still run.

        The guest's last sample covers them (a run that ends between samples reports all its activity).
        """
        for actor in self.lazy_actors:
            actor.advance(self.env.now, True)
        self.sampler.sample()

    def _reaper(self, listener: KvmRingMemoryListener):
        """``kvm_dirty_ring_reaper_thread``: every period (1 s), unless dirty-limit is in service, take the BQL,
        reap every ring, release it; the next period starts after the reap."""
        while self.guest.running:
            yield from self.sleep(self.reaper_period)
            if self.dirtylimit.in_service:
                continue
            waited = yield from self.bql_lock()
            if not self.guest.running:  # the VM stopped while the reaper waited: the final sync reaps
                return
            cost = listener.reap("reaper", bql_wait_ns=waited)
            self.bql.hold(self.env.now, cost)
            if cost:
                yield from self.sleep(cost)

    def bql_lock(self):
        """A SimPy process takes the BQL now (``bql_lock``), waiting out the holds before it; the ns waited."""
        return (yield from self.bql.lock(lambda: self.env.now, self.sleep))

    def _ring_full(self, vcpu: int) -> int:
        """``kvm_cpu_exec`` on KVM_EXIT_DIRTY_RING_FULL: the exit's stall in ns; a dirty-limit sleep is charged apart.

        The vCPU takes the BQL to reap (waiting out a sync or another reap
        that holds it, charged as ``bql_wait_ns``) and holds it while reaping.
        While dirty-limit is in service only this vCPU's ring is reaped (reaping
        all would spare the others their sleep), then ``dirtylimit_vcpu_execute``.
        """
        limiting = self.dirtylimit.in_service
        t = self.guest.next_t  # the exit's quantum
        waited = self.bql.wait(t)
        reap = self.kvm_listener.reap("ring-full", vcpu, only=limiting, bql_wait_ns=waited)
        self.bql.hold(t, reap)
        self.guest.bql_wait(vcpu, waited)
        stall = reap + self._ring_full_exit
        if limiting:
            self.guest.sleep(vcpu, self.dirtylimit.vcpu_execute(vcpu), "dirtylimit_ns")
        return stall

    def stop_vm(self) -> None:
        """``vm_stop``: vCPUs out of the guest and vhost devices stopped (``vhost_dev_stop``)."""
        for actor in self.lazy_actors:
            actor.stop()

    # -- the oracle ----------------------------------------------------------------------------------------
    def oracle(self, layers: bool = True) -> tuple[int, int]:
        """(stale pages, stale pages that no dirty layer remembers).

        The layers are L2, every bmap and what listeners hold; ``layers=False``
        counts only what bmap holds (the pages the migration will still send).
        """
        rl = self.ram_list
        words = rl.dirty_memory.shape[0]
        # one word array for the union: no stack of layers at 1 TiB
        tracked = rl.dirty_memory.copy() if layers else np.zeros_like(rl.dirty_memory)
        for block in rl.blocks:
            if block.bmap is not None:
                tracked[block.words] |= block.bmap
        for layer in (x for t in self.trackers for x in t.pending_dirty()) if layers else ():
            n = min(words, layer.shape[0])
            kernels.or_into(tracked, layer, 0, n)
        stale, lost = kernels.count_stale(rl.stale, tracked[None, :], 0, words)
        return int(stale), int(lost)

    def audit(self, at: str) -> None:
        """After a deliberately wrong step: record an OracleCheck when more pages became lost."""
        stale, lost = self.oracle()
        if lost > self._lost_seen:
            self._lost_seen = lost
            self.recorder.emit(ev.OracleCheck, at=at, stale_pages=stale, lost_pages=lost)


def _initial_contents(pages: int, zero_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Oracle words of RAM at boot: zero pages come in 2 MiB runs, each run zero with ``zero_fraction``."""
    granules = -(-pages // ZERO_GRANULE_PAGES)
    data = rng.random(granules) >= zero_fraction
    words = np.where(data, ~np.uint64(0), np.uint64(0))
    return np.repeat(words, ZERO_GRANULE_PAGES // 64)[: pages // 64]

