"""Pure folds over the event log: the per-sync rounds table and the query-migrate summary.

Nothing here looks at simulator state; ``dirtysim replay`` runs the same folds
on a saved ``events.jsonl`` and gets the same tables.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field

from ..events import schema as ev

NS_PER_MS = 10**6

ROUND_FIELDS = [
    "time", "dirty-sync-count", "reason", "transferred", "remaining", "dirty-pages-rate", "mbps",
    "expected-downtime", "new-dirty-pages", "threshold-size", "pending-before", "duplicate", "normal",
    "resent", "write-not-dirty", "vcpu-writes", "vcpu-faults", "vcpu-fault-ms", "ring-full-exits",
    "vcpu-ring-full-ms", "vcpu-inhibit-ms", "vhost-logged-pages", "ring-reaped", "lazy-clears", "reprotected-pages",
    "thread-get-us", "thread-clear-us", "thread-reap-us", "sync-cost-us",
]
# Per-interval counters (reset at every sync) and what they are folded from.
INTERVAL_FIELDS = ("resent", "write-not-dirty", "vcpu-writes", "vcpu-faults", "vcpu-fault-ns", "ring-full-exits",
                   "vcpu-ring-full-ns", "vcpu-inhibit-ns", "vhost-logged-pages", "ring-reaped", "lazy-clears", "reprotected-pages",
                   "thread-get-ns", "thread-clear-ns", "thread-reap-ns")


@dataclass
class _Fold:
    """Running state of the fold (the query-migrate counters as a function of the events seen)."""

    page_size: int = 4096
    ram_bytes: int = 0
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
    lost_pages: int | None = None
    unassigned_writes: int = 0  # guest writes that hit no RAM (reported with the final oracle check)
    stale_pages: int | None = None
    first_lost_ns: int | None = None
    first_lost_at: str | None = None
    stop_reason: str | None = None
    error: str | None = None
    seed: int = 0
    latency_ns: int = 0
    interval: Counter = field(default_factory=Counter)
    totals: Counter = field(default_factory=Counter)
    hook_calls: Counter = field(default_factory=Counter)  # (listener, hook) -> calls
    blocks: dict = field(default_factory=dict)  # RAMBlocks: idstr -> size (ram_bytes_total)
    rounds: list = field(default_factory=list)
    vcpu_rows: list = field(default_factory=list)

    def _add(self, **counts: int) -> None:
        for key, n in counts.items():
            self.interval[key] += n
            self.totals[key] += n

    def apply(self, e: ev.Event) -> None:
        handler = _HANDLERS.get(type(e))
        if handler is not None:
            handler(self, e)

    def _run_started(self, e: ev.RunStarted) -> None:
        self.page_size, self.seed = e.page_size, e.seed
        self.latency_ns = e.scenario["network"]["latency"]
        self.expected_downtime = e.scenario["migration"]["downtime_limit"] // NS_PER_MS

    def _block_added(self, e: ev.RamBlockAdded) -> None:
        self.blocks[e.idstr] = e.size
        self.ram_bytes = sum(self.blocks.values())

    def _block_removed(self, e: ev.RamBlockRemoved) -> None:
        del self.blocks[e.idstr]
        self.ram_bytes = sum(self.blocks.values())

    def _status(self, e: ev.MigrationStatus) -> None:
        self.status = e.status
        if e.status == "setup":
            self.migrate_ns = e.t_ns
        elif e.status == "active":
            self.setup_end_ns = e.t_ns
        elif e.status in ("completed", "cancelled", "failed"):
            self.end_ns = e.t_ns

    def _transfer(self, e: ev.Transfer) -> None:
        self.transferred += e.bytes
        if e.kind != "device-state":
            self.normal += e.normal
            self.zero += e.zero
            self.dirty_pages -= e.normal + e.zero
            self._add(**{"resent": e.resent, "write-not-dirty": e.unchanged})
            if e.running:
                self.precopy_bytes += e.bytes
            else:
                self.downtime_bytes += e.bytes

    def _window(self, e: ev.RateWindow) -> None:
        self.mbps, self.pages_per_second = e.mbps, e.pages_per_second
        self.expected_downtime = e.expected_downtime

    def _vcpu_stats(self, e: ev.VcpuStats) -> None:
        self._add(**{"vcpu-writes": e.writes, "vcpu-faults": e.faults, "vcpu-fault-ns": e.fault_ns,
                     "ring-full-exits": e.ring_full_exits, "vcpu-ring-full-ns": e.ring_full_ns,
                     "vcpu-inhibit-ns": e.inhibit_ns})
        self.vcpu_rows.append({  # emitted inside the sync that ends the interval
            "dirty-sync-count": self.syncs + 1, "vcpu": e.vcpu, "writes": e.writes, "faults": e.faults,
            "fault-ms": round(e.fault_ns / NS_PER_MS, 3), "ring-full-exits": e.ring_full_exits,
            "ring-full-ms": round(e.ring_full_ns / NS_PER_MS, 3), "inhibit-ms": round(e.inhibit_ns / NS_PER_MS, 3)})

    def _lazy_clear(self, e: ev.LazyClear) -> None:
        self._add(**{"lazy-clears": 1})

    def _kvm_clear(self, e: ev.KvmClearDirtyLog) -> None:
        self._add(**{"reprotected-pages": e.reprotected, "thread-clear-ns": e.cost_ns})

    def _kvm_get(self, e: ev.KvmGetDirtyLog) -> None:
        self._add(**{"reprotected-pages": e.reprotected, "thread-get-ns": e.cost_ns})

    def _ring_reap(self, e: ev.DirtyRingReap) -> None:
        self._add(**{"ring-reaped": e.entries, "reprotected-pages": e.entries})
        if e.reason == "sync":
            self._add(**{"thread-reap-ns": e.cost_ns})

    def _vhost_sync(self, e: ev.VhostLogSync) -> None:
        self._add(**{"vhost-logged-pages": e.pages})

    def _listener_call(self, e: ev.ListenerCall) -> None:
        self.hook_calls[(e.listener, e.hook)] += 1

    def _stopped(self, e: ev.VcpusStopped) -> None:
        self.stop_ns = e.t_ns

    def _oracle(self, e: ev.OracleCheck) -> None:
        self.lost_pages, self.stale_pages = e.lost_pages, e.stale_pages
        self.unassigned_writes = max(self.unassigned_writes, e.unassigned_writes)
        if e.lost_pages and self.first_lost_ns is None:
            self.first_lost_ns, self.first_lost_at = e.t_ns, e.at

    def _finished(self, e: ev.RunFinished) -> None:
        self.stop_reason, self.error = e.stop_reason, e.error

    def _sync(self, e: ev.BitmapSync) -> None:
        self.syncs = e.dirty_sync_count
        self.dirty_pages = e.migration_dirty_pages
        self.dirty_pages_rate = e.dirty_pages_rate
        acc = self.interval
        row = {
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
            "sync-cost-us": e.cost_ns // 1000,
        }
        for key in INTERVAL_FIELDS:
            if key.endswith("-ns"):
                unit, div = ("-us", 1000) if key.startswith("thread") else ("-ms", NS_PER_MS)
                row[key.removesuffix("-ns") + unit] = round(acc[key] / div, 3)
            else:
                row[key] = acc[key]
        self.rounds.append(row)
        self.interval = Counter()


_HANDLERS = {  # event type -> what it changes in the fold (one dict lookup per event, not an isinstance chain)
    ev.RunStarted: _Fold._run_started, ev.RamBlockAdded: _Fold._block_added, ev.RamBlockRemoved: _Fold._block_removed,
    ev.MigrationStatus: _Fold._status, ev.Transfer: _Fold._transfer, ev.RateWindow: _Fold._window,
    ev.VcpuStats: _Fold._vcpu_stats, ev.LazyClear: _Fold._lazy_clear, ev.KvmClearDirtyLog: _Fold._kvm_clear,
    ev.KvmGetDirtyLog: _Fold._kvm_get, ev.DirtyRingReap: _Fold._ring_reap, ev.VhostLogSync: _Fold._vhost_sync,
    ev.ListenerCall: _Fold._listener_call, ev.BitmapSync: _Fold._sync, ev.VcpusStopped: _Fold._stopped,
    ev.OracleCheck: _Fold._oracle, ev.RunFinished: _Fold._finished,
}


def fold(events: list[ev.Event]) -> _Fold:
    f = _Fold()
    for e in events:
        f.apply(e)
    return f


def rounds(events: list[ev.Event]) -> list[dict]:
    """One row per ``migration_bitmap_sync``, with guestperf's query-migrate fields."""
    return fold(events).rounds


