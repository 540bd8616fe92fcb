"""``migration_rate_*`` and ``migration_update_counters`` at each boundary, numbers worked out by hand.

Time is integer ms of the migration clock; a window is BUFFER_DELAY = 100 ms;
max-bandwidth is stored per window as a tenth of the per-second value.
"""

from __future__ import annotations

import pytest

from dirtysim.migration.precopy import UNLIMITED
from dirtysim.migration.rate import RateCounters, rate_limit_max, threshold_size

pytestmark = [pytest.mark.rules, pytest.mark.timeout(20)]  # a hang (a broken bound) fails fast


def counters(limit: int = 1000, downtime_ms: int = 300, avail: int = 0) -> RateCounters:
    return RateCounters(downtime_limit_ms=downtime_ms, avail_switchover_bandwidth=avail, rate_limit_max=limit)


def test_rate_limit_max_is_a_tenth_per_window():
    """``migration_rate_set``: 128 MiB/s -> 13,421,772 bytes per 100 ms (integer division); 0 stays 0."""
    assert rate_limit_max(134_217_728) == 13_421_772
    assert rate_limit_max(19) == 1
    assert rate_limit_max(9) == 0
    assert rate_limit_max(0) == 0


def test_threshold_truncates_to_bytes():
    """``migration_update_counters``: threshold_size = expected_bw_per_ms * downtime_limit as uint64."""
    assert threshold_size(1000.9, 3) == 3002  # 3002.7 -> 3002
    assert threshold_size(0.5, 3) == 1


def test_expected_downtime_starts_at_the_limit():
    """``migration_start_outgoing``: expected_downtime = downtime_limit before any window; threshold 0."""
    c = counters(downtime_ms=250)
    assert (c.expected_downtime, c.threshold_size) == (250, 0)


@pytest.mark.parametrize("sent, exceeded", [(999, False), (1000, False), (1001, True)])
def test_rate_exceeded_is_strictly_more_than_the_budget(sent, exceeded):
    """``migration_rate_exceeded``: transferred - rate_limit_start > rate_limit_max."""
    c = counters(limit=1000)
    c.rate_limit_start = 5000
    assert c.rate_exceeded(5000 + sent) is exceeded
    assert c.budget_left(5000 + sent) == 1000 - sent  # negative once exceeded


def test_no_limit_is_never_exceeded():
    """rate_limit_max 0 = unlimited (``migration_rate_set`` with max-bandwidth 0, or the switchover)."""
    c = counters(limit=0)
    assert not c.rate_exceeded(1 << 50)
    assert c.budget_left(1 << 50) == UNLIMITED  # the same 'unlimited' as the final pass and the fused kernel


def _after_first_window(**kw) -> tuple[RateCounters, object]:
    c = counters(**kw)
    c.update_iteration_initial_status(1000, 100, 2)  # the window opened at 1000 ms, 100 bytes, 2 pages in
    return c, c.update_counters(1100, 100 + 50_000, 2 + 12, dirty_pages_rate=7, dirty_bytes_last_sync=80_000)


def test_no_window_before_100_ms():
    c = counters()
    c.update_iteration_initial_status(1000, 100, 2)
    c.rate_limit_start = 100
    assert c.update_counters(1099, 60_000, 20, 7, 80_000) is None
    assert (c.iteration_start_time, c.iteration_initial_bytes, c.iteration_initial_pages) == (1000, 100, 2)
    assert (c.rate_limit_start, c.threshold_size, c.expected_downtime) == (100, 0, 300)


def test_window_at_exactly_100_ms():
    """50,000 bytes and 12 pages in 100 ms: 500 B/ms, threshold 500 x 300 ms, 4 Mbit/s, 120 pages/s."""
    c, w = _after_first_window()
    assert (w.time_spent_ms, w.transferred) == (100, 50_000)
    assert w.bandwidth == pytest.approx(500.0)
    assert w.threshold_size == c.threshold_size == 150_000
    assert w.mbps == pytest.approx(4.0)  # 50,000 B x 8 / 0.1 s = 4,000,000 bit/s
    assert w.pages_per_second == pytest.approx(120.0)
    assert w.expected_downtime == c.expected_downtime == 160  # 80,000 B / 500 B/ms
    # migration_rate_reset and the next window's initial status
    assert (c.rate_limit_start, c.iteration_start_time) == (50_100, 1100)
    assert (c.iteration_initial_bytes, c.iteration_initial_pages) == (50_100, 14)


def test_second_window_measures_from_the_first():
    c, _ = _after_first_window()
    assert c.update_counters(1199, 10**6, 99, 7, 80_000) is None
    w = c.update_counters(1300, 50_100 + 30_000, 14 + 6, 7, 90_000)
    assert (w.time_spent_ms, w.transferred) == (200, 30_000)
    assert w.bandwidth == pytest.approx(150.0)
    assert w.threshold_size == 45_000
    assert w.pages_per_second == pytest.approx(30.0)
    assert w.expected_downtime == 600  # 90,000 / 150


def test_avail_switchover_bandwidth_replaces_the_estimate():
    """avail-switchover-bandwidth is bytes/s: 2,000,000 B/s = 2,000 B/ms for threshold and expected downtime."""
    c, w = _after_first_window(avail=2_000_000)
    assert w.bandwidth == pytest.approx(500.0)  # still measured
    assert w.threshold_size == 600_000
    assert w.expected_downtime == 40  # 80,000 / 2,000


@pytest.mark.parametrize("moved, rate, updated", [(10_000, 7, False), (10_001, 7, True), (50_000, 0, False)])
def test_expected_downtime_needs_a_rate_and_over_10000_bytes(moved, rate, updated):
    """Recomputed only when dirty_pages_rate is known and more than 10,000 bytes moved in the window."""
    c = counters(downtime_ms=999)
    w = c.update_counters(100, moved, 0, dirty_pages_rate=rate, dirty_bytes_last_sync=moved * 2)  # bw = moved/100
    assert w.expected_downtime == (200 if updated else 999)


def test_a_window_with_nothing_sent_keeps_expected_downtime():
    c = counters(downtime_ms=300)
    w = c.update_counters(150, 0, 0, dirty_pages_rate=5, dirty_bytes_last_sync=4096)
    assert (w.bandwidth, w.threshold_size, w.expected_downtime) == (0.0, 0, 300)


def test_the_smallest_limit_is_a_limit():
    """max-bandwidth 10 B/s stores 1 byte per window: 2 bytes exceed it, and 1 byte is left at the start."""
    c = counters(limit=rate_limit_max(10))
    assert (c.rate_exceeded(1), c.rate_exceeded(2)) == (False, True)
    assert (c.budget_left(0), c.budget_left(2)) == (1, -1)
