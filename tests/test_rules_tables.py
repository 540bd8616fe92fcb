"""The rounds table and the query-migrate summary recomputed by hand from a small, hand-built event log.

``report.tables`` folds the event log; these tests do not fold anything: each
expected number is written as arithmetic on the events' fields below, following
QEMU's ``migration_bitmap_sync`` (rounds), ``populate_ram_info`` and
``populate_time_info`` (summary, ``migration/migration.c``).
"""

from __future__ import annotations

import pytest

from dirtysim.events import schema as ev
from dirtysim.report import tables

pytestmark = pytest.mark.rules

MS = 10**6
PAGE = 4096
MIB = 1 << 20

# Times chosen so that QEMU's subtraction of times already truncated to ms differs from truncating the difference.
SETUP_T = 200_900_000  # 200 ms
ACTIVE_T = 202_100_000  # 202 ms: setup-time 2
STOP_T = 1_100_000_000
END_T = 1_234_100_000  # 1234 ms: total-time 1034 (not (END_T - SETUP_T) // MS = 1033)
LATENCY = 2_500_060  # guest downtime 136.60006 ms: shown as 136.6


def _log(*events: tuple) -> list[ev.Event]:
    """Events from (class, t_ns, fields) with seq numbered from 0."""
    return [cls(seq=i, t_ns=t, **fields) for i, (cls, t, fields) in enumerate(events)]


def _started(seed=7, latency=LATENCY, downtime_limit=250 * MS + 400_000, page_size=PAGE):
    return (ev.RunStarted, 0, dict(name="t", seed=seed, version="0", schema_version=1, ram_bytes=8 * MIB,
                                   page_size=page_size,
                                   scenario={"network": {"latency": latency},
                                             "migration": {"downtime_limit": downtime_limit}}))


def _sync(t, count, reason, dirty, new=0, pending=0, threshold=0, rate=0, closed=False, cost=0, bql_ns=0):
    return (ev.BitmapSync, t, dict(dirty_sync_count=count, reason=reason, pending_before=pending,
                                   threshold_size=threshold, new_dirty_pages=new, migration_dirty_pages=dirty,
                                   period_closed=closed, dirty_pages_rate=rate, cost_ns=cost, bql_wait_ns=bql_ns))


def _pages(t, normal, zero, nbytes, running=True, resent=0, unchanged=0, cpu_ns=0, channel_ns=0):
    return (ev.Transfer, t, dict(kind="pages", bytes=nbytes, wire_ns=1, running=running, block="pc.ram",
                                 normal=normal, zero=zero, resent=resent, unchanged=unchanged, cpu_ns=cpu_ns,
                                 channel_ns=channel_ns, ram_bytes=nbytes))  # save_normal/zero_page: ram_transferred_add


def _vcpu(t, vcpu, writes, faults, fault_ns, exits=0, ring_ns=0, inhibit_ns=0, mmio=0, bql_ns=0):
    return (ev.VcpuStats, t, dict(vcpu=vcpu, writes=writes, faults=faults, fault_ns=fault_ns, ring_full_exits=exits,
                                  ring_full_ns=ring_ns, inhibit_ns=inhibit_ns, mmio_exits=mmio, mmio_ns=mmio * 5_000,
                                  bql_wait_ns=bql_ns))


def _window(t, mbps, pps, downtime, bandwidth=1.0):
    return (ev.RateWindow, t, dict(time_spent_ms=100, transferred=1, bandwidth=bandwidth, threshold_size=1,
                                   mbps=mbps, pages_per_second=pps, expected_downtime=downtime))


