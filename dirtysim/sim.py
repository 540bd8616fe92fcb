"""Simulation: scenario -> machine -> run -> Result, written even when the run fails.

Like desmod's environment, one ``Simulation`` owns the configuration, the RNG
streams (one ``SeedSequence`` per run, one ``Generator`` per stream) and the
recorder. Like py-pde, a Python control loop advances SimPy in steps (driving
the progress bar) while numba kernels do the bulk work inside each step; kernel
compile time is measured apart from run time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import simpy

from . import __version__
from .accel.cost import CostMeter
from .accel.kvm import KvmDirtyLog, KvmMemoryListener, KvmRingMemoryListener
from .accel.vhost import VhostListener, VhostLog
from .dirty import kernels
from .dirty.ramlist import RAMList, grown
from .events import schema as ev
from .events.log import Recorder, fingerprint
from .guest.vcpu import Guest, Vcpu
from .guest.vhost_backend import VhostUserBackend
from .guest.workload import make_workload
from .memory.address_space import MemorySystem
from .memory.region import MemoryRegion
from .migration.precopy import PrecopyMigration
from .scenario.schema import PAGE_SIZE, Scenario

SYSTEM_MEMORY_SIZE = 1 << 52  # the "system" container spans the guest-physical space
ZERO_GRANULE_PAGES = 512  # zero memory comes in 2 MiB runs (free guest memory is page-block sized)
PROGRESS_STEP_NS = 100 * 10**6


class Machine:
    """The simulated host+guest: RAM, memory API, KVM, vhost devices, vCPUs, and the oracle."""

    def __init__(self, env: simpy.Environment, scenario: Scenario, recorder: Recorder, seeds: np.random.SeedSequence):
        self.env, self.recorder = env, recorder
        nvcpus = sum(g.count for g in scenario.machine.vcpus)
        layout_seed, *vcpu_seeds = seeds.spawn(1 + nvcpus)
        mem, dt, costs = scenario.machine.memory, scenario.dirty_tracking, scenario.costs
        self.ram_list = RAMList()
        self.memory = MemorySystem(recorder)
        self.meter = CostMeter()
        self.device_state = scenario.machine.device_state
        self.wrong_steps = dt.kvm_clear != "mask" or dt.send_order != "clear-before-send" or (
            dt.vhost_harvest != "exchange" and bool(scenario.machine.devices))
        self._lost_seen = 0
        self.reaper_period = dt.reaper_period
        self.kvm = KvmDirtyLog(self.ram_list, dt, nvcpus)
        self.system_memory = MemoryRegion("system", SYSTEM_MEMORY_SIZE)
        self.address_space_memory = self.memory.address_space_init(self.system_memory, "memory")
        # Accelerator init registers KVM's listener before the board creates RAM (kvm_memory_listener_register).
        listener_cls = KvmRingMemoryListener if self.kvm.ring else KvmMemoryListener
        self.kvm_listener = listener_cls(self.kvm, self.memory, dt, costs, self.meter)
        self.memory.memory_listener_register(self.kvm_listener, self.address_space_memory)
        self.listeners = [self.kvm_listener]
        pages = mem.size // PAGE_SIZE
        block = self.ram_list.ram_block_add("pc.ram", mem.size, _initial_contents(pages, mem.zero_fraction,
                                                                                  np.random.default_rng(layout_seed)))
        block.mr = MemoryRegion("pc.ram", mem.size, ram_block=block)
        self.memory.transaction_begin()
        self.system_memory.add_subregion(0, block.mr)
        self.memory.update_pending = True
        self.memory.transaction_commit()
        vcpus, k = [], 0
        for group in scenario.machine.vcpus:
            for _ in range(group.count):
                vcpus.append(Vcpu(k, make_workload(scenario, group), np.random.default_rng(vcpu_seeds[k]),
                                  group.workload.rate))
                k += 1
        self.guest = Guest(env, vcpus, self.kvm, scenario.engine.quantum, costs.write_fault)
        self.kvm.on_ring_full = lambda v: vcpus[v].stall(self.kvm_listener.reap("ring-full", v) + costs.ring_full_exit)
        self.backends = self._vhost_devices(scenario)

    def _vhost_devices(self, scenario: Scenario) -> list[VhostUserBackend]:
        """Each vhost-user device registers its listener (after KVM, equal priority) and gets a backend actor."""
        log, backends = VhostLog(), []
        dt = scenario.dirty_tracking
        for i, (spec, (offset, _)) in enumerate(zip(scenario.machine.devices, scenario.device_buffers())):
            name = f"{spec.kind}{i}"
            used = np.arange(offset // PAGE_SIZE, offset // PAGE_SIZE + spec.queues, dtype=np.int64)
            listener = VhostListener(name, log, self.ram_list, self.memory, self.env, scenario.costs, self.meter,
                                     dt.vhost_harvest, dt.vhost_harvest_gap, used)
            listener.on_loss_window = self.audit
            self.memory.memory_listener_register(listener, self.address_space_memory)
            self.listeners.append(listener)
            backends.append(VhostUserBackend(self.env, name, spec, offset, listener, self.ram_list.src_gen,
                                             scenario.engine.quantum))
        return backends

    def start(self) -> None:
        """Start the actors: vCPUs, device backends, and the kvm-reaper thread in ring mode."""
        self.env.process(self.guest.run())
        for backend in self.backends:
            self.env.process(backend.run())
        if self.kvm.ring:
            self.env.process(self._reaper(self.kvm_listener))

    def _reaper(self, listener: KvmRingMemoryListener):
        """``kvm_dirty_ring_reaper_thread``: reap every ring once per period (1 s)."""
        period = self.reaper_period
        while self.guest.running:
            yield self.env.timeout(period)
            listener.reap("reaper")

    def stop_vm(self) -> None:
        """``vm_stop``: vCPUs out of the guest and vhost devices stopped (``vhost_dev_stop``)."""
        self.guest.stop()
        for backend in self.backends:
            backend.stop()

    def oracle(self) -> tuple[int, int]:
        """(stale pages, stale pages that no dirty layer remembers)."""
        rl = self.ram_list
        words = rl.dirty_memory.shape[0]
        bmap = np.zeros(words, dtype=np.uint64)
        for block in rl.blocks:
            if block.bmap is not None:
                bmap[block.words] = block.bmap
        layers = [rl.dirty_memory, bmap] + [grown(x, words)[:words] for lst in self.listeners
                                            for x in lst.pending_dirty()]
        stale, lost = kernels.count_stale(rl.src_gen, rl.dst_gen, np.stack(layers), 0, rl.total_pages)
        return int(stale), int(lost)

    def audit(self, at: str) -> None:
        """After a deliberately wrong step: record an OracleCheck when more pages became lost."""
        if not self.wrong_steps:
            return
        stale, lost = self.oracle()
        if lost > self._lost_seen:
            self._lost_seen = lost
            self.recorder.emit(ev.OracleCheck, at=at, stale_pages=stale, lost_pages=lost)


def _initial_contents(pages: int, zero_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Source page generations at boot: 0 for zero pages (in 2 MiB runs), 1 for pages with data."""
    granules = -(-pages // ZERO_GRANULE_PAGES)
    data = (rng.random(granules) >= zero_fraction).astype(np.uint32)
    return np.repeat(data, ZERO_GRANULE_PAGES)[:pages]


@dataclass
class Result:
    scenario: Scenario
    events: list = field(default_factory=list)
    stop_reason: str = "error"
    error: Optional[str] = None
    wall_time_s: float = 0.0
    compile_time_s: float = 0.0
    sim_time_ns: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.events)

    @property
    def sim_speed(self) -> float:
        return self.sim_time_ns / 1e9 / self.wall_time_s if self.wall_time_s > 0 else 0.0


