"""Dirty-limit (``system/dirtylimit.c``): cap each vCPU's dirty rate with sleeps at its ring-full exits.

Migration turns it on through ``migration_dirty_limit_guest`` (the same
two-high-periods rule as auto-converge). The "dirtyrate-stat" thread then loops:
measure every vCPU's dirty rate over x-vcpu-dirty-limit-period from its reaped
ring entries (``vcpu_calculate_dirtyrate``), and adjust each limited vCPU's
``throttle_us_per_full`` (``dirtylimit_set_throttle``). A vCPU sleeps that long
each time it exits with KVM_EXIT_DIRTY_RING_FULL (``dirtylimit_vcpu_execute``);
while the limit is in service only its own ring is reaped then, and the 1 s
reaper skips, so a dirtying vCPU fills its ring and is paced per ring-full.
"""

from __future__ import annotations

import numpy as np

from ..events import schema as ev
from ..memory.address_space import GLOBAL_DIRTY_LIMIT
from ..scenario.schema import PAGE_SIZE

DIRTYLIMIT_TOLERANCE_RANGE = 25  # MB/s (include/system/dirtylimit.h)
DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT = 50
DIRTYLIMIT_THROTTLE_PCT_MAX = 99
DIRTYLIMIT_CALC_TIME_MS = 1000  # the period outside a dirty-limit migration
PAGES_PER_MIB_SHIFT = 8  # qemu_target_pages_to_MiB: 4 KiB pages
NS_PER_MS, NS_PER_US = 10**6, 10**3


class RingFullTime:
    """``dirtylimit_dirty_ring_full_time``: us to fill a ring at the highest rate ever passed in (a static max)."""

    def __init__(self, ring_size: int):
        self.ring_size_mib = ring_size * PAGE_SIZE >> 20
        self.max_dirtyrate = 0

    def __call__(self, dirtyrate: int) -> int:
        self.max_dirtyrate = max(self.max_dirtyrate, dirtyrate)
        return self.ring_size_mib * 1_000_000 // self.max_dirtyrate

    def peek(self, dirtyrate: int) -> int:
        """The same answer without raising the maximum (0 where QEMU would divide by zero)."""
        top = max(self.max_dirtyrate, dirtyrate)
        return self.ring_size_mib * 1_000_000 // top if top else 0


def dirtylimit_done(quota: int, current: int) -> bool:
    """Within ``DIRTYLIMIT_TOLERANCE_RANGE`` (25 MB/s) of the quota: no adjustment."""
    return abs(quota - current) <= DIRTYLIMIT_TOLERANCE_RANGE


def need_linear_adjustment(quota: int, current: int) -> bool:
    """``dirtylimit_need_linear_adjustment``: the gap is more than 50 % of the larger of the two."""
    high, low = max(quota, current), min(quota, current)
    return (high - low) * 100 // high > DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT


def set_throttle(throttle_us_per_full: int, quota: int, current: int, ring_full_time: RingFullTime) -> int:
    """``dirtylimit_set_throttle``: the vCPU's new sleep per ring-full, in us.

    Linear mode (gap > 50 %): change by ``ring_full_time x pct / (100 - pct)``
    with pct the gap in % of current (above quota) or of quota (below); else
    by a tenth of the ring-full time. Clamped to [0, 99 x ring-full time].
    """
    if current == 0:
        return 0
    full_us = ring_full_time(current)
    sign = 1 if quota < current else -1
    if need_linear_adjustment(quota, current):
        sleep_pct = (current - quota) * 100 // current if sign > 0 else (quota - current) * 100 // quota
        step = int(full_us * sleep_pct / float(100 - sleep_pct))
    else:
        step = full_us // 10
    return max(0, min(throttle_us_per_full + sign * step, full_us * DIRTYLIMIT_THROTTLE_PCT_MAX))