def _completed_log() -> list[ev.Event]:
    """A completed migration of 8 MiB (2048 pages): setup sync, one exact sync, downtime, final sync."""
    return _log(
        _started(),
        (ev.RamBlockAdded, 0, dict(idstr="pc.ram", offset=0, size=8 * MIB)),
        (ev.RamBlockAdded, 0, dict(idstr="extra", offset=8 * MIB, size=4 * MIB)),
        (ev.RamBlockAdded, 0, dict(idstr="rom", offset=12 * MIB, size=MIB)),
        (ev.RamBlockRemoved, 0, dict(idstr="extra")),  # ram total: 8 + 1 MiB
        (ev.ListenerCall, 0, dict(listener="kvm-memory", hook="log_sync")),
        (ev.ListenerCall, 0, dict(listener="kvm-memory", hook="log_sync")),
        (ev.ListenerCall, 0, dict(listener="vhost", hook="log_start")),
        (ev.MigrationStatus, SETUP_T, dict(status="setup")),
        _sync(SETUP_T + 300_060, 1, "setup", dirty=2304, cost=12_345, bql_ns=2_500_000),  # 9 MiB / 4 KiB
        (ev.MigrationStatus, ACTIVE_T, dict(status="active")),
        (ev.Transfer, ACTIVE_T, dict(kind="setup", bytes=100, wire_ns=1, running=True)),
        _pages(300 * MS, normal=1000, zero=800, nbytes=4_200_000, resent=3, unchanged=2, cpu_ns=99_640_000),
        _vcpu(305 * MS, 0, writes=50, faults=3, fault_ns=6_400, exits=1, ring_ns=1_500_300, inhibit_ns=250_100),
        _vcpu(305 * MS, 1, writes=70, faults=4, fault_ns=8_000, exits=2, ring_ns=2_250_000, inhibit_ns=250_000),
        (ev.LazyClear, 306 * MS, dict(block="pc.ram", chunk=0, start=0, size=MIB)),
        (ev.LazyClear, 306 * MS, dict(block="pc.ram", chunk=1, start=MIB, size=MIB)),
        (ev.KvmClearDirtyLog, 306 * MS, dict(slot=0, first_page=0, num_pages=256, reprotected=7, cost_ns=511)),
        (ev.KvmGetDirtyLog, 306 * MS, dict(slot=0, pages=9, reprotected=4, cost_ns=7_000)),
        (ev.DirtyRingReap, 306 * MS, dict(reason="sync", vcpu=-1, entries=9, cost_ns=1_107)),
        (ev.DirtyRingReap, 306 * MS, dict(reason="reaper", vcpu=-1, entries=5, cost_ns=615)),
        (ev.VhostLogSync, 306 * MS, dict(device="vhost0", pages=6, harvest="exchange", cost_ns=10)),
        _window(310 * MS, mbps=336.1234, pps=25_000.5678, downtime=42),
        _sync(400 * MS, 2, "exact", dirty=2304 - 1800 + 120, new=120, pending=2_000_000, threshold=3_000_000,
              rate=0, cost=1_000_000),
        _pages(500 * MS, normal=400, zero=100, nbytes=1_700_000, resent=5, unchanged=1, cpu_ns=50_000_000,
               channel_ns=7),  # senders' time without multifd counts nowhere (it cannot happen)
        _vcpu(1_050 * MS, 0, writes=9, faults=1, fault_ns=2_000),
        _vcpu(1_050 * MS, 1, writes=8, faults=0, fault_ns=0, mmio=7, bql_ns=1_234_567),
        _window(1_060 * MS, mbps=400.0, pps=30_000.0, downtime=17),
        (ev.VcpusStopped, STOP_T, {}),
        (ev.SwitchoverStep, STOP_T, dict(step="vm-stop", cost_ns=40_000)),
        _sync(STOP_T + 100_000, 3, "final", dirty=624 - 500 + 30, new=30, pending=500_000, threshold=3_000_000,
              rate=55, closed=True, cost=1_500),
        _pages(1_200 * MS, normal=100, zero=4, nbytes=420_000, running=False, resent=1),
        _pages(1_201 * MS, normal=50, zero=0, nbytes=200_000, running=False),
        (ev.Transfer, 1_210 * MS, dict(kind="device-state", bytes=5_000, wire_ns=1, running=False, normal=99)),
        (ev.OracleCheck, 1_220 * MS, dict(at="send-before-clear", stale_pages=0, lost_pages=0, unassigned_writes=6)),
        (ev.OracleCheck, 1_225 * MS, dict(at="clear-all", stale_pages=4, lost_pages=3, unassigned_writes=9)),
        (ev.OracleCheck, 1_230 * MS, dict(at="switchover", stale_pages=2, lost_pages=1, unassigned_writes=8)),
        (ev.MigrationStatus, END_T, dict(status="completed")),
        (ev.RunFinished, END_T + 5 * MS, dict(stop_reason="completed")),  # the end is the status, not the last event
    )


