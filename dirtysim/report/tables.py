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
from .postcopy import destination_info

NS_PER_MS = 10**6
MIB = 1 << 20

ROUND_FIELDS = [
    "time", "dirty-sync-count", "reason", "transferred", "remaining", "dirty-pages-rate", "mbps",
    "expected-downtime", "new-dirty-pages", "threshold-size", "pending-before", "duplicate", "normal",
    "resent", "write-not-dirty", "vcpu-writes", "vcpu-faults", "vcpu-fault-ms", "ring-full-exits",
    "vcpu-ring-full-ms", "vcpu-inhibit-ms", "vhost-logged-pages", "ring-reaped", "lazy-clears", "reprotected-pages",
    "thread-get-us", "thread-clear-us", "thread-reap-us", "sync-cost-us",
    # convergence controls (schema 2)
    "cpu-throttle-percentage", "dirty-limit-throttle-time-per-round", "dirty-limit-ring-full-time", "vcpu-throttle-ms",
    "vcpu-dirtylimit-ms", "bytes-dirty-period", "dirty-rate-high-cnt",
    # the sending side (schema 3)
    "thread-send-us", "migration-thread-busy", "multifd-send-ms", "multifd-busy",
    # the BQL (schema 6)
    "mmio-exits", "vcpu-mmio-ms", "vcpu-bql-wait-ms", "thread-bql-wait-us", "reaper-bql-wait-ms",
]
# Per-interval counters (reset at every sync) and what they are folded from.
INTERVAL_FIELDS = ("resent", "write-not-dirty", "vcpu-writes", "vcpu-faults", "vcpu-fault-ns", "ring-full-exits",
                   "vcpu-ring-full-ns", "vcpu-inhibit-ns", "vhost-logged-pages", "ring-reaped", "lazy-clears", "reprotected-pages",
                   "thread-get-ns", "thread-clear-ns", "thread-reap-ns", "vcpu-throttle-ns", "vcpu-dirtylimit-ns",
                   "thread-send-ns", "multifd-send-ns", "mmio-exits", "vcpu-mmio-ns", "vcpu-bql-wait-ns",
                   "thread-bql-wait-ns", "reaper-bql-wait-ns")


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
    # convergence controls
    auto_converge: bool = False  # the scenario's capabilities (fixed for the run, as in QEMU)
    dirty_limit: bool = False
    cpu_throttle_percentage: int = 0  # cpu_throttle_get_percentage() now
    max_cpu_throttle_percentage: int = 0
    dirty_limit_in_service: bool = False  # from the first dirty-limit set (nothing cancels it during a run)
    dirty_limit_throttle_time_per_round: int = 0  # us, from the last round (0 once cancelled)
    dirty_limit_ring_full_time: int = 0  # us, likewise
    parameter_changes: list = field(default_factory=list)  # (t_ns, parameters)
    samples: list = field(default_factory=list)  # (GuestSample, cpu-throttle-percentage when it was taken)
    # the sending side
    multifd_channels: int = 0  # 0 without multifd
    multifd_bytes: int = 0
    last_sync_ns: int | None = None  # the previous round's end, for busy fractions
    switchover: Counter = field(default_factory=Counter)  # downtime parts: stop steps, final sync, device state
    xbzrle_cache: dict | None = None  # query-migrate's xbzrle-cache after the last sync (with xbzrle only)
    # postcopy
    nvcpus: int = 0
    postcopy_blocktime: bool = False  # the destination's capability: query-migrate shows the blocktime fields
    postcopy_ns: int | None = None  # downtime end: the status became postcopy-active
    postcopy_running_ns: int | None = None  # the guest resumed on the destination
    postcopy_bytes: int = 0
    faults: list = field(default_factory=list)  # (vcpu, page, fault ns, resolved ns, request ns, served)
    double_placed: int = 0
    clobbered: int = 0

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
        caps = e.scenario["migration"].get("capabilities", {})  # absent from schema-1 logs: both off
        self.auto_converge, self.dirty_limit = caps.get("auto_converge", False), caps.get("dirty_limit", False)
        if caps.get("multifd", False):
            self.multifd_channels = e.scenario["migration"]["multifd_channels"]
        self.postcopy_blocktime = caps.get("postcopy_blocktime", False)
        self.nvcpus = sum(g["count"] for g in e.scenario.get("machine", {}).get("vcpus", []))

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
        elif e.status == "postcopy-active":
            self.postcopy_ns = e.t_ns
        elif e.status in ("completed", "cancelled", "failed"):
            self.end_ns = e.t_ns

    def _transfer(self, e: ev.Transfer) -> None:
        """``ram_transferred_add``: the bytes RAM's code passes to it (``ram_bytes``) go to precopy-bytes while
        the VM runs, postcopy-bytes once in postcopy, else downtime-bytes; everything else written (the stream
        and section framing, ram_save_setup's block list, the device state, the vmdesc, multifd packets,
        postcopy's commands) only to transferred."""
        self.transferred += e.bytes
        if e.kind in POSTCOPY_COMMANDS:
            if e.kind == "postcopy-package":  # the device state, packaged; the discard counts as RAM
                self.switchover["device-state"] += e.wire_ns
            return
        if e.kind in ("device-state", "vmdesc"):
            self.switchover["device-state"] += e.wire_ns
        else:
            self.normal += e.normal
            self.zero += e.zero
            self.dirty_pages -= e.pages
            self._add(**{"resent": e.resent, "write-not-dirty": e.unchanged, "thread-send-ns": e.cpu_ns,
                         "multifd-send-ns": e.channel_ns})
            self.multifd_bytes += e.multifd_bytes
            if e.running:
                self.precopy_bytes += e.ram_bytes
            elif self.postcopy_ns is not None:
                self.postcopy_bytes += e.ram_bytes
            else:
                self.downtime_bytes += e.ram_bytes

    def _window(self, e: ev.RateWindow) -> None:
        self.mbps, self.pages_per_second = e.mbps, e.pages_per_second
        self.expected_downtime = e.expected_downtime

    def _vcpu_stats(self, e: ev.VcpuStats) -> None:
        self._add(**{"vcpu-writes": e.writes, "vcpu-faults": e.faults, "vcpu-fault-ns": e.fault_ns,
                     "ring-full-exits": e.ring_full_exits, "vcpu-ring-full-ns": e.ring_full_ns,
                     "vcpu-inhibit-ns": e.inhibit_ns, "vcpu-throttle-ns": e.throttle_ns,
                     "vcpu-dirtylimit-ns": e.dirtylimit_ns, "pml-logged-pages": e.pml_logged,
                     "pml-full-exits": e.pml_full_exits, "vcpu-pml-full-ns": e.pml_full_ns,
                     "mmio-exits": e.mmio_exits, "vcpu-mmio-ns": e.mmio_ns, "vcpu-bql-wait-ns": e.bql_wait_ns})
        self.vcpu_rows.append({  # emitted inside the sync that ends the interval
            "dirty-sync-count": self.syncs + 1, "vcpu": e.vcpu, "writes": e.writes, "faults": e.faults,
            "fault-ms": round(e.fault_ns / NS_PER_MS, 3), "ring-full-exits": e.ring_full_exits,
            "ring-full-ms": round(e.ring_full_ns / NS_PER_MS, 3), "inhibit-ms": round(e.inhibit_ns / NS_PER_MS, 3),
            "throttle-ms": round(e.throttle_ns / NS_PER_MS, 3), "dirtylimit-ms": round(e.dirtylimit_ns / NS_PER_MS, 3),
            "mmio-exits": e.mmio_exits, "bql-wait-ms": round(e.bql_wait_ns / NS_PER_MS, 3)})

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
        elif e.reason == "reaper":
            self._add(**{"reaper-bql-wait-ns": e.bql_wait_ns})

    def _vhost_sync(self, e: ev.VhostLogSync) -> None:
        self._add(**{"vhost-logged-pages": e.pages})

    def _listener_call(self, e: ev.ListenerCall) -> None:
        self.hook_calls[(e.listener, e.hook)] += 1

    def _stopped(self, e: ev.VcpusStopped) -> None:
        self.stop_ns = e.t_ns

    def _xbzrle_cache(self, e: ev.XbzrleCache) -> None:
        self.xbzrle_cache = {"cache-size": e.cache_size, "bytes": e.bytes, "pages": e.pages, "cache-miss": e.cache_miss,
                             "cache-miss-rate": e.cache_miss_rate, "encoding-rate": e.encoding_rate,
                             "overflow": e.overflow}

    def _switchover_step(self, e: ev.SwitchoverStep) -> None:
        self.switchover[e.step] += e.cost_ns

    def _oracle(self, e: ev.OracleCheck) -> None:
        self.lost_pages, self.stale_pages = e.lost_pages, e.stale_pages
        self.double_placed, self.clobbered = e.double_placed, e.clobbered
        self.unassigned_writes = max(self.unassigned_writes, e.unassigned_writes)
        if e.lost_pages and self.first_lost_ns is None:
            self.first_lost_ns, self.first_lost_at = e.t_ns, e.at

    def _cpu_throttle(self, e: ev.CpuThrottle) -> None:
        self.cpu_throttle_percentage = e.percentage
        self.max_cpu_throttle_percentage = max(self.max_cpu_throttle_percentage, e.percentage)

    def _dirty_limit(self, e: ev.DirtyLimit) -> None:
        """A set starts the service (for the rest of the run), a round gives the reported values."""
        self.dirty_limit_in_service = True
        if e.reason == "round":
            self.dirty_limit_throttle_time_per_round, self.dirty_limit_ring_full_time = \
                e.throttle_time_per_round, e.ring_full_time

    def _set_parameters(self, e: ev.MigrateSetParameters) -> None:
        self.parameter_changes.append((e.t_ns, e.parameters))

    def _guest_sample(self, e: ev.GuestSample) -> None:
        self.samples.append((e, self.cpu_throttle_percentage))

    def busy(self, acc: Counter, elapsed_ns: int) -> dict:
        """Share of ``elapsed_ns`` the migration thread spent sending pages, and each multifd sender on average.

        The thread's page work only (``migration/sending.py``); its ioctls are
        ``thread-get/clear/reap-us``. 0 over an empty interval, and for the senders without multifd.
        """
        if elapsed_ns <= 0:
            return {"migration-thread-busy": 0.0, "multifd-busy": 0.0}
        senders = acc["multifd-send-ns"] / (elapsed_ns * self.multifd_channels) if self.multifd_channels else 0.0
        return {"migration-thread-busy": round(acc["thread-send-ns"] / elapsed_ns, 4), "multifd-busy": round(senders, 4)}

    def ms_since_migrate(self, t_ns: int) -> float:
        """rounds.csv's ``time`` convention: ms since ``migrate`` (the setup status), or since 0 without one.

        Taken from the finished fold for events that may precede the migration
        (guest samples, parameter changes): they are then negative.
        """
        return round((t_ns - (self.migrate_ns or 0)) / NS_PER_MS, 3)

    def _postcopy_running(self, e: ev.PostcopyRunning) -> None:
        self.postcopy_running_ns = e.t_ns

    def _postcopy_fault(self, e: ev.PostcopyFault) -> None:
        self.faults.append((e.vcpu, e.page, e.fault_ns, e.t_ns, e.request_ns, e.served))

    def _finished(self, e: ev.RunFinished) -> None:
        self.stop_reason, self.error = e.stop_reason, e.error

    def _sync(self, e: ev.BitmapSync) -> None:
        if e.reason in ("final", "postcopy-discard"):  # the sync with the VM stopped
            self.switchover["final-sync"] += e.cost_ns
        self.syncs = e.dirty_sync_count
        self.dirty_pages = e.migration_dirty_pages
        self.dirty_pages_rate = e.dirty_pages_rate
        self._add(**{"thread-bql-wait-ns": e.bql_wait_ns})
        acc = self.interval
        row = {
            "time": self.ms_since_migrate(e.t_ns),
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
            "cpu-throttle-percentage": self.cpu_throttle_percentage,  # as query-migrate shows it after this sync
            "dirty-limit-throttle-time-per-round": self.dirty_limit_throttle_time_per_round,
            "dirty-limit-ring-full-time": self.dirty_limit_ring_full_time,
            "bytes-dirty-period": e.bytes_dirty_period,
            "dirty-rate-high-cnt": e.dirty_rate_high_cnt,
            **self.busy(acc, e.t_ns - (self.last_sync_ns if self.last_sync_ns is not None else e.t_ns)),
        }
        self.last_sync_ns = e.t_ns
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
    ev.VcpuStats: _Fold._vcpu_stats, ev.SwitchoverStep: _Fold._switchover_step, ev.XbzrleCache: _Fold._xbzrle_cache, ev.LazyClear: _Fold._lazy_clear, ev.KvmClearDirtyLog: _Fold._kvm_clear,
    ev.KvmGetDirtyLog: _Fold._kvm_get, ev.DirtyRingReap: _Fold._ring_reap, ev.VhostLogSync: _Fold._vhost_sync,
    ev.ListenerCall: _Fold._listener_call, ev.BitmapSync: _Fold._sync, ev.VcpusStopped: _Fold._stopped,
    ev.OracleCheck: _Fold._oracle, ev.RunFinished: _Fold._finished, ev.CpuThrottle: _Fold._cpu_throttle,
    ev.DirtyLimit: _Fold._dirty_limit, ev.MigrateSetParameters: _Fold._set_parameters,
    ev.GuestSample: _Fold._guest_sample, ev.PostcopyRunning: _Fold._postcopy_running,
    ev.PostcopyFault: _Fold._postcopy_fault,
}
POSTCOPY_COMMANDS = ("postcopy-discard", "postcopy-package", "postcopy-ping", "postcopy-end")


