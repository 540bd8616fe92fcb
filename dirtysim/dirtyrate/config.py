"""``qmp_calc_dirty_rate``'s arguments, checked with QEMU's limits and error messages.

Units as QMP takes them: ``calc-time`` in ``calc-time-unit`` (second or
millisecond), ``sample-pages`` per GiB, ``mode``.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_CALC_TIME_MS, MAX_CALC_TIME_MS = 50, 60_000  # dirtyrate.h
MIN_SAMPLE_PAGE_COUNT, MAX_SAMPLE_PAGE_COUNT = 128, 16384
DIRTYRATE_DEFAULT_SAMPLE_PAGES = 512
QEMU_MODES = ("page-sampling", "dirty-bitmap", "dirty-ring")
EXTRA_MODES = ("x-sampled-wp", "x-wss-curve")  # dirtysim's estimators (dirtyrate/sampled_wp.py), not QEMU's
MODES = QEMU_MODES + EXTRA_MODES
DEFAULT_SAMPLE_SHIFT = 6  # x- modes: one page in 64 write-protected
TIME_UNITS = {"second": 0, "millisecond": -3}  # time_unit_to_power


class DirtyRateError(ValueError):
    """A request QEMU refuses; the message is QEMU's."""


def tracking_flags(scenario) -> dict:
    """What ``qmp_calc_dirty_rate`` asks of KVM, for a scenario: a dirty ring, and KVM_CLEAR_DIRTY_LOG."""
    dt = scenario.dirty_tracking
    ring = dt.mode == "ring"
    return {"dirty_ring": ring, "clear_log": scenario.machine.accel == "kvm" and not ring and dt.manual_protect}


def check_run(scenario, start_ns: int, calc_time_ms: int) -> None:
    """Refuse a standalone measurement whose guest would run past dirtysim's budgets (``limits``)."""
    from ..scenario import limits
    from ..scenario.schema import PAGE_SIZE, VHOST_KINDS

    horizon = start_ns + calc_time_ms * 10**6
    eng = scenario.engine
    backends = [d for d in scenario.machine.devices if d.kind in VHOST_KINDS]
    steps = limits.steps(horizon, calc_time_ms * 10**6, eng.quantum, eng.send_quantum, 1 + len(backends),
                         scenario.timer_periods(), 0)
    writes = sum(g.count * g.peak_rate for g in scenario.machine.vcpus) / PAGE_SIZE * horizon / 1e9
    if steps > limits.MAX_STEPS or writes > limits.MAX_WRITES:
        raise DirtyRateError(f"the guest would run {horizon / 1e9:.0f} s: about {steps:.1e} steps and {writes:.1e} "
                             f"page writes (allowed: at most {limits.MAX_STEPS:.0e} and {limits.MAX_WRITES:.0e}; "
                             "an earlier --start)")


def convert_time_unit(value: int, unit_from: str, unit_to: str) -> int:
    """``convert_time_unit``: scale by powers of ten, dividing in integers (rounds toward zero)."""
    power = TIME_UNITS[unit_from] - TIME_UNITS[unit_to]
    while power < 0:
        value = int(value / 10)
        power += 1
    while power > 0:
        value *= 10
        power -= 1
    return value


@dataclass(frozen=True)
class DirtyRateConfig:
    """``struct DirtyRateConfig``."""

    calc_time_ms: int
    sample_pages_per_gigabytes: int
    mode: str
    sample_shift: int = DEFAULT_SAMPLE_SHIFT

    @classmethod
    def from_qmp(cls, calc_time: int, calc_time_unit: str = "second", sample_pages: int | None = None,
                 mode: str = "page-sampling", dirty_ring: bool = False, sample_shift: int | None = None,
                 clear_log: bool = True) -> "DirtyRateConfig":
        """``qmp_calc_dirty_rate``'s checks, in its order. ``dirty_ring``: KVM runs with a dirty ring.

        The ``x-`` modes are dirtysim's: they take ``sample_shift`` (one page in
        ``2^shift`` protected, 0..6) and need ``clear_log`` (KVM, bitmap mode,
        manual protect).
        """
        if calc_time_unit not in TIME_UNITS:
            raise DirtyRateError(f"calc-time-unit {calc_time_unit!r} is not one of: {', '.join(TIME_UNITS)}")
        if mode not in MODES:
            raise DirtyRateError(f"mode {mode!r} is not one of: {', '.join(MODES)}")
        calc_time_ms = convert_time_unit(calc_time, calc_time_unit, "millisecond")
        if not MIN_CALC_TIME_MS <= calc_time_ms <= MAX_CALC_TIME_MS:
            raise DirtyRateError(f"Calculation time is out of range [{MIN_CALC_TIME_MS}ms, {MAX_CALC_TIME_MS}ms].")
        if sample_pages is not None and mode != "page-sampling":
            raise DirtyRateError("sample-pages is used only in page-sampling mode")
        if sample_pages is not None and not MIN_SAMPLE_PAGE_COUNT <= sample_pages <= MAX_SAMPLE_PAGE_COUNT:
            raise DirtyRateError(f"sample-pages is out of range[{MIN_SAMPLE_PAGE_COUNT}, {MAX_SAMPLE_PAGE_COUNT}].")
        if (mode == "dirty-ring") != dirty_ring and mode in ("dirty-ring", "dirty-bitmap"):
            raise DirtyRateError(f"mode {mode} is not enabled, use other method instead.")
        if sample_shift is not None and mode not in EXTRA_MODES:
            raise DirtyRateError(f"x-sample-shift is used only in the modes {', '.join(EXTRA_MODES)}")
        if mode in EXTRA_MODES and not clear_log:
            raise DirtyRateError(f"mode {mode} needs KVM_CLEAR_DIRTY_LOG: accel kvm, dirty_tracking.mode bitmap, "
                                 "manual_protect true")
        shift = DEFAULT_SAMPLE_SHIFT if sample_shift is None else sample_shift
        if not 0 <= shift <= 6:
            raise DirtyRateError(f"x-sample-shift is out of range[0, 6] (got {shift})")
        pages = DIRTYRATE_DEFAULT_SAMPLE_PAGES if sample_pages is None else sample_pages
        return cls(calc_time_ms, pages, mode, shift)