def test_rounds_from_first_principles():
    """One row per ``migration_bitmap_sync``: counters at the sync, per-interval sums reset at each sync."""
    rows = tables.rounds(_completed_log())
    assert [r["dirty-sync-count"] for r in rows] == [1, 2, 3]
    assert [r["reason"] for r in rows] == ["setup", "exact", "final"]
    # time since the setup status, in ms with 3 decimals
    assert [r["time"] for r in rows] == [0.3, 199.1, 899.2]
    # bytes on the wire before each sync: setup marker, then each page transfer, then nothing more
    assert [r["transferred"] for r in rows] == [0, 100 + 4_200_000, 100 + 4_200_000 + 1_700_000]
    assert [r["remaining"] for r in rows] == [2304 * PAGE, 624 * PAGE, 154 * PAGE]
    assert [r["new-dirty-pages"] for r in rows] == [0, 120, 30]
    assert [r["threshold-size"] for r in rows] == [0, 3_000_000, 3_000_000]
    assert [r["pending-before"] for r in rows] == [0, 2_000_000, 500_000]
    assert [r["dirty-pages-rate"] for r in rows] == [0, 0, 55]
    assert [r["sync-cost-us"] for r in rows] == [12, 1000, 1]  # ns // 1000
    # the last rate window before each sync; 250 ms downtime-limit before any window
    assert [r["mbps"] for r in rows] == [0.0, 336.123, 400.0]
    assert [r["expected-downtime"] for r in rows] == [250, 42, 17]  # downtime-limit 250.4 ms -> 250
    # cumulative page counts
    assert [r["duplicate"] for r in rows] == [0, 800, 900]
    assert [r["normal"] for r in rows] == [0, 1000, 1400]
    # per interval (since the previous sync)
    assert [r["resent"] for r in rows] == [0, 3, 5]
    assert [r["write-not-dirty"] for r in rows] == [0, 2, 1]
    assert [r["vcpu-writes"] for r in rows] == [0, 50 + 70, 9 + 8]
    assert [r["vcpu-faults"] for r in rows] == [0, 7, 1]
    assert [r["vcpu-fault-ms"] for r in rows] == [0, 0.014, 0.002]  # 14,400 ns
    assert [r["ring-full-exits"] for r in rows] == [0, 3, 0]
    assert [r["vcpu-ring-full-ms"] for r in rows] == [0, 3.75, 0]
    assert [r["vcpu-inhibit-ms"] for r in rows] == [0, 0.5, 0]
    assert [r["vhost-logged-pages"] for r in rows] == [0, 6, 0]
    assert [r["ring-reaped"] for r in rows] == [0, 9 + 5, 0]
    assert [r["lazy-clears"] for r in rows] == [0, 2, 0]
    # re-protected by CLEAR, by a legacy GET and by the ring resets (sync and reaper alike)
    assert [r["reprotected-pages"] for r in rows] == [0, 7 + 4 + 9 + 5, 0]
    assert [r["thread-get-us"] for r in rows] == [0, 7.0, 0]
    assert [r["thread-clear-us"] for r in rows] == [0, 0.511, 0]
    assert [r["thread-reap-us"] for r in rows] == [0, 1.107, 0]  # the reaper thread's reap is not counted
    # page work of the migration thread between syncs: 99.64 ms of 198.799940 ms, then 50 ms of 700.1 ms
    assert [r["thread-send-us"] for r in rows] == [0, 99_640.0, 50_000.0]
    assert [r["migration-thread-busy"] for r in rows] == [0.0, 0.5012, 0.0714]
    assert [r["multifd-busy"] for r in rows] == [0.0, 0.0, 0.0]
    assert sorted(rows[0]) == sorted(tables.ROUND_FIELDS)  # every column, nothing else


