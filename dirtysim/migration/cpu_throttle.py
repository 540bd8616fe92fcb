"""Auto-converge: when to throttle (``migration/ram.c``) and how vCPUs are slowed (``migration/cpu-throttle.c``).

The decision is ``migration_trigger_throttle``, evaluated in every sync that
closes a period longer than 1 s; its action is ``mig_throttle_guest_down``. The
throttle is a timer: every ``10 ms / (1 - p)`` each vCPU is sent
``cpu_throttle_thread``, which sleeps ``10 ms x p / (1 - p)``, so a vCPU runs
``1 - p`` of the time. Here the sleep becomes run time the vCPU owes
(``Guest.sleep``): it is served from the start of the vCPU's next quantum, so
the throttle has the engine's quantum as its resolution (QEMU kicks the vCPU
out of KVM_RUN at once).
"""

from __future__ import annotations

import numpy as np

from ..events import schema as ev

CPU_THROTTLE_PCT_MIN, CPU_THROTTLE_PCT_MAX = 1, 99  # cpu-throttle.c
CPU_THROTTLE_TIMESLICE_NS = 10_000_000
CPU_THROTTLE_DIRTY_SYNC_TIMESLICE_MS = 5000
DIRTY_RATE_HIGH_PERIODS = 2  # migration_trigger_throttle acts on the 2nd high period


def period_is_high(bytes_xfer_period: int, bytes_dirty_period: int, threshold_pct: int) -> tuple[bool, int]:
    """``migration_trigger_throttle``'s test: dirty bytes of the period above threshold % of the bytes sent.

    Returns (high, bytes_dirty_threshold); the threshold is integer arithmetic, as in QEMU.
    """
    bytes_dirty_threshold = bytes_xfer_period * threshold_pct // 100
    return bytes_dirty_period > bytes_dirty_threshold, bytes_dirty_threshold


def next_throttle(current: int, params, bytes_dirty_period: int, bytes_dirty_threshold: int) -> int:
    """``mig_throttle_guest_down``: the new percentage (``cpu_throttle_set`` clamps it to 1..99).

    Off: start at cpu-throttle-initial. On: add cpu-throttle-increment, or with
    tailslow at most the step that would bring the dirty rate to the threshold
    (``cpu_ideal = cpu_now x threshold / dirty``, truncated), capped at max-cpu-throttle.
    """
    if current == 0:
        return _clamp(params.cpu_throttle_initial)
    increment = params.cpu_throttle_increment
    if params.cpu_throttle_tailslow:
        cpu_now = 100 - current
        cpu_ideal = int(cpu_now * (bytes_dirty_threshold * 1.0 / bytes_dirty_period))
        increment = min(cpu_now - cpu_ideal, increment)
    return _clamp(min(current + increment, params.max_cpu_throttle))


def _clamp(pct: int) -> int:
    return max(CPU_THROTTLE_PCT_MIN, min(pct, CPU_THROTTLE_PCT_MAX))


def throttle_sleep_ns(pct: int) -> int:
    """``cpu_throttle_thread``: ``(int64_t)(p / (1 - p) x 10 ms + 1)``, in double arithmetic as QEMU computes it."""
    p = pct / 100
    return int(p / (1 - p) * CPU_THROTTLE_TIMESLICE_NS + 1)


def next_tick_ns(now_ns: int, pct: int) -> int:
    """``cpu_throttle_timer_tick`` re-arms at ``now + 10 ms / (1 - p)`` (a double, truncated to int64)."""
    return int(now_ns + CPU_THROTTLE_TIMESLICE_NS / (1 - pct / 100))


class CpuThrottle:
    """``throttle_percentage`` and its timer; the sleeps go to the guest as run time owed."""

    def __init__(self, env, machine, recorder):
        self.env, self.m, self.rec = env, machine, recorder
        self.percentage = 0
        self.max_percentage = 0
        # cpu->throttle_thread_scheduled: a vCPU is sent a new sleep only once the previous one is over
        self._sleeping_until = np.zeros(machine.guest.nvcpus, dtype=np.int64)

    def active(self) -> bool:
        return self.percentage > 0

    def set(self, pct: int, **why: int) -> None:
        """``cpu_throttle_set``: clamp, store, and tick at once if throttling was off."""
        was_active = self.active()
        self.percentage = _clamp(pct)
        self.max_percentage = max(self.max_percentage, self.percentage)
        self.rec.emit(ev.CpuThrottle, percentage=self.percentage, reason="auto-converge", **why)
        if not was_active:
            self._tick()
            self.env.process(self._timer())

    def stop(self) -> None:
        """``cpu_throttle_stop``: percentage 0; the next tick sees it and does not re-arm."""
        if self.active():
            self.percentage = 0
            self.rec.emit(ev.CpuThrottle, percentage=0, reason="stop")

    def _timer(self):
        """``throttle_timer`` on QEMU_CLOCK_VIRTUAL_RT: it stops with the VM."""
        while True:
            wake = next_tick_ns(self.env.now, self.percentage)
            yield from self.m.sleep(wake - self.env.now)
            if not (self.active() and self.m.guest.running):
                return
            self._tick()

    def _tick(self) -> None:
        """``cpu_throttle_timer_tick``: each vCPU without a pending sleep is sent one (``async_run_on_cpu``)."""
        guest, now = self.m.guest, self.env.now
        free = self._sleeping_until <= now
        guest.sleep(free, throttle_sleep_ns(self.percentage), "throttle_ns")
        self._sleeping_until[free] = now + guest.debt[free]  # it sleeps after what it already owes
