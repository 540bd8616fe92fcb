"""The "mig/dirtyrate" thread (``get_dirtyrate_thread``): one measurement at a time, as a SimPy process.

States as QEMU's ``CalculatingState``: unstarted -> measuring -> measured. The
thread waits through ``Machine.sleep``, so the guest it measures is exactly as
far as simulated time. All three of QEMU's modes are built (``BUILT_MODES``).

Beside QEMU's answer, every measurement records the page oracle's truth over
its window and what it cost the guest (write-protect faults and their run time).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..dirty import kernels
from ..events import schema as ev
from ..memory.address_space import GLOBAL_DIRTY_DIRTY_RATE
from ..migration.dirtylimit import vcpu_dirty_rates
from .config import DirtyRateConfig
from .page_sampling import PAGES_PER_MIB_SHIFT, compare, record_samples, update_dirtyrate
from .sampled_wp import CHECKPOINTS, count_sampled, fit_uniform, sample_mask

NS_PER_MS = 10**6
BUILT_MODES = ("page-sampling", "dirty-bitmap", "dirty-ring", "x-sampled-wp", "x-wss-curve")


class DirtyRateThread:
    def __init__(self, env, scenario, machine, recorder):
        self.env, self.sc, self.m, self.rec = env, scenario, machine, recorder
        self.state = "unstarted"

    def calculate(self, config: DirtyRateConfig):
        """``get_dirtyrate_thread`` -> ``calculate_dirtyrate`` for ``config`` (a SimPy process body).

        Called right after a ``Machine.sleep``: the guest has run every quantum
        that started before now; one starting now runs after the thread (SimPy
        order), so it falls inside the window. A calc-time of T ms then spans
        exactly T quanta of 1 ms.
        """
        self._begin(config)
        yield from self._measure(config)

    def start(self, config: DirtyRateConfig):
        """``qmp_calc_dirty_rate`` from a running simulation: the thread starts now, beside everything else."""
        self._begin(config)
        return self.env.process(self._measure(config))

    def _begin(self, config: DirtyRateConfig) -> None:
        if self.state == "measuring":
            raise RuntimeError("the dirty rate is already being measured.")  # qmp_calc_dirty_rate
        self.state = "measuring"
        self.rec.emit(ev.DirtyRateStarted, mode=config.mode, calc_time_ms=config.calc_time_ms,
                      sample_pages=config.sample_pages_per_gigabytes)

    def _measure(self, config: DirtyRateConfig):
        body = {"page-sampling": self._sample_vm, "dirty-bitmap": self._dirty_bitmap,
                "dirty-ring": self._dirty_ring, "x-sampled-wp": self._sampled_wp,
                "x-wss-curve": self._sampled_wp}[config.mode]
        yield from body(config)
        self.state = "measured"

    def _busy(self, ns: int):
        """The thread works for ``ns`` (hashing, ioctls); no time, no wait (the guest's next quantum stays ahead)."""
        if ns > 0:
            yield from self.m.sleep(ns)

    def _locked(self, work: Callable[[], None]):
        """``work`` (memory API calls) under the BQL: wait for it, then hold it while the ioctls take; their cost."""
        yield from self.m.bql_lock()
        work()
        cost = self.m.meter.drain()
        self.m.bql.hold(self.env.now, cost)
        yield from self._busy(cost)
        return cost

    def _last_sync(self):
        """``global_dirty_log_sync(GLOBAL_DIRTY_DIRTY_RATE, one_shot=true)``: one sync, the flag off; its cost."""
        def sync():
            self.m.memory.memory_global_dirty_log_sync(False)
            self.m.memory.memory_global_dirty_log_stop(GLOBAL_DIRTY_DIRTY_RATE)
        return (yield from self._locked(sync))

    def _wait(self, calc_time_ms: int, initial: int):
        """``dirty_stat_wait``: sleep out calc-time from ``initial``; the measured ms (more if already past)."""
        msec = (self.env.now - initial) // NS_PER_MS
        if msec < calc_time_ms:
            yield from self.m.sleep(initial + calc_time_ms * NS_PER_MS - self.env.now)
            msec = calc_time_ms
        return msec

    def _sample_vm(self, config: DirtyRateConfig):
        """``calculate_dirtyrate_sample_vm``: hash the samples, wait out calc-time from the start, hash again.

        Each sample is hashed at one instant of a pass that takes ``n x
        costs.page_hash``; dirtysim's window runs from the start of the first
        pass to the end of the wait, off by at most one pass for any sample.
        """
        rl = self.m.ram_list
        initial = self.env.now
        window = _Window(self.m)
        rng = np.random.default_rng(self.m.seeds.spawn(1)[0])
        samples = record_samples(rl.blocks, config.sample_pages_per_gigabytes, rng)
        pass_ns = sum(len(s.vfn) for s in samples) * self.sc.costs.page_hash
        yield from self._busy(pass_ns)
        msec = yield from self._wait(config.calc_time_ms, initial)
        truth = window.close()
        yield from self._busy(pass_ns)  # compare_page_hash_info hashes every sample again
        dirty, count, mem_mb = compare(samples, window.modified)
        rate = update_dirtyrate(dirty, mem_mb, count, msec) if count else -1  # no sample: QEMU keeps -1
        self.rec.emit(ev.DirtyRateMeasured, mode=config.mode, start_time=initial // 10**9, calc_time_ms=msec,
                      sample_pages=config.sample_pages_per_gigabytes, dirty_rate=rate, dirty_samples=dirty,
                      sample_count=count, block_mem_mb=mem_mb, thread_ns=2 * pass_ns, **truth)

    def _dirty_bitmap(self, config: DirtyRateConfig):
        """``calculate_dirtyrate_dirty_bitmap``: count the bits KVM hands over between two syncs.

        Start logging with GLOBAL_DIRTY_DIRTY_RATE; one sync whose result is
        dropped (all ones under KVM_DIRTY_LOG_INITIALLY_SET); CLEAR every
        migratable block, re-protecting guest memory, so the guest takes a
        write fault on the first write to each page; wait; sync and stop the
        flag. The rate is the growth of ``total_dirty_pages`` (every bit GET
        returns while the flag is on), in MiB per second of the window.
        """
        mem, rl = self.m.memory, self.m.ram_list
        start_ns = self.env.now

        def protect():
            mem.memory_global_dirty_log_start(GLOBAL_DIRTY_DIRTY_RATE)
            mem.memory_global_dirty_log_sync(False)
            for block in rl.blocks:  # dirtyrate_manual_reset_protect
                mem.memory_region_clear_dirty_bitmap(block.mr, 0, block.used_length)
        yield from self._locked(protect)
        start_pages = mem.total_dirty_pages
        initial = self.env.now
        window = _Window(self.m)
        msec = yield from self._wait(config.calc_time_ms, initial)
        truth = window.close()
        cost = yield from self._last_sync()
        delta = mem.total_dirty_pages - start_pages
        rate = ((delta * 1000) >> PAGES_PER_MIB_SHIFT) // msec  # do_calculate_dirtyrate
        self.rec.emit(ev.DirtyRateMeasured, mode=config.mode, start_time=initial // 10**9, calc_time_ms=msec,
                      sample_pages=config.sample_pages_per_gigabytes, dirty_rate=rate, dirty_pages=delta,
                      thread_ns=initial - start_ns + cost, **truth)


    def _dirty_ring(self, config: DirtyRateConfig):
        """``calculate_dirtyrate_dirty_ring`` -> ``vcpu_calculate_dirtyrate(one_shot=true)``: per-vCPU rates.

        Start logging with GLOBAL_DIRTY_DIRTY_RATE (every page write-protected:
        the first write to each pushes a ring entry); record each vCPU's
        ``cpu->dirty_pages`` (entries reaped so far); wait; one sync, which
        reaps every ring, and stop the flag; each vCPU's rate is its growth in
        MiB per second, the VM's their sum. Entries still in a ring when the
        window opens are counted when reaped, as in QEMU.
        """
        mem, listener = self.m.memory, self.m.kvm_listener
        mem.memory_global_dirty_log_start(GLOBAL_DIRTY_DIRTY_RATE)
        initial = self.env.now
        window = _Window(self.m)
        start = listener.reaped.copy()
        msec = yield from self._wait(config.calc_time_ms, initial)
        truth = window.close()
        cost = yield from self._last_sync()
        delta = listener.reaped - start
        rates = vcpu_dirty_rates(delta, msec)  # do_calculate_dirtyrate
        self.rec.emit(ev.DirtyRateMeasured, mode=config.mode, start_time=initial // 10**9, calc_time_ms=msec,
                      sample_pages=config.sample_pages_per_gigabytes, dirty_rate=sum(rates),
                      dirty_pages=int(delta.sum()), vcpu_dirty_rate=rates, thread_ns=cost, **truth)


    def _sampled_wp(self, config: DirtyRateConfig):
        """dirtysim's ``x-sampled-wp`` and ``x-wss-curve`` (``sampled_wp.py``): CLEAR only a sample, GET to read it.

        Start logging with GLOBAL_DIRTY_DIRTY_RATE and sync once (what KVM
        holds goes to global dirty memory, so a running migration keeps it);
        KVM_CLEAR_DIRTY_LOG with the sample as mask; a sync at each checkpoint
        (manual protect: a GET re-protects nothing), counting the sampled bits
        it fetched; stop the flag. During a migration its own CLEARs re-protect
        sampled pages too, so the estimate is then a lower bound.
        """
        mem, kvm, listener = self.m.memory, self.m.kvm, self.m.kvm_listener
        shift = config.sample_shift
        start_ns = self.env.now
        mem.memory_global_dirty_log_start(GLOBAL_DIRTY_DIRTY_RATE)
        mem.memory_global_dirty_log_sync(False)
        mask = sample_mask(np.random.default_rng(self.m.seeds.spawn(1)[0]), kvm.dirty.shape[0], shift)
        sampled = np.zeros_like(mask)
        for slot in kvm.slots:
            if slot.logging:
                w = slot.words
                sampled[w] = mask[w]
                reprotected = int(kernels.clear_by_mask(kvm.dirty, mask, w.start, w.stop))
                cost = reprotected * self.sc.costs.clear_dirty_log_per_page
                self.m.meter.add(cost)
                self.rec.emit(ev.KvmClearDirtyLog, slot=slot.slot, first_page=0, num_pages=slot.size // 4096,
                              reprotected=reprotected, cost_ns=cost)
        yield from self._busy(self.m.meter.drain())
        initial = self.env.now
        window = _Window(self.m)
        points = CHECKPOINTS if config.mode == "x-wss-curve" else (1,)
        curve = []
        for div in points:
            at = initial + config.calc_time_ms * NS_PER_MS // div
            if at > self.env.now:
                yield from self.m.sleep(at - self.env.now)
            true_pages = window.written_so_far()
            mem.memory_global_dirty_log_sync(False)
            curve.append([(self.env.now - initial) // NS_PER_MS, count_sampled(listener.dirty_bmap, sampled) << shift,
                          true_pages])
            if div == 1:
                truth = window.close()
                mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_DIRTY_RATE)
            yield from self._busy(self.m.meter.drain())
        msec = config.calc_time_ms
        estimate = curve[-1][1]
        rate = ((estimate * 1000) >> PAGES_PER_MIB_SHIFT) // msec
        fit = {}
        if len(curve) > 1:
            (t1, w1, _), (t2, w2, _) = curve[-2], curve[-1]
            n, r = fit_uniform(t1 / 1000, w1, t2 / 1000, w2)
            fit = {"wss_pages": -1.0 if n == float("inf") else round(n, 1),
                   "wss_rate": -1.0 if r == float("inf") else round(r, 1)}
        self.rec.emit(ev.DirtyRateMeasured, mode=config.mode, start_time=initial // 10**9, calc_time_ms=msec,
                      sample_pages=config.sample_pages_per_gigabytes, dirty_rate=rate, dirty_pages=estimate,
                      sample_shift=shift, curve=curve, thread_ns=self.env.now - start_ns - msec * NS_PER_MS,
                      **fit, **truth)


class _Window:
    """The oracle's write window and the guest's counters over one measurement (the truth beside QEMU's answer)."""

    def __init__(self, machine):
        self.m, self.guest = machine, machine.guest
        machine.ram_list.open_window()
        self.start = {name: self.guest.total(name) for name in ("writes", "faults", "fault_ns")}
        self.modified = np.zeros(0, dtype=np.uint64)

    def written_so_far(self) -> int:
        """Distinct pages written since the window opened (the truth at a checkpoint)."""
        return _popcount(self.m.ram_list.window[kernels.WIN_WRITTEN])

    def close(self) -> dict:
        window = self.m.ram_list.close_window()
        self.modified = window[kernels.WIN_MODIFIED]
        d = {name: self.guest.total(name) - v for name, v in self.start.items()}
        return {"written_pages": _popcount(window[kernels.WIN_WRITTEN]), "modified_pages": _popcount(self.modified),
                "guest_writes": d["writes"], "guest_faults": d["faults"], "guest_fault_ns": d["fault_ns"]}


def _popcount(words: np.ndarray) -> int:
    return int(kernels.count_set(words, 0, words.shape[0]))