def warm_up_kernels() -> float:
    """Compile (or load from cache) every kernel on tiny inputs; returns the seconds it took."""
    t0 = time.perf_counter()
    w = np.zeros(2, dtype=np.uint64)
    g = np.zeros(128, dtype=np.uint32)
    i64 = np.zeros(1, dtype=np.int64)
    kernels.sync_xchg(w, w.copy(), 0, 2)
    kernels.or_into(w, w.copy(), 0, 2)
    kernels.xchg_into(w, w.copy(), 0, 2)
    kernels.clear_by_mask(w, w.copy(), 0, 2)
    kernels.count_set(w, 0, 2)
    kernels.find_next_bit(w, 0, 128)
    kernels.apply_writes(i64, np.ones(1, dtype=np.int64), i64, np.ones(1, dtype=np.int64) * 128, i64,
                         np.ones(1, dtype=np.bool_), w, g, np.zeros(1, dtype=np.int64))
    kernels.send_pages(w, np.zeros(1, dtype=np.uint8), g, g.copy(), 0, 128, 1 << 40, 1 << 40, 18, True, True, 0,
                       np.zeros(6, dtype=np.int64))
    kernels.count_stale(g, g, np.stack([w]), 0, 128)
    f = np.zeros(1)
    kernels.map_writes(f, np.ones(1, dtype=np.int64), i64, i64 + 128, i64, i64, f, i64.copy())
    kernels.clear_all(w, w.copy(), 0, 2)
    rings, idx = np.zeros((1, 4), dtype=np.int64), np.zeros(1, dtype=np.int64)
    kernels.apply_writes_ring(i64, np.ones(1, dtype=np.int64), 0, i64, i64 + 128, i64, np.ones(1, dtype=np.bool_), w,
                              g, rings, idx, idx.copy(), 2, idx.copy(), np.zeros(3, dtype=np.int64))
    kernels.reap_rings(rings, idx, idx.copy(), w, w.copy(), idx.copy())
    kernels.mark_ring_entries(rings, idx, idx.copy(), w)
    kernels.backend_writes(i64, i64, i64 + 128, i64, g, w, True)
    kernels.harvest_log(w, w.copy(), 0, 2, 0, True, w.copy())
    return time.perf_counter() - t0


