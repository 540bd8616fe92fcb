"""The "mig/dirtyrate" thread (``get_dirtyrate_thread``): one measurement at a time, as a SimPy process.

States as QEMU's ``CalculatingState``: unstarted -> measuring -> measured. The
thread waits through ``Machine.sleep``, so the guest it measures is exactly as
far as simulated time. Page-sampling is built; dirty-bitmap and dirty-ring are
refused with a clear error until they are.
"""

from __future__ import annotations

import numpy as np

from ..dirty import kernels
from ..events import schema as ev
from .config import DirtyRateConfig
from .page_sampling import compare, record_samples, update_dirtyrate

NS_PER_MS = 10**6
BUILT_MODES = ("page-sampling",)


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
        if self.state == "measuring":
            raise RuntimeError("the dirty rate is already being measured.")  # qmp_calc_dirty_rate
        if config.mode not in BUILT_MODES:
            raise NotImplementedError(f"calc-dirty-rate mode {config.mode} is not built yet (built: "
                                      f"{', '.join(BUILT_MODES)})")
        self.state = "measuring"
        self.rec.emit(ev.DirtyRateStarted, mode=config.mode, calc_time_ms=config.calc_time_ms,
                      sample_pages=config.sample_pages_per_gigabytes)
        yield from self._sample_vm(config)
        self.state = "measured"

    def _sample_vm(self, config: DirtyRateConfig):
        """``calculate_dirtyrate_sample_vm``: hash the samples, wait out calc-time from the start, hash again.

        Each sample is hashed at one instant of a pass that takes ``n x
        costs.page_hash``; dirtysim's window runs from the start of the first
        pass to the end of the wait, off by at most one pass for any sample.
        """
        rl, guest = self.m.ram_list, self.m.guest
        initial = self.env.now
        rl.open_window()
        writes0 = guest.total_writes
        rng = np.random.default_rng(self.m.seeds.spawn(1)[0])
        samples = record_samples(rl.blocks, config.sample_pages_per_gigabytes, rng)
        count = sum(len(s.vfn) for s in samples)
        pass_ns = count * self.sc.costs.page_hash
        yield from self.m.sleep(pass_ns)
        msec = (self.env.now - initial) // NS_PER_MS  # dirty_stat_wait
        if msec < config.calc_time_ms:
            yield from self.m.sleep(initial + config.calc_time_ms * NS_PER_MS - self.env.now)
            msec = config.calc_time_ms
        window = rl.close_window()
        writes = guest.total_writes - writes0
        modified = window[kernels.WIN_MODIFIED]
        yield from self.m.sleep(pass_ns)  # compare_page_hash_info hashes every sample again
        dirty, count, mem_mb = compare(samples, modified)
        rate = update_dirtyrate(dirty, mem_mb, count, msec) if count else -1  # no sample: QEMU keeps -1
        self.rec.emit(ev.DirtyRateMeasured, mode=config.mode, start_time=initial // 10**9, calc_time_ms=msec,
                      sample_pages=config.sample_pages_per_gigabytes, dirty_rate=rate, dirty_samples=dirty,
                      sample_count=count, block_mem_mb=mem_mb, thread_ns=2 * pass_ns,
                      written_pages=_popcount(window[kernels.WIN_WRITTEN]), modified_pages=_popcount(modified),
                      guest_writes=writes)


def _popcount(words: np.ndarray) -> int:
    return int(kernels.count_set(words, 0, words.shape[0]))