def test_vcpu_rows_from_first_principles():
    """Each VcpuStats belongs to the sync that ends its interval (dirty-sync-count + 1), ms with 3 decimals."""
    rows = tables.vcpu_rounds(_completed_log())
    quiet = {"throttle-ms": 0.0, "dirtylimit-ms": 0.0, "mmio-exits": 0, "bql-wait-ms": 0.0}
    assert rows == [
        {"dirty-sync-count": 2, "vcpu": 0, "writes": 50, "faults": 3, "fault-ms": 0.006, "ring-full-exits": 1,
         "ring-full-ms": 1.5, "inhibit-ms": 0.25} | quiet,  # 6,400 ns, 1,500,300 ns, 250,100 ns to 3 decimals
        {"dirty-sync-count": 2, "vcpu": 1, "writes": 70, "faults": 4, "fault-ms": 0.008, "ring-full-exits": 2,
         "ring-full-ms": 2.25, "inhibit-ms": 0.25} | quiet,
        {"dirty-sync-count": 3, "vcpu": 0, "writes": 9, "faults": 1, "fault-ms": 0.002, "ring-full-exits": 0,
         "ring-full-ms": 0.0, "inhibit-ms": 0.0} | quiet,
        {"dirty-sync-count": 3, "vcpu": 1, "writes": 8, "faults": 0, "fault-ms": 0.0, "ring-full-exits": 0,
         "ring-full-ms": 0.0, "inhibit-ms": 0.0} | quiet | {"mmio-exits": 7, "bql-wait-ms": 1.235},
    ]


def test_completed_summary_from_first_principles():
    """``populate_time_info``/``populate_ram_info`` of a completed migration, times truncated to ms first."""
    events = _completed_log()
    out = tables.summary(events)
    total_ms = END_T // MS - SETUP_T // MS
    setup_ms = ACTIVE_T // MS - SETUP_T // MS
    transferred = 100 + 4_200_000 + 1_700_000 + 620_000 + 5_000
    assert (out["status"], out["total-time"], out["setup-time"]) == ("completed", total_ms, setup_ms)  # 1034, 2
    assert out["downtime"] == END_T // MS - STOP_T // MS == 134
    assert "expected-downtime" not in out and "error-desc" not in out
    ram = out["ram"]
    assert ram == {
        "transferred": transferred,
        "remaining": 0,
        "total": 9 * MIB,
        "duplicate": 800 + 100 + 4,
        "normal": 1000 + 400 + 150,
        "normal-bytes": 1550 * PAGE,
        "dirty-sync-count": 3,
        "mbps": round(transferred * 8 / (total_ms - setup_ms) / 1000, 3),  # migration_completion_end
        "pages-per-second": 30_000.0,
        "precopy-bytes": 4_200_000 + 1_700_000,  # ram_save_setup's header is not ram_transferred_add's
        "downtime-bytes": 420_000 + 200_000,
        "postcopy-bytes": 0,
        "multifd-bytes": 0,
        "page-size": PAGE,
    }
    d = out["dirtysim"]
    assert d == {
        "stop-reason": "completed",
        "lost-pages": 1, "stale-pages": 2,  # the last check's verdict
        "unassigned-writes": 9,  # the most any check saw
        "first-lost-ms": (1_225 * MS - SETUP_T) // MS,  # the first check that found a loss
        "first-lost-at": "clear-all",
        "seed": 7,
        "downtime-ns": END_T - STOP_T,
        "guest-downtime-ms": 136.6,  # END_T - STOP_T + LATENCY = 136,600,060 ns
        "resent-pages": 3 + 5 + 1,
        "write-not-dirty-pages": 3,
        "vcpu-faults": 8,
        "vcpu-fault-ms": 0.016,  # 16,400 ns
        "ring-full-exits": 3,
        "vcpu-ring-full-ms": 3.75,  # 3,750,300 ns
        "pml-logged-pages": 0, "pml-full-exits": 0, "vcpu-pml-full-ms": 0.0,  # this log's vCPUs fault (no PML)
        "vcpu-inhibit-ms": 0.5,  # 500,100 ns
        "mmio-exits": 7, "vcpu-mmio-ms": 0.035, "vcpu-bql-wait-ms": 1.235,  # 7 x 5 us; 1,234,567 ns
        "migration-bql-wait-ms": 2.5, "reaper-bql-wait-ms": 0.0,  # the setup sync waited 2.5 ms; no reaper
        "vhost-logged-pages": 6,
        "thread-ioctl-ms": round((7_000 + 511 + 1_107) / MS, 3),
        "listener-calls": {"kvm-memory.log_sync": 2, "vhost.log_start": 1},
        "events": len(events),
        # no convergence control and no guest sample in this log
        "max-cpu-throttle-percentage": 0, "vcpu-throttle-ms": 0.0, "vcpu-dirtylimit-ms": 0.0, "parameter-changes": [],
        "guest-slowdown": {"run-fraction": None, "write-rate-mib-s": None, "before-write-rate-mib-s": None},
        # 149.64 ms of page work from 'active' to the end (END_T - ACTIVE_T)
        "migration-thread-busy": round(149_640_000 / (END_T - ACTIVE_T), 4), "multifd-busy": 0.0,
        # the 134.1 ms downtime: the vm-stop step, the final sync's cost, the device state's wire time, the rest RAM
        "downtime-breakdown-ms": {"vm-stop": 0.04, "vhost-stop": 0.0, "block-drain": 0.0,
                                  "final-sync": round(1_500 / MS, 3), "ram": round((134_100_000 - 40_000 - 1_500 - 1) / MS, 3),
                                  "device-state": 0.0},
    }
    assert list(d["listener-calls"]) == ["kvm-memory.log_sync", "vhost.log_start"]  # sorted