def fold(events: list[ev.Event]) -> _Fold:
    f = _Fold()
    for e in events:
        f.apply(e)
    return f


def rounds(events: list[ev.Event]) -> list[dict]:
    """One row per ``migration_bitmap_sync``, with guestperf's query-migrate fields."""
    return fold(events).rounds


VCPU_FIELDS = ["dirty-sync-count", "vcpu", "writes", "faults", "fault-ms", "ring-full-exits", "ring-full-ms",
               "inhibit-ms", "throttle-ms", "dirtylimit-ms", "mmio-exits", "bql-wait-ms"]


def vcpu_rounds(events: list[ev.Event]) -> list[dict]:
    """One row per vCPU per sync: its writes, faults and stalls since the previous sync."""
    return fold(events).vcpu_rows


GUEST_FIELDS = ["time-ms", "vcpu", "interval-ms", "run-fraction", "writes", "write-mib-s", "throttle-ms",
                "dirtylimit-ms", "cpu-throttle-percentage"]


def guest_rows(events: list[ev.Event], f: _Fold | None = None) -> list[dict]:
    """guest.csv: one row per ``guest-sample`` per vCPU, what the guest got out of each sampling interval.

    ``time-ms`` is when the sample was taken (the end of its interval), in
    rounds.csv's convention (ms since migrate; negative before it).
    ``run-fraction`` = ``ran_ns / interval_ns``; ``write-mib-s`` = page writes x
    page size over the interval. ``throttle-ms`` and ``dirtylimit-ms`` are the
    sleeps imposed in the interval: a long dirty-limit sleep counts whole in the
    interval that imposed it, so it can exceed ``interval-ms`` (``run-fraction``
    shows what the guest then lost). ``cpu-throttle-percentage`` is the one in
    force when the sample was taken. ``f``: the fold of ``events`` if known.
    """
    f = fold(events) if f is None else f
    rows = []
    for e, pct in f.samples:
        t, span = f.ms_since_migrate(e.t_ns), e.interval_ns
        for v, (ran, writes, thr, dl) in enumerate(zip(e.ran_ns, e.writes, e.throttle_ns, e.dirtylimit_ns)):
            rows.append({"time-ms": t, "vcpu": v, "interval-ms": round(span / NS_PER_MS, 3),
                         "run-fraction": round(ran / span, 6), "writes": writes,
                         "write-mib-s": round(writes * f.page_size / MIB / (span / 1e9), 3),
                         "throttle-ms": round(thr / NS_PER_MS, 3), "dirtylimit-ms": round(dl / NS_PER_MS, 3),
                         "cpu-throttle-percentage": pct})
    return rows


