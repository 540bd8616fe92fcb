"""The simulated host + guest, built the way QEMU builds a pc machine, in QEMU's order.

Accelerator init registers its listeners first (KVM: ``kvm-memory`` on memory,
``kvm-io`` on I/O; TCG: a ``tcg`` listener on each CPU's ``cpu-memory-N`` and
``cpu-smm-N``). Then the board maps RAM, and devices register theirs: ``vhost``
per vhost device, ``device-memory`` for the DIMM area, ``virtio`` per virtio
device, ``vfio`` per assigned device. The oracle lives here too.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import simpy

from .accel.cost import CostMeter
from .accel.kvm import KvmDirtyLog, KvmMemoryListener, KvmRingMemoryListener
from .accel.kvm_io import KvmIoListener
from .accel.tcg import TcgDirtyMemory, TcgListener
from .accel.vfio import VfioListener
from .accel.vhost import VhostListener, VhostLog
from .accel.virtio import DeviceMemoryListener, VirtioListener
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
from .scenario.schema import PAGE_SIZE, VHOST_KINDS, Scenario, TraceWorkload

SYSTEM_MEMORY_SIZE = 1 << 52  # the "system" container spans the guest-physical space
IO_SPACE_SIZE = 1 << 16  # "io": x86 port I/O
ZERO_GRANULE_PAGES = 512  # zero memory comes in 2 MiB runs (free guest memory is page-block sized)
PAM_BASE, PAM_SIZE = 0xC0000, 0x40000  # the shadow-ROM window below 1 MiB
GIB = 1 << 30


class Machine:
    """RAM, memory API, accelerator, devices, vCPUs, and the page oracle."""

    def __init__(self, env: simpy.Environment, scenario: Scenario, recorder: Recorder, seeds: np.random.SeedSequence):
        self.env, self.recorder, self.scenario = env, recorder, scenario
        m, dt, costs = scenario.machine, scenario.dirty_tracking, scenario.costs
        nvcpus = sum(g.count for g in m.vcpus)
        self.seeds = seeds  # later streams (a dirty-rate measurement) spawn from it without disturbing these
        layout_seed, *vcpu_seeds = seeds.spawn(1 + nvcpus)
        self.ram_list = RAMList()
        self.memory = MemorySystem(recorder, tcg_enabled=m.accel == "tcg")
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
                           writer, self.guest_map, scenario.engine.quantum, costs.write_fault, recorder)
        data_only = {v: self._data_runs(g) for v, g in enumerate(groups) if g.workload.data_only}
        if data_only:
            self.guest.set_data_runs(data_only)
        self.traces = [TraceReplayer(*load_trace(g.workload.file), self.guest, v)
                       for v, g in enumerate(groups) if isinstance(g.workload, TraceWorkload)]
        if self.kvm is not None:
            self._ring_full_exit = costs.ring_full_exit
            self.guest.on_ring_full = self._ring_full
            self.kvm.on_ring_full = lambda v: self.guest.stall(v, self._ring_full(v))  # a trace's exits
            self.kvm_listener.on_inhibit = self.guest.stall_inhibit
        self.dirtylimit: Optional[DirtyLimit] = None  # system/dirtylimit.c, with a dirty ring
        if self.kvm is not None and self.kvm.ring:
            self.dirtylimit = DirtyLimit(env, self, recorder, dt.ring_size)
        self.sampler = GuestSampler(env, self.guest, recorder, scenario.outputs.guest_sample)
        self.devices: list[dict] = []
        self.backends: list[VhostUserBackend] = []
        self._devices(scenario)
        self.dimms: dict[str, tuple] = {}
        # Only scenarios that toggle PAM get pc.rom, so the others keep exactly one RAMBlock.
        self.pam_rom = self._map_pam_rom() if any(e.pam for e in scenario.timeline) else None

    # -- accelerators ----------------------------------------------------------------------------------
    def _kvm_init(self, dt, costs, nvcpus: int) -> None:
        """``kvm_init``: ``kvm_memory_listener_register`` (kvm-memory) and the ``kvm-io`` listener."""
        self.kvm = KvmDirtyLog(self.ram_list, dt, nvcpus)
        cls = KvmRingMemoryListener if self.kvm.ring else KvmMemoryListener
        self.kvm_listener = cls(self.kvm, self.memory, dt, costs, self.meter)
        self.memory.memory_listener_register(self.kvm_listener, self.as_memory)
        self.kvm_io = KvmIoListener()
        self.memory.memory_listener_register(self.kvm_io, self.as_io)
        self.kvm_listener.on_loss_window = self.audit
        self.trackers.append(self.kvm_listener)

    def _tcg_init(self, nvcpus: int) -> None:
        """``cpu_address_space_init``: cpu-memory-N over system memory, cpu-smm-N over SMRAM + memory."""
        self.tcg_listeners = []
        for cpu in range(nvcpus):
            cpu_as = self.memory.address_space_init(self.system_memory, f"cpu-memory-{cpu}")
            smm_root = memory_region_init(f"smram-as-root-{cpu}", SYSTEM_MEMORY_SIZE)
            smm_root.add_subregion(0, memory_region_init_alias(f"mem-smm-{cpu}", self.system_memory, 0,
                                                               SYSTEM_MEMORY_SIZE))
            smm_as = self.memory.address_space_init(smm_root, f"cpu-smm-{cpu}")
            if cpu == 0:
                self.tcg_memory = TcgDirtyMemory(self.ram_list, self.memory, cpu_as)
            for asp in (cpu_as, smm_as):
                refresh = self.tcg_memory.refresh if asp is cpu_as and cpu == 0 else None
                listener = TcgListener(cpu, refresh)
                self.memory.memory_listener_register(listener, asp)
                self.tcg_listeners.append(listener)

    # -- RAM and devices -------------------------------------------------------------------------------
    def _data_runs(self, group) -> np.ndarray:
        """First guest page of each 2 MiB run of a group's working set that held data at boot (RAM is at GPA 0)."""
        offset, size = self.scenario.working_set(group)
        nonzero = self.ram_list.nonzero[self.ram.words]
        first, end = offset // PAGE_SIZE // ZERO_GRANULE_PAGES, (offset + size) // PAGE_SIZE // ZERO_GRANULE_PAGES
        per = ZERO_GRANULE_PAGES // 64  # words per run: a run is all data or all zero
        data = nonzero[first * per:end * per:per] != 0
        return (first + np.flatnonzero(data)) * ZERO_GRANULE_PAGES

    def _map_ram(self, scenario: Scenario, rng: np.random.Generator) -> RAMBlock:
        mem = scenario.machine.memory
        pages = mem.size // PAGE_SIZE
        block = self._ram_block_add("pc.ram", mem.size, _initial_contents(pages, mem.zero_fraction, rng))
        block.mr = memory_region_init_ram("pc.ram", mem.size, block)
        self.memory.memory_region_add_subregion(self.system_memory, 0, block.mr)
        return block

    def _devices(self, scenario: Scenario) -> None:
        """vhost listeners (device init), device-memory, virtio listeners, then vfio: QEMU's registration order."""
        dt, m = scenario.dirty_tracking, scenario.machine
        logs: dict[str, VhostLog] = {}
        for i, (spec, (offset, _)) in enumerate(zip(m.devices, scenario.device_buffers())):
            name = f"{spec.kind}{i}"
            dev = {"name": name, "spec": spec, "bar": memory_region_init_io(f"{name}-bar", spec.bar), "fds": []}
            self.devices.append(dev)
            if spec.kind in VHOST_KINDS:
                log = logs.setdefault("vhost-kernel" if spec.kind == "vhost-net" else "vhost-user", VhostLog())
                used = np.arange(offset // PAGE_SIZE, offset // PAGE_SIZE + spec.queues, dtype=np.int64)
                listener = VhostListener(name, log, self.ram_list, self.memory, self.env, self.sleep, scenario.costs,
                                         self.meter, dt.vhost_harvest, dt.vhost_harvest_gap, used)
                listener.on_loss_window = self.audit
                self.memory.memory_listener_register(listener, self.as_memory)
                self.trackers.append(listener)
                self.backends.append(VhostUserBackend(name, spec, offset, listener, self.ram_list, self.guest_map,
                                                      scenario.engine.quantum))
        self.device_memory = None
        if m.device_memory:
            base = scenario.device_memory_base()
            self.device_memory = memory_region_init("device-memory", m.device_memory)
            self.memory.memory_region_add_subregion(self.system_memory, base, self.device_memory)
            self.as_device_memory = self.memory.address_space_init(self.device_memory, "device-memory")
            self.device_memory_listener = DeviceMemoryListener()
            self.memory.memory_listener_register(self.device_memory_listener, self.as_device_memory)
        for dev in self.devices:
            if dev["spec"].kind != "vfio-pci":
                dev["virtio"] = VirtioListener(dev["name"])
                self.memory.memory_listener_register(dev["virtio"], self.as_memory)
        for dev in self.devices:
            if dev["spec"].kind == "vfio-pci":
                dev["vfio"] = VfioListener(self.recorder, dev["name"])
                self.memory.memory_listener_register(dev["vfio"], self.as_memory)

    def _ram_block_add(self, idstr: str, size: int, contents: Optional[np.ndarray] = None) -> RAMBlock:
        block = self.ram_list.ram_block_add(idstr, size, contents)
        self.recorder.emit(ev.RamBlockAdded, idstr=idstr, offset=block.offset, size=size)
        return block

    # -- memory-map actions (the timeline) -------------------------------------------------------------
    def hotplug_dimm(self, dimm_id: str, size: int) -> RAMBlock:
        """``pc_dimm_plug``: a new RAMBlock (all dirty, ``ram_block_add``) mapped in the device-memory area."""
        offset = self._free_dimm_offset(size)
        block = self._ram_block_add(dimm_id, size)
        block.mr = memory_region_init_ram(dimm_id, size, block)
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

    def map_bar(self, index: int, addr: int) -> None:
        """The guest programs a BAR: map it, or move it (``memory_region_set_address``)."""
        bar = self.devices[index]["bar"]
        if bar.container is None:
            self.memory.memory_region_add_subregion(self.system_memory, addr, bar, priority=1)
        else:
            self.memory.memory_region_set_address(bar, addr)

    def _map_pam_rom(self) -> MemoryRegion:
        """``pc.rom``, created with the board (like QEMU's), mapped disabled over 0xC0000-0xFFFFF."""
        block = self._ram_block_add("pc.rom", PAM_SIZE, ~np.zeros(PAM_SIZE // PAGE_SIZE // 64, dtype=np.uint64))
        block.mr = memory_region_init_rom("pc.rom", PAM_SIZE, block)
        block.mr.enabled = False
        self.memory.memory_region_add_subregion(self.system_memory, PAM_BASE, block.mr, priority=1)
        return block.mr

    def set_pam(self, enabled: bool) -> None:
        """A read-only shadow of the BIOS over low RAM (i440fx PAM): the RAM range splits around it."""
        self.memory.memory_region_set_enabled(self.pam_rom, enabled)

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
        """``kvm_dirty_ring_reaper_thread``: reap every ring once per period (1 s), unless dirty-limit is in service."""
        while self.guest.running:
            yield from self.sleep(self.reaper_period)
            if not self.dirtylimit.in_service:
                listener.reap("reaper")

    def _ring_full(self, vcpu: int) -> int:
        """``kvm_cpu_exec`` on KVM_EXIT_DIRTY_RING_FULL: the exit's stall in ns; a dirty-limit sleep is charged apart.

        While dirty-limit is in service only this vCPU's ring is reaped (reaping
        all would spare the others their sleep), then ``dirtylimit_vcpu_execute``.
        """
        limiting = self.dirtylimit.in_service
        stall = self.kvm_listener.reap("ring-full", vcpu, only=limiting) + self._ring_full_exit
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

