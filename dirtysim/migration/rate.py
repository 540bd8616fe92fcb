"""Rate limiting and the per-window counters (``migration/migration.c``, ``migration-stats.c``).

Time here is integer milliseconds of the migration clock, as QEMU reads
``qemu_clock_get_ms(QEMU_CLOCK_REALTIME)``; bandwidth is bytes per ms (double).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

BUFFER_DELAY = 100  # ms, migration-stats.h
XFER_LIMIT_RATIO = 1000 // BUFFER_DELAY  # 10 windows per second
EXPECTED_DOWNTIME_MIN_BYTES = 10000  # migration_update_counters: recompute only if > 10000 bytes moved


def rate_limit_max(max_bandwidth: int) -> int:
    """``migration_rate_set``: bytes allowed per 100 ms window (0 = unlimited)."""
    return max_bandwidth // XFER_LIMIT_RATIO


def threshold_size(expected_bw_per_ms: float, downtime_limit_ms: int) -> int:
    """``migration_update_counters``: threshold_size = expected_bw_per_ms * downtime_limit (uint64)."""
    return int(expected_bw_per_ms * downtime_limit_ms)


@dataclass
class Window:
    """What ``migration_update_counters`` computed when a window closed."""

    time_spent_ms: int
    transferred: int
    bandwidth: float
    threshold_size: int
    mbps: float
    pages_per_second: float
    expected_downtime: int


@dataclass
class RateCounters:
    """The MigrationState fields the window logic reads and writes."""

    downtime_limit_ms: int
    avail_switchover_bandwidth: int  # bytes/s, 0 = use the estimate
    rate_limit_max: int
    iteration_start_time: int = 0
    iteration_initial_bytes: int = 0
    iteration_initial_pages: int = 0
    rate_limit_start: int = 0
    threshold_size: int = 0  # migrate_init: 0 until the first window closes
    mbps: float = 0.0
    pages_per_second: float = 0.0
    expected_downtime: int = 0  # ms

    def __post_init__(self):
        self.expected_downtime = self.downtime_limit_ms  # migration_start_outgoing

    def update_iteration_initial_status(self, now_ms: int, transferred: int, pages: int) -> None:
        self.iteration_start_time = now_ms
        self.iteration_initial_bytes = transferred
        self.iteration_initial_pages = pages

    def rate_exceeded(self, transferred: int) -> bool:
        """``migration_rate_exceeded``: strictly more than the budget since the window start."""
        return self.rate_limit_max > 0 and transferred - self.rate_limit_start > self.rate_limit_max

    def budget_left(self, transferred: int) -> int:
        """Bytes a sender may still put out before ``rate_exceeded`` turns true."""
        if self.rate_limit_max <= 0:
            return 1 << 62
        return self.rate_limit_start + self.rate_limit_max - transferred

    def update_counters(self, now_ms: int, transferred: int, pages: int, dirty_pages_rate: int,
                        dirty_bytes_last_sync: int) -> Optional[Window]:
        """``migration_update_counters``: at most once per >= 100 ms window."""
        if now_ms < self.iteration_start_time + BUFFER_DELAY:
            return None
        moved = transferred - self.iteration_initial_bytes
        time_spent = now_ms - self.iteration_start_time
        bandwidth = moved / time_spent
        expected_bw = self.avail_switchover_bandwidth / 1000 if self.avail_switchover_bandwidth else bandwidth
        self.threshold_size = threshold_size(expected_bw, self.downtime_limit_ms)
        self.mbps = moved * 8.0 / (time_spent / 1000.0) / 1000.0 / 1000.0
        self.pages_per_second = (pages - self.iteration_initial_pages) / (time_spent / 1000.0)
        if dirty_pages_rate and moved > EXPECTED_DOWNTIME_MIN_BYTES:  # the window sent something
            self.expected_downtime = int(dirty_bytes_last_sync / expected_bw)
        self.rate_limit_start = transferred  # migration_rate_reset
        self.update_iteration_initial_status(now_ms, transferred, pages)
        return Window(time_spent, moved, bandwidth, self.threshold_size, self.mbps, self.pages_per_second,
                      self.expected_downtime)
