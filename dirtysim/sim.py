"""Simulation: scenario -> machine -> run -> Result, written even when the run fails.

Like desmod's environment, one ``run`` owns the configuration, the RNG streams
(one ``SeedSequence`` per run, one ``Generator`` per stream: layout, each vCPU)
and the recorder. Like py-pde, a Python control loop advances SimPy in steps
(driving the progress bar) while numba kernels do the bulk work inside each
step; kernel compile time is measured apart from run time, and the run ends
with an explicit stop reason (completed, timeout, error, interrupted).
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import simpy

from . import __version__
from .dirty import destkernels, kernels, sendcost
from .events import schema as ev
from .events.log import Recorder, fingerprint
from .machine import Machine
from .migration.invariant import BrokenInvariant
from .migration.precopy import PrecopyMigration
from .scenario.schema import PAGE_SIZE, Scenario
from .timeline import run_timeline

if TYPE_CHECKING:
    from .dirtyrate.config import DirtyRateConfig

PROGRESS_STEP_NS = 100 * 10**6


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


COMPILE_NOTICE_S = 1.0  # loading every kernel from numba's cache takes about 0.3 s; compiling them about 15 s


def warm_up_kernels(notice: bool = False) -> float:
    """Compile (or load from cache) every kernel on tiny inputs; returns the seconds it took.

    ``notice``: say on stderr that the kernels are being compiled if it takes
    longer than a cache load would (the first run after an install), once.
    """
    timer = threading.Timer(COMPILE_NOTICE_S, lambda: print(
        "dirtysim: compiling the numba kernels (once after install; later runs load them from the cache)...",
        file=sys.stderr, flush=True))
    if notice:
        timer.start()
    try:
        return _warm_up()
    finally:
        timer.cancel()


def _warm_up() -> float:
    t0 = time.perf_counter()
    w = np.zeros(2, dtype=np.uint64)
    i64 = np.zeros(1, dtype=np.int64)
    one = np.ones(1, dtype=np.int64)
    kernels.sync_xchg(w, w.copy(), 0, 2)
    kernels.or_into(w, w.copy(), 0, 2)
    kernels.xchg_into(w, w.copy(), 0, 2)
    kernels.clear_by_mask(w, w.copy(), 0, 2)
    kernels.clear_all(w, w.copy(), 0, 2)
    kernels.count_set(w, 0, 2)
    kernels.count_nonzero_words(w, 0, 2)
    kernels.find_next_bit(w, 0, 128)
    slots = (i64, one * 128, i64, np.ones(1, dtype=np.bool_))
    gmap = np.array([[0], [128], [0]], dtype=np.int64)
    win = np.zeros((2, 2), dtype=np.uint64)
    kernels.apply_writes(i64, one, gmap, *slots, w, w.copy(), w.copy(), win, i64.copy())
    u8, out6 = np.zeros(1, dtype=np.uint8), np.zeros(6, dtype=np.int64)
    cv = np.ones(sendcost.CV_ROWS, dtype=np.int64)
    kernels.send_pages(w, u8, w.copy(), w.copy(), w.copy(), 0, 128, 1 << 40, 1 << 40, 18, True, True, 0, 4104, 9, cv,
                       1 << 40, out6)
    kernels.count_stale(w, np.stack([w]), 0, 2)
    f = np.zeros(1)
    kernels.map_writes(f, one, i64, i64 + 128, i64, i64, f, i64.copy())
    rings, idx = np.zeros((1, 4), dtype=np.int64), np.zeros(1, dtype=np.int64)
    kernels.apply_writes_ring(i64, one, 0, gmap, *slots, w, w.copy(), w.copy(), win, rings, idx, idx.copy(), 2,
                              idx.copy(), np.zeros(3, dtype=np.int64))
    kernels.reap_rings(rings, idx, idx.copy(), w, w.copy(), idx.copy())
    kernels.mark_ring_entries(rings, idx, idx.copy(), w)
    kernels.backend_writes(i64, i64, i64 + 128, gmap, w, w.copy(), win, w.copy(), True)
    kernels.harvest_log(w, w.copy(), 0, 2, 0, True, w.copy())
    vi = np.zeros((kernels.VI_ROWS, 1), dtype=np.int64)
    vi[kernels.VI_PAGES] = 128
    vi[kernels.VI_STOP] = 1 << 62
    guest = (10**6, 0, False, 0, vi, np.zeros((kernels.VF_ROWS, 1)), i64.copy(), np.zeros((1, 2)), i64.copy(),
             kernels.run_state(), np.zeros(2, dtype=np.int64), gmap, *slots, w, w.copy(), w.copy(), win)
    for ring in (False, True):
        kernels.run_vcpus(1, *guest, ring, rings, idx, idx.copy(), 2)
    kernels.run_backend(1, 1, 1, i64.copy(), i64.copy(), 1, 0, 1, 0, 1, i64, one * 128, gmap, w, w.copy(), win,
                        w.copy(), True)
    kernels.iterate_slices(np.zeros(7, dtype=np.int64), np.zeros((2, kernels.REC_COLS), dtype=np.int64), 0, 0, 1, 1,
                           0, 0, w, u8, w.copy(), w.copy(), w.copy(), 128, 18, True, out6, 4104, 9, cv, i64.copy(),
                           1 << 40, *guest)
    sendcost.send_partial(cv, i64.copy())
    dv = np.zeros((destkernels.DV_ROWS, 1), dtype=np.int64)
    destkernels.run_vcpus_dest(0, vi, guest[5], i64.copy(), np.zeros((1, 2)), gmap, w, w.copy(), dv,
                               np.zeros((3, 1), dtype=np.int64), np.zeros(2, dtype=np.int64))
    destkernels.place(w.copy(), w, 0, w, np.zeros(3, dtype=np.int64))
    destkernels.count_runs(w, 0, 2)
    return time.perf_counter() - t0


def run(scenario: Scenario, progress: Optional[bool] = None) -> Result:
    """Simulate one migration. Never raises for simulation errors: they land in ``Result.error``."""

    def migrate(env, machine, recorder):
        migration = PrecopyMigration(env, scenario, machine, recorder)
        machine.start()
        done = env.process(migration.run())
        if scenario.timeline:
            env.process(run_timeline(env, scenario, machine, migration, recorder))
        return done, lambda: migration.stop_reason

    horizon = scenario.migration.start_at + scenario.migration.timeout
    return _simulate(scenario, progress, migrate, horizon, run_deadline(scenario), "the migration thread")


def run_dirtyrate(scenario: Scenario, config: "DirtyRateConfig", start_ns: int,
                  progress: Optional[bool] = None) -> Result:
    """Run the scenario's guest without migrating and measure its dirty rate once, from ``start_ns``.

    As ``calc-dirty-rate`` on an idle-from-migration VM: the stop reason is
    ``measured``. The scenario's timeline is not played.
    """
    from .dirtyrate.thread import DirtyRateThread

    def measure(env, machine, recorder):
        thread = DirtyRateThread(env, scenario, machine, recorder)
        machine.start()

        def at_start():
            yield from machine.sleep(start_ns)
            yield from thread.calculate(config)

        return env.process(at_start()), lambda: thread.state

    horizon = start_ns + config.calc_time_ms * 10**6
    return _simulate(scenario, progress, measure, horizon, dirtyrate_deadline(scenario, horizon),
                     "the dirty-rate measurement")


def _simulate(scenario: Scenario, progress: Optional[bool], main, horizon_ns: int, deadline_ns: int,
              what: str) -> Result:
    """Run ``main(env, machine, recorder) -> (process, stop reason)`` to its end and record the run around it.

    ``horizon_ns``: where the progress bar ends; ``deadline_ns``: past it, ``what`` (the main process) is a
    broken invariant.
    """
    result = Result(scenario)
    result.compile_time_s = warm_up_kernels(notice=sys.stderr.isatty() if progress is None else progress)
    env = simpy.Environment()
    recorder = Recorder(lambda: env.now)
    result.events = recorder.events
    t0 = time.perf_counter()
    try:
        recorder.emit(ev.RunStarted, name=scenario.name or "", seed=scenario.seed, version=__version__,
                      schema_version=ev.SCHEMA_VERSION, ram_bytes=scenario.machine.memory.size, page_size=PAGE_SIZE,
                      scenario=scenario.model_dump(mode="json"))
        machine = Machine(env, scenario, recorder, np.random.SeedSequence(scenario.seed))
        done, stop_reason = main(env, machine, recorder)
        _advance(env, done, horizon_ns, deadline_ns, what, progress)
        machine.finish()
        result.stop_reason = stop_reason() or "error"
        recorder.emit(ev.RunFinished, stop_reason=result.stop_reason)
    except KeyboardInterrupt:  # SIGINT: what was simulated so far is the result, stop reason "interrupted"
        result.stop_reason = "interrupted"
        recorder.emit(ev.RunFinished, stop_reason="interrupted")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result record
        result.error = f"{type(exc).__name__}: {exc}"
        result.stop_reason = "error"
        recorder.emit(ev.RunFinished, stop_reason="error", error=result.error)
    result.wall_time_s = time.perf_counter() - t0
    result.sim_time_ns = env.now
    return result


def run_deadline(scenario: Scenario) -> int:
    """Simulated ns by which any migration has ended: the timeout, then one overrun sync and a stopped-guest
    pass sending every page and the device state twice over (``migration_completion`` cannot take longer)."""
    ram = scenario.machine.memory.size + scenario.machine.device_memory
    final_pass = 2 * (ram + scenario.machine.device_state) * 10**9 // scenario.network.bandwidth
    return (scenario.migration.start_at + scenario.migration.timeout + 2 * scenario.costs.worst_sync_ns(ram)
            + final_pass + 10**9)


def dirtyrate_deadline(scenario: Scenario, horizon: int) -> int:
    """Simulated ns by which a standalone measurement has ended: its window, two syncs' worth of ioctls and
    two hashing passes of the most samples QEMU allows (16384 per GiB)."""
    ram = scenario.machine.memory.size + scenario.machine.device_memory
    hashing = 2 * (ram // (1 << 30) + 1) * 16384 * scenario.costs.page_hash
    return horizon + 2 * scenario.costs.worst_sync_ns(ram) + hashing + 10**9


def _advance(env: simpy.Environment, done: simpy.Process, horizon: int, deadline: int, what: str,
             progress: Optional[bool]) -> None:
    """Step SimPy until the main process ends, updating a progress bar in simulated seconds up to ``horizon``.

    A main process still running at ``deadline`` waits on something that will never come (a broken
    invariant): the run stops with an error rather than stepping on forever.
    """
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=round(horizon / 1e9, 1), unit="sim-s", file=sys.stderr, leave=False,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim-s [{elapsed}<{remaining}]")
    while not done.triggered:
        if env.now > deadline:
            raise BrokenInvariant(f"{what} is still running at {env.now / 1e9:.3f} simulated s, past its end and "
                                  f"anything that may follow it (deadline {deadline / 1e9:.3f} s)")
        env.run(until=simpy.AnyOf(env, [done, env.timeout(PROGRESS_STEP_NS)]))
        if bar is not None:
            bar.update(round(env.now / 1e9, 1) - bar.n)
    if bar is not None:
        bar.close()
    if not done.ok:
        raise done.value