def run(scenario: Scenario, progress: Optional[bool] = None) -> Result:
    """Simulate one migration. Never raises for simulation errors: they land in ``Result.error``."""
    result = Result(scenario)
    result.compile_time_s = warm_up_kernels()
    env = simpy.Environment()
    recorder = Recorder(lambda: env.now)
    result.events = recorder.events
    t0 = time.perf_counter()
    try:
        recorder.emit(ev.RunStarted, name=scenario.name or "", seed=scenario.seed, version=__version__,
                      schema_version=ev.SCHEMA_VERSION, ram_bytes=scenario.machine.memory.size, page_size=PAGE_SIZE,
                      scenario=scenario.model_dump(mode="json"))
        machine = Machine(env, scenario, recorder, np.random.SeedSequence(scenario.seed))
        migration = PrecopyMigration(env, scenario, machine, recorder)
        machine.start()
        done = env.process(migration.run())
        _advance(env, done, scenario, progress)
        result.stop_reason = migration.stop_reason or "error"
        recorder.emit(ev.RunFinished, stop_reason=result.stop_reason)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result record
        result.error = f"{type(exc).__name__}: {exc}"
        result.stop_reason = "error"
        recorder.emit(ev.RunFinished, stop_reason="error", error=result.error)
    result.wall_time_s = time.perf_counter() - t0
    result.sim_time_ns = env.now
    return result


def _advance(env: simpy.Environment, done: simpy.Process, scenario: Scenario, progress: Optional[bool]) -> None:
    """Step SimPy until the migration process ends, updating a progress bar in simulated seconds."""
    show = sys.stderr.isatty() if progress is None else progress
    horizon = scenario.migration.start_at + scenario.migration.timeout
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=round(horizon / 1e9, 1), unit="sim-s", file=sys.stderr, leave=False,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim-s [{elapsed}<{remaining}]")
    while not done.triggered:
        env.run(until=simpy.AnyOf(env, [done, env.timeout(PROGRESS_STEP_NS)]))
        if bar is not None:
            bar.update(round(env.now / 1e9, 1) - bar.n)
    if bar is not None:
        bar.close()
    if not done.ok:
        raise done.value