def guest_slowdown(f: _Fold) -> dict:
    """What the migration cost the guest, from the ``guest-sample`` events of a finished fold.

    - ``run-fraction``: the sum of ``ran_ns`` over every vCPU and every sample
      taken during the migration, over the sum of their ``interval_ns`` (each
      interval counted once per vCPU): the share of its time the guest ran.
    - ``write-rate-mib-s``: the guest's page writes (all vCPUs) in those
      samples x page size, in MiB, over the sum of their intervals in seconds:
      its mean write rate while migrating.
    - ``before-write-rate-mib-s``: the same over the samples taken before it.

    A sample is *during* the migration when its interval starts at or after
    ``migrate`` (the setup status) and it was taken no later than the vCPUs
    stopped for the switchover or the migration ended (completed, cancelled,
    failed), whichever came first, or the end of the log; it is *before* when
    taken at or before ``migrate`` (every sample, if no migration started). A
    sample straddling the start, or taken after the stop, is in neither: the
    figures never mix in time outside the window. A value is null without a sample.
    """
    start = f.migrate_ns
    ends = [t for t in (f.stop_ns, f.end_ns) if t is not None]
    last = min(ends) if ends else None
    during = [e for e, _ in f.samples if start is not None and e.t_ns - e.interval_ns >= start
              and (last is None or e.t_ns <= last)]
    before = [e for e, _ in f.samples if start is None or e.t_ns <= start]
    ran = sum(sum(e.ran_ns) for e in during)
    span = sum(e.interval_ns * len(e.ran_ns) for e in during)
    return {"run-fraction": round(ran / span, 6) if span else None,
            "write-rate-mib-s": _write_rate(during, f.page_size),
            "before-write-rate-mib-s": _write_rate(before, f.page_size)}


