"""Pure folds over the event log: the per-sync rounds table and the query-migrate summary.

Nothing here looks at simulator state; ``dirtysim replay`` runs the same folds
on a saved ``events.jsonl`` and gets the same tables.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from ..events import schema as ev

NS_PER_MS = 10**6

ROUND_FIELDS = [
    "time", "dirty-sync-count", "reason", "transferred", "remaining", "dirty-pages-rate", "mbps",
    "expected-downtime", "new-dirty-pages", "threshold-size", "pending-before", "duplicate", "normal",
    "vcpu-writes", "vcpu-faults", "vcpu-fault-ms", "lazy-clears", "reprotected-pages", "sync-cost-us",
]


@dataclass
class _Fold:
    """Running state of the fold (the query-migrate counters as a function of the events seen)."""

    page_size: int = 4096
    ram_bytes: int = 0
    downtime_limit_ms: int = 300
    migrate_ns: int | None = None
    setup_end_ns: int | None = None
    stop_ns: int | None = None
    end_ns: int | None = None
    status: str = "none"
    transferred: int = 0
    normal: int = 0
    zero: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    dirty_pages: int = 0
    syncs: int = 0
    dirty_pages_rate: int = 0
    mbps: float = 0.0
    pages_per_second: float = 0.0
    expected_downtime: int = 300
    threshold_size: int = 0
    writes: int = 0
    faults: int = 0
    fault_ns: int = 0
    clears: int = 0
    reprotected: int = 0
    lost_pages: int | None = None
    stale_pages: int | None = None
    stop_reason: str | None = None
    error: str | None = None
    seed: int = 0
    rounds: list = field(default_factory=list)

    def apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunStarted):
            self.page_size, self.ram_bytes, self.seed = e.page_size, e.ram_bytes, e.seed
            self.downtime_limit_ms = e.scenario["migration"]["downtime_limit"] // NS_PER_MS
            self.expected_downtime = self.downtime_limit_ms
        elif isinstance(e, ev.MigrationStatus):
            self.status = e.status
            if e.status == "setup":
                self.migrate_ns = e.t_ns
            elif e.status == "active":
                self.setup_end_ns = e.t_ns
            elif e.status in ("completed", "cancelled", "failed"):
                self.end_ns = e.t_ns
        elif isinstance(e, ev.Transfer):
            self.transferred += e.bytes
            if e.kind != "device-state":
                self.normal += e.normal
                self.zero += e.zero
                self.dirty_pages -= e.normal + e.zero
                if e.running:
                    self.precopy_bytes += e.bytes
                else:
                    self.downtime_bytes += e.bytes
        elif isinstance(e, ev.RateWindow):
            self.mbps, self.pages_per_second = e.mbps, e.pages_per_second
            self.expected_downtime, self.threshold_size = e.expected_downtime, e.threshold_size
        elif isinstance(e, ev.VcpuStats):
            self.writes += e.writes
            self.faults += e.faults
            self.fault_ns += e.fault_ns
        elif isinstance(e, ev.LazyClear):
            self.clears += 1
        elif isinstance(e, ev.KvmClearDirtyLog):
            self.reprotected += e.reprotected
        elif isinstance(e, ev.KvmGetDirtyLog):
            self.reprotected += e.reprotected
        elif isinstance(e, ev.BitmapSync):
            self._sync(e)
        elif isinstance(e, ev.VcpusStopped):
            self.stop_ns = e.t_ns
        elif isinstance(e, ev.OracleCheck):
            self.lost_pages, self.stale_pages = e.lost_pages, e.stale_pages
        elif isinstance(e, ev.RunFinished):
            self.stop_reason, self.error = e.stop_reason, e.error

    def _sync(self, e: ev.BitmapSync) -> None:
        self.syncs = e.dirty_sync_count
        self.dirty_pages = e.migration_dirty_pages
        self.dirty_pages_rate = e.dirty_pages_rate
        self.rounds.append({
            "time": round((e.t_ns - (self.migrate_ns or 0)) / NS_PER_MS, 3),
            "dirty-sync-count": e.dirty_sync_count,
            "reason": e.reason,
            "transferred": self.transferred,
            "remaining": e.migration_dirty_pages * self.page_size,
            "dirty-pages-rate": e.dirty_pages_rate,
            "mbps": round(self.mbps, 3),
            "expected-downtime": self.expected_downtime,
            "new-dirty-pages": e.new_dirty_pages,
            "threshold-size": e.threshold_size,
            "pending-before": e.pending_before,
            "duplicate": self.zero,
            "normal": self.normal,
            "vcpu-writes": self.writes,
            "vcpu-faults": self.faults,
            "vcpu-fault-ms": round(self.fault_ns / NS_PER_MS, 3),
            "lazy-clears": self.clears,
            "reprotected-pages": self.reprotected,
            "sync-cost-us": e.cost_ns // 1000,
        })
        self.writes = self.faults = self.fault_ns = self.clears = self.reprotected = 0


def fold(events: list[ev.Event]) -> _Fold:
    f = _Fold()
    for e in events:
        f.apply(e)
    return f


def rounds(events: list[ev.Event]) -> list[dict]:
    """One row per ``migration_bitmap_sync``, with guestperf's query-migrate fields."""
    return fold(events).rounds


def rounds_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROUND_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def summary(events: list[ev.Event]) -> dict:
    """The final ``query-migrate`` answer (``populate_ram_info`` / ``populate_time_info``) + ``dirtysim``."""
    f = fold(events)
    last_ns = events[-1].t_ns if events else 0
    start = f.migrate_ns if f.migrate_ns is not None else last_ns
    end = f.end_ns if f.end_ns is not None else last_ns
    total_ms = (end - start) // NS_PER_MS
    setup_ms = (f.setup_end_ns - start) // NS_PER_MS if f.setup_end_ns is not None else None
    completed = f.status == "completed"
    mbps = f.mbps
    if completed and setup_ms is not None and total_ms > setup_ms:  # migration_completion_end
        mbps = f.transferred * 8.0 / (total_ms - setup_ms) / 1000.0
    ram = {
        "transferred": f.transferred,
        "remaining": 0 if completed else f.dirty_pages * f.page_size,
        "total": f.ram_bytes,
        "duplicate": f.zero,
        "normal": f.normal,
        "normal-bytes": f.normal * f.page_size,
        "dirty-sync-count": f.syncs,
        "mbps": round(mbps, 3),
        "pages-per-second": round(f.pages_per_second, 3),
        "precopy-bytes": f.precopy_bytes,
        "downtime-bytes": f.downtime_bytes,
        "postcopy-bytes": 0,
        "page-size": f.page_size,
    }
    if not completed:
        ram["dirty-pages-rate"] = f.dirty_pages_rate
    out = {"status": f.status if f.stop_reason != "error" else "failed", "total-time": total_ms}
    if setup_ms is not None:
        out["setup-time"] = setup_ms
    if completed and f.stop_ns is not None:
        out["downtime"] = (end - f.stop_ns) // NS_PER_MS
    elif not completed:
        out["expected-downtime"] = f.expected_downtime
    out["ram"] = ram
    if f.error:
        out["error-desc"] = f.error
    out["dirtysim"] = {
        "stop-reason": f.stop_reason,
        "lost-pages": f.lost_pages,
        "stale-pages": f.stale_pages,
        "seed": f.seed,
        "downtime-ns": (end - f.stop_ns) if completed and f.stop_ns is not None else None,
        "events": len(events),
    }
    return out