def test_completed_without_time_after_setup_keeps_the_window_mbps():
    """migration_completion_end recomputes mbps only when the migration ran longer than its setup."""
    events = _log(_started(), (ev.MigrationStatus, SETUP_T, dict(status="setup")),
                  (ev.MigrationStatus, SETUP_T, dict(status="active")),
                  _window(SETUP_T, mbps=12.3456, pps=7.0, downtime=3),
                  (ev.Transfer, SETUP_T, dict(kind="pages", bytes=4104, wire_ns=1, running=True, normal=1)),
                  (ev.MigrationStatus, SETUP_T + 99_999, dict(status="completed")),
                  (ev.RunFinished, SETUP_T + 99_999, dict(stop_reason="completed")))
    out = tables.summary(events)
    assert (out["total-time"], out["setup-time"], out["ram"]["mbps"]) == (0, 0, 12.346)
    assert "downtime" not in out and out["dirtysim"]["downtime-ns"] is None  # vCPUs never stopped
    assert out["dirtysim"]["guest-downtime-ms"] is None


def _unfinished(stop_reason: str, error: str | None = None, end_status: str | None = None) -> list[ev.Event]:
    return _log(
        _started(latency=0),
        (ev.RamBlockAdded, 0, dict(idstr="pc.ram", offset=0, size=8 * MIB)),
        (ev.MigrationStatus, SETUP_T, dict(status="setup")),
        _sync(SETUP_T, 1, "setup", dirty=2048),
        (ev.MigrationStatus, ACTIVE_T, dict(status="active")),
        _pages(300 * MS, normal=30, zero=10, nbytes=123_456),
        _window(310 * MS, mbps=9.87654, pps=1.23456, downtime=77),
        _sync(2_000 * MS, 2, "exact", dirty=2048 - 40 + 25, new=25, rate=13, closed=True),
        _pages(2_050 * MS, normal=7, zero=3, nbytes=30_000),
        (ev.OracleCheck, 2_100 * MS, dict(at="timeout", stale_pages=5, lost_pages=0)),
        *([(ev.MigrationStatus, 2_200 * MS, dict(status=end_status))] if end_status else []),
        (ev.RunFinished, 2_500 * MS + 7, dict(stop_reason=stop_reason, error=error)),
    )


@pytest.mark.parametrize("stop_reason,error,status", [("timeout", None, "active"), ("error", "boom", "failed"),
                                                      ("interrupted", None, "cancelled")])