VCPU_FIELDS = ["dirty-sync-count", "vcpu", "writes", "faults", "fault-ms", "ring-full-exits", "ring-full-ms",
               "inhibit-ms"]


def vcpu_rounds(events: list[ev.Event]) -> list[dict]:
    """One row per vCPU per sync: its writes, faults and stalls since the previous sync."""
    return fold(events).vcpu_rows


def csv_bytes(rows: list[dict], fields: list[str] = ROUND_FIELDS) -> bytes:
    """Rows as CSV (the rounds table by default)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def summary(events: list[ev.Event], f: _Fold | None = None) -> dict:
    """The final ``query-migrate`` answer (``populate_ram_info`` / ``populate_time_info``) + ``dirtysim``.

    ``f``: the fold of ``events`` when the caller already has it.
    """
    f = fold(events) if f is None else f
    last_ns = events[-1].t_ns if events else 0
    start = f.migrate_ns if f.migrate_ns is not None else last_ns
    end = f.end_ns if f.end_ns is not None else last_ns
    ms = lambda t: t // NS_PER_MS  # noqa: E731 - QEMU subtracts times already truncated to ms
    total_ms = ms(end) - ms(start)
    setup_ms = ms(f.setup_end_ns) - ms(start) if f.setup_end_ns is not None else None
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
    status = {"error": "failed", "interrupted": "cancelled"}.get(f.stop_reason, f.status)
    out = {"status": status, "total-time": total_ms}
    if setup_ms is not None:
        out["setup-time"] = setup_ms
    if completed and f.stop_ns is not None:
        out["downtime"] = ms(end) - ms(f.stop_ns)
    elif not completed:
        out["expected-downtime"] = f.expected_downtime
    out["ram"] = ram
    if f.error:
        out["error-desc"] = f.error
    t = f.totals
    out["dirtysim"] = {
        "stop-reason": f.stop_reason,
        "lost-pages": f.lost_pages,
        "stale-pages": f.stale_pages,
        "unassigned-writes": f.unassigned_writes,
        "first-lost-ms": (f.first_lost_ns - start) // NS_PER_MS if f.first_lost_ns is not None else None,
        "first-lost-at": f.first_lost_at,
        "seed": f.seed,
        "downtime-ns": (end - f.stop_ns) if completed and f.stop_ns is not None else None,
        "guest-downtime-ms": round((end - f.stop_ns + f.latency_ns) / NS_PER_MS, 3)
        if completed and f.stop_ns is not None else None,
        "resent-pages": t["resent"],
        "write-not-dirty-pages": t["write-not-dirty"],
        "vcpu-faults": t["vcpu-faults"],
        "vcpu-fault-ms": round(t["vcpu-fault-ns"] / NS_PER_MS, 3),
        "ring-full-exits": t["ring-full-exits"],
        "vcpu-ring-full-ms": round(t["vcpu-ring-full-ns"] / NS_PER_MS, 3),
        "vcpu-inhibit-ms": round(t["vcpu-inhibit-ns"] / NS_PER_MS, 3),
        "vhost-logged-pages": t["vhost-logged-pages"],
        "thread-ioctl-ms": round((t["thread-get-ns"] + t["thread-clear-ns"] + t["thread-reap-ns"]) / NS_PER_MS, 3),
        "listener-calls": {f"{listener}.{hook}": n for (listener, hook), n in sorted(f.hook_calls.items())},
        "events": len(events),
    }
    return out