def _write_rate(samples: list[ev.GuestSample], page_size: int) -> float | None:
    """MiB/s the whole guest wrote over these samples' intervals (None for no samples)."""
    span = sum(e.interval_ns for e in samples)
    return round(sum(sum(e.writes) for e in samples) * page_size / MIB / (span / 1e9), 3) if span else None


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
        "postcopy-bytes": f.postcopy_bytes,
        "multifd-bytes": f.multifd_bytes,
        "page-size": f.page_size,
    }
    if not completed:
        ram["dirty-pages-rate"] = f.dirty_pages_rate
    status = {"error": "failed", "interrupted": "cancelled"}.get(f.stop_reason, f.status)
    out = {"status": status, "total-time": total_ms}
    if setup_ms is not None:
        out["setup-time"] = setup_ms
    downtime_end = f.postcopy_ns if f.postcopy_ns is not None else end  # postcopy: migration_downtime_end
    if (completed or f.postcopy_ns is not None) and f.stop_ns is not None:
        out["downtime"] = ms(downtime_end) - ms(f.stop_ns)
    elif not completed:
        out["expected-downtime"] = f.expected_downtime
    out["ram"] = ram
    if f.postcopy_ns is not None:  # populate_ram_info: postcopy-requests (ram_save_queue_pages, each REQ_PAGES)
        ram["postcopy-requests"] = sum(1 for x in f.faults if x[4] <= end)
    if f.xbzrle_cache is not None:
        out["xbzrle-cache"] = f.xbzrle_cache
    out.update(_convergence_info(f))
    if f.error:
        out["error-desc"] = f.error
    if f.postcopy_ns is not None and f.postcopy_blocktime:  # fill_destination_postcopy_migration_info
        out["destination"] = destination_info([x[:4] for x in f.faults], f.nvcpus)
    t = f.totals
    out["dirtysim"] = {
        "stop-reason": f.stop_reason,
        "lost-pages": f.lost_pages,
        "stale-pages": f.stale_pages,
        "unassigned-writes": f.unassigned_writes,
        "first-lost-ms": (f.first_lost_ns - start) // NS_PER_MS if f.first_lost_ns is not None else None,
        "first-lost-at": f.first_lost_at,
        "seed": f.seed,
        "downtime-ns": (downtime_end - f.stop_ns) if "downtime" in out else None,
        "guest-downtime-ms": round((downtime_end - f.stop_ns + f.latency_ns) / NS_PER_MS, 3)
        if "downtime" in out else None,
        "resent-pages": t["resent"],
        "write-not-dirty-pages": t["write-not-dirty"],
        "vcpu-faults": t["vcpu-faults"],
        "vcpu-fault-ms": round(t["vcpu-fault-ns"] / NS_PER_MS, 3),
        "ring-full-exits": t["ring-full-exits"],
        "vcpu-ring-full-ms": round(t["vcpu-ring-full-ns"] / NS_PER_MS, 3),
        "pml-logged-pages": t["pml-logged-pages"],
        "pml-full-exits": t["pml-full-exits"],
        "vcpu-pml-full-ms": round(t["vcpu-pml-full-ns"] / NS_PER_MS, 3),
        "vcpu-inhibit-ms": round(t["vcpu-inhibit-ns"] / NS_PER_MS, 3),
        # the BQL: vCPUs' MMIO exits and their waits (with ring-full reaps' waits), the threads' waits
        "mmio-exits": t["mmio-exits"],
        "vcpu-mmio-ms": round(t["vcpu-mmio-ns"] / NS_PER_MS, 3),
        "vcpu-bql-wait-ms": round(t["vcpu-bql-wait-ns"] / NS_PER_MS, 3),
        "migration-bql-wait-ms": round(t["thread-bql-wait-ns"] / NS_PER_MS, 3),
        "reaper-bql-wait-ms": round(t["reaper-bql-wait-ns"] / NS_PER_MS, 3),
        "vhost-logged-pages": t["vhost-logged-pages"],
        "thread-ioctl-ms": round((t["thread-get-ns"] + t["thread-clear-ns"] + t["thread-reap-ns"]) / NS_PER_MS, 3),
        "listener-calls": {f"{listener}.{hook}": n for (listener, hook), n in sorted(f.hook_calls.items())},
        "events": len(events),
        "max-cpu-throttle-percentage": f.max_cpu_throttle_percentage,
        # the sleeps of the synced intervals (vcpu-stats), as vcpu-fault-ms; guest.csv has them to the end of the run
        "vcpu-throttle-ms": round(t["vcpu-throttle-ns"] / NS_PER_MS, 3),
        "vcpu-dirtylimit-ms": round(t["vcpu-dirtylimit-ns"] / NS_PER_MS, 3),
        "parameter-changes": [{"time-ms": f.ms_since_migrate(t_ns), "parameters": params}
                              for t_ns, params in f.parameter_changes],
        "guest-slowdown": guest_slowdown(f),
        # the sending side over the whole migration (setup to the end): migration thread and multifd senders
        **f.busy(f.totals, end - (f.setup_end_ns if f.setup_end_ns is not None else end)),
        "downtime-breakdown-ms": downtime_breakdown(f, downtime_end) if "downtime" in out else None,
    }
    if f.postcopy_ns is not None:
        out["dirtysim"].update(_postcopy_info(f, end))
    return out