def test_unfinished_summary_from_first_principles(stop_reason, error, status):
    """Not completed: remaining and the dirty rate are shown, times run to the last event, the error is reported."""
    events = _unfinished(stop_reason, error)
    out = tables.summary(events)
    assert out["status"] == status
    assert out["total-time"] == (2_500 * MS + 7) // MS - SETUP_T // MS
    assert out["setup-time"] == 2
    assert out["expected-downtime"] == 77 and "downtime" not in out
    ram = out["ram"]
    assert ram["remaining"] == (2048 - 40 + 25 - 7 - 3) * PAGE
    assert ram["dirty-pages-rate"] == 13
    assert (ram["mbps"], ram["pages-per-second"]) == (9.877, 1.235)  # the last window's, rounded
    assert (ram["transferred"], ram["precopy-bytes"], ram["downtime-bytes"]) == (153_456, 153_456, 0)
    assert (ram["total"], ram["dirty-sync-count"]) == (8 * MIB, 2)
    assert ("error-desc" in out) == (error is not None) and out.get("error-desc") == error
    d = out["dirtysim"]
    assert (d["stop-reason"], d["lost-pages"], d["stale-pages"], d["first-lost-ms"], d["first-lost-at"]) == \
        (stop_reason, 0, 5, None, None)
    assert (d["downtime-ns"], d["guest-downtime-ms"]) == (None, None)


@pytest.mark.parametrize("end_status", ["failed", "cancelled", "completed"])
def test_total_time_ends_at_the_final_status(end_status):
    """``populate_time_info``: a finished migration's total-time ends at its final status, not at the last event."""
    out = tables.summary(_unfinished("timeout", end_status=end_status))
    assert out["status"] == end_status
    assert out["total-time"] == 2_200 - SETUP_T // MS


def test_round_time_counts_from_a_setup_at_time_zero():
    """A migration started at t=0: a sync 1,500 ns later is at 0.0015 ms, shown as 0.002 (not from t=1 ns)."""
    events = _log(_started(), (ev.MigrationStatus, 0, dict(status="setup")), _sync(1_500, 1, "setup", dirty=1))
    assert tables.rounds(events)[0]["time"] == 0.002


def test_summary_uses_the_callers_fold(monkeypatch):
    """``f``: the caller folds once for rounds, vcpus and summary; the summary must not fold again."""
    events = _completed_log()
    f = tables.fold(events)
    monkeypatch.setattr(tables, "fold", lambda events: pytest.fail("folded twice"))
    assert tables.summary(events, f)["ram"]["dirty-sync-count"] == 3


def test_summary_before_migration_starts():
    """No setup status: total-time runs from the last event to itself, no setup-time, defaults reported."""
    events = _log(_started(downtime_limit=123 * MS), (ev.RamBlockAdded, 0, dict(idstr="pc.ram", offset=0, size=MIB)),
                  (ev.RunFinished, 5 * MS, dict(stop_reason="timeout")))
    out = tables.summary(events)
    assert (out["status"], out["total-time"], out["expected-downtime"]) == ("none", 0, 123)
    assert "setup-time" not in out
    assert out["ram"]["remaining"] == 0 and out["ram"]["dirty-sync-count"] == 0
    assert out["dirtysim"]["lost-pages"] is None and out["dirtysim"]["events"] == 3


def test_empty_log_summary():
    out = tables.summary([])
    assert (out["status"], out["total-time"], out["expected-downtime"]) == ("none", 0, 300)  # QEMU's default limit
    assert out["ram"]["page-size"] == 4096 and out["dirtysim"]["events"] == 0


def test_page_size_comes_from_the_run():
    """remaining and normal-bytes are pages x the run's page size."""
    events = _log(_started(page_size=8192), (ev.MigrationStatus, SETUP_T, dict(status="setup")),
                  _sync(SETUP_T, 1, "setup", dirty=3),
                  _pages(SETUP_T, normal=2, zero=0, nbytes=10),
                  (ev.RunFinished, SETUP_T, dict(stop_reason="timeout")))
    out = tables.summary(events)
    assert (out["ram"]["remaining"], out["ram"]["normal-bytes"], out["ram"]["page-size"]) == (8192, 16384, 8192)
    assert tables.rounds(events)[0]["remaining"] == 3 * 8192


def test_csv_bytes_header_and_rows():
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y,z"}]
    assert tables.csv_bytes(rows, ["a", "b"]) == b'a,b\n1,x\n2,"y,z"\n'
    assert tables.csv_bytes([]).decode() == ",".join(tables.ROUND_FIELDS) + "\n"