def vcpu_dirty_rates(delta_pages: np.ndarray, duration_ms: int) -> list[int]:
    """``vcpu_calculate_dirtyrate``: MiB/s per vCPU, ``MiB(pages x 1000) / ms`` in integer arithmetic."""
    return [((int(d) * 1000) >> PAGES_PER_MIB_SHIFT) // max(duration_ms, 1) for d in delta_pages]


class DirtyLimit:
    """The dirty-limit state (``dirtylimit_state``), its stat thread, and what the vCPUs sleep.

    Once in service it stays for the run: a migration's end does not cancel it (see
    ``PrecopyMigration._iteration_finish``)."""

    def __init__(self, env, machine, recorder, ring_size: int):
        self.env, self.m, self.rec = env, machine, recorder
        n = machine.guest.nvcpus
        self.in_service = False
        self.quota = 0
        self.enabled = np.zeros(n, dtype=bool)
        self.throttle_us_per_full = np.zeros(n, dtype=np.int64)
        self.rates = np.zeros(n, dtype=np.int64)
        self.ring_full_time = RingFullTime(ring_size)
        self.period_ms = lambda: DIRTYLIMIT_CALC_TIME_MS  # the migration supplies x-vcpu-dirty-limit-period

    def set_all(self, quota: int) -> None:
        """``qmp_set_vcpu_dirty_limit`` for every vCPU: start the service (and its thread) if off, set the quota."""
        if not self.in_service:
            self.in_service = True
            self.env.process(self._stat_thread())
        self.quota = quota
        self.enabled[:] = True
        self.rec.emit(ev.DirtyLimit, reason="set", quota=quota)

    def vcpu_execute(self, vcpu: int) -> int:
        """``dirtylimit_vcpu_execute``: ns the vCPU sleeps after its ring-full exit."""
        if self.in_service and self.enabled[vcpu]:
            return int(self.throttle_us_per_full[vcpu]) * NS_PER_US
        return 0

    def _stat_thread(self):
        """``vcpu_dirty_rate_stat_thread``: log with GLOBAL_DIRTY_LIMIT; collect, then process, each period."""
        mem, listener = self.m.memory, self.m.kvm_listener
        mem.memory_global_dirty_log_start(GLOBAL_DIRTY_LIMIT)
        while self.in_service and self.m.guest.running:
            period = self.period_ms()
            start, t0 = listener.reaped.copy(), self.env.now  # vcpu_calculate_dirtyrate: record, wait, sync
            yield from self.m.sleep(period * NS_PER_MS)
            yield from self.m.bql_lock()  # global_dirty_log_sync runs under the BQL
            duration = (self.env.now - t0) // NS_PER_MS
            mem.memory_global_dirty_log_sync(False)  # reaps every ring
            cost = self.m.meter.drain()
            self.m.bql.hold(self.env.now, cost)
            self.rates[:] = vcpu_dirty_rates(listener.reaped - start, duration)
            if not self.in_service:
                break
            self._process(period)
            if cost:
                yield from self.m.sleep(cost)
        mem.memory_global_dirty_log_stop(GLOBAL_DIRTY_LIMIT)

    def _process(self, period_ms: int) -> None:
        """``dirtylimit_process``: adjust every limited vCPU whose rate is off its quota by more than 25 MB/s."""
        for v in np.flatnonzero(self.enabled):
            current = int(self.rates[v])
            if not dirtylimit_done(self.quota, current):
                self.throttle_us_per_full[v] = set_throttle(int(self.throttle_us_per_full[v]), self.quota, current,
                                                            self.ring_full_time)
        self.rec.emit(ev.DirtyLimit, reason="round", quota=self.quota, period_ms=period_ms, rates=self.rates.tolist(),
                      throttle_us_per_full=self.throttle_us_per_full.tolist(),
                      throttle_time_per_round=int(self.throttle_us_per_full.max()),
                      ring_full_time=self.ring_full_time_now())

    def ring_full_time_now(self) -> int:
        """``dirtylimit_ring_full_time``: the ring-full time at the running vCPUs' mean rate (0 if none dirty).

        QEMU computes it when query-migrate asks, and asking feeds the static
        maximum; dirtysim reports it every round without feeding it, so the
        throttle steps do not depend on how often someone polls.
        """
        total = int(self.rates.sum())
        return self.ring_full_time.peek(total // len(self.rates)) if total else 0