def _postcopy_info(f: _Fold, end: int) -> dict:
    """dirtysim's postcopy figures: how long it lasted, the faults by how they were served, the oracle's counts."""
    served = Counter(x[5] for x in f.faults)
    return {"postcopy-ms": round((end - f.postcopy_ns) / NS_PER_MS, 3), "postcopy-faults": len(f.faults),
            "postcopy-faults-served": dict(sorted(served.items())),
            "postcopy-wait-ms": round(sum(x[3] - x[2] for x in f.faults) / NS_PER_MS, 3),
            "double-placed-pages": f.double_placed, "clobbered-pages": f.clobbered}


SWITCHOVER_PARTS = ("vm-stop", "vhost-stop", "block-drain", "final-sync", "ram", "device-state")


def downtime_breakdown(f: _Fold, end_ns: int) -> dict:
    """Where the downtime went (ms): stopping the VM, the final sync, the remaining RAM, the device state.

    ``ram`` is the rest: the pages sent after the final sync, the EOS and any multifd sync.
    """
    parts = {k: f.switchover[k] for k in SWITCHOVER_PARTS if k != "ram"}
    parts["ram"] = end_ns - f.stop_ns - sum(parts.values())
    return {k: round(parts[k] / NS_PER_MS, 3) for k in SWITCHOVER_PARTS}


def _convergence_info(f: _Fold) -> dict:
    """query-migrate's throttle fields (``populate_ram_info``), present under the same conditions as in QEMU.

    ``cpu-throttle-percentage`` while the throttle is active (``cpu_throttle_active``:
    not after the migration ends, which stops it); the dirty-limit pair when
    dirty-limit is on and its service runs (``dirtylimit_in_service``), with the
    values of its last round.
    """
    info = {}
    if f.auto_converge and f.cpu_throttle_percentage:
        info["cpu-throttle-percentage"] = f.cpu_throttle_percentage
    if f.dirty_limit and f.dirty_limit_in_service:
        info["dirty-limit-throttle-time-per-round"] = f.dirty_limit_throttle_time_per_round
        info["dirty-limit-ring-full-time"] = f.dirty_limit_ring_full_time
    return info
