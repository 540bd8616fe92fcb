"""The precopy thread's QEMU rules (``migration/migration.c``, ``migration/ram.c``) on tiny hand-built guests.

Each expected number is worked out here from the scenario (link speed, page
record sizes, the window budget), not read back from the code under test. The
link is 1 Gbit/s = 125,000,000 B/s, exactly 8 ns per byte, so wire times add up
without rounding. Every test runs on both send paths: the fused numba loop
(``migration/slices.py``) and the Python ``send_slice`` it stands in for.
"""

from __future__ import annotations

import pytest

from builders import NO_COSTS, merge, of, scenario, syncs
from dirtysim.events import schema as ev
from dirtysim.migration.slices import FusedSlices
from dirtysim.sim import run

pytestmark = [pytest.mark.rules, pytest.mark.timeout(20)]  # a hang (a broken bound) fails fast

PAGE = 4096
NORMAL = PAGE + 8  # save_normal_page: 8-byte header + the page
ZERO = 8 + 1  # save_zero_page: header + one byte
IDSTR = 1 + len("pc.ram")  # the block's name goes with its first page after a block change
HEADER = 8 + (1 + len("pc.ram") + 8) + 8  # ram_save_setup: MEM_SIZE, one block's idstr + used_length, EOS
EOS = 8
# savevm.c's framing (in transferred, not in precopy-/downtime-bytes): the file header, the "ram" section's
# START header and footer around ram_save_setup, a header and footer around each ram_save_iterate and around
# ram_save_complete, QEMU_VM_EOF after the device state, then the vmdesc
SETUP = HEADER + 8 + (5 + 1 + len("ram") + 4 + 4) + 5
SECTION = 5 + 5
VMDESC = 5 + (16 << 10)  # the schema's default machine.vmdesc
NS_PER_BYTE = 8  # 1 Gbit/s
DEVICE_STATE = 256 << 10  # the schema's default machine.device_state
MS = 10**6
IDLE = {"kind": "uniform", "rate": "0B/s"}


@pytest.fixture(params=["fused", "python"])
def path(request, monkeypatch):
    """Run on the fused send loop, or force ``PrecopyMigration.send_slice`` for every slice."""
    if request.param == "python":
        monkeypatch.setattr(FusedSlices, "eligible", lambda self: False)
    return request.param


def tiny(**over):
    """An idle 4 MiB guest (1,024 pages of data) on a 1 Gbit/s link, unlimited bandwidth, no tracking costs."""
    base = {"machine": {"memory": {"size": "4MiB", "zero_fraction": 0.0}, "vcpus": [{"count": 1, "workload": IDLE}]},
            "network": {"bandwidth": "1Gbit/s"}, "costs": NO_COSTS,
            "migration": {"max_bandwidth": "0B/s", "start_at": "0ms", "timeout": "5s"}}
    return scenario(**merge(base, over))


def simulate(sc):
    result = run(sc, progress=False)
    assert result.error is None, result.error
    return result


def pages(events) -> list[ev.Transfer]:
    return [e for e in events if isinstance(e, ev.Transfer) and e.kind == "pages"]


def first(events, cls):
    return next(e for e in events if isinstance(e, cls))


def window_pages(budget: int, already: int) -> int:
    """Pages sent in a window: ``migration_rate_exceeded`` is checked before each page, so the page that
    takes the window past its budget still goes out."""
    return (budget - already) // NORMAL + 1


@pytest.mark.parametrize("zero_fraction, detection, zero", [
    (0.0, "multifd", False), (1.0, "multifd", True), (1.0, "legacy", True), (1.0, "none", False)])
def test_a_guest_sent_before_the_first_window_completes_at_once(path, zero_fraction, detection, zero):
    """No window closed: threshold_size is still 0 (``migrate_init``). The pending estimate 0 is not below it
    (no exact sync, ``migration_iteration_run``) but is at most it: completion right after the first
    ``ram_save_iterate``. Zero pages go as 9-byte records unless zero-page-detection is none."""
    result = simulate(tiny(machine={"memory": {"zero_fraction": zero_fraction}},
                           migration={"zero_page_detection": detection}))
    events = result.events
    record = ZERO if zero else NORMAL
    page_bytes = 1024 * record + IDSTR
    stop = NS_PER_BYTE * (SETUP + page_bytes + EOS + SECTION)
    assert [s.reason for s in syncs(events)] == ["setup", "final"]
    assert not of(events, ev.RateWindow)
    setup = first(events, ev.Transfer)
    assert (setup.kind, setup.bytes, setup.t_ns, setup.running) == ("setup", SETUP, NS_PER_BYTE * SETUP, True)
    sent = pages(events)
    assert sum(t.zero for t in sent) == (1024 if zero else 0)
    assert sum(t.normal for t in sent) == (0 if zero else 1024)
    assert sum(t.bytes for t in sent) == page_bytes
    if not zero:  # one send slice = 1 ms of link = 125,000 bytes: the page that reaches it is the last
        per_slice = -(-125_000 // NORMAL)
        assert [t.normal for t in sent] == [per_slice] * (1024 // per_slice) + [1024 % per_slice]
    assert first(events, ev.VcpusStopped).t_ns == stop
    final = syncs(events)[-1]
    assert (final.pending_before, final.threshold_size, final.new_dirty_pages, final.t_ns) == (0, 0, 0, stop)
    check = first(events, ev.OracleCheck)
    assert (check.at, check.stale_pages, check.lost_pages) == ("switchover", 0, 0)
    assert check.t_ns == stop + NS_PER_BYTE * (EOS + SECTION + DEVICE_STATE + 1 + VMDESC)
    assert check.unassigned_writes == 0
    tail = [(t.kind, t.bytes, t.running) for t in of(events, ev.Transfer) if t.t_ns > stop]
    assert tail == [("eos", EOS, False), ("section-end", SECTION, False), ("device-state", DEVICE_STATE + 1, False),
                    ("vmdesc", VMDESC, False)]  # the guest is stopped
    assert [e.status for e in of(events, ev.MigrationStatus)] == ["setup", "active", "device", "completed"]
    assert result.stop_reason == "completed"


@pytest.mark.parametrize("downtime_ms, reasons, stop_ms", [
    (95, ["setup", "exact", "final"], 200),  # 760 pages < 768: send on, sync in the next window
    (96, ["setup", "final"], 100),  # 768 == 768: not below (no exact sync), at most (complete)
    (97, ["setup", "exact", "final"], 100),  # 776 > 768: exact sync, then complete
    (96.9, ["setup", "final"], 100),  # downtime-limit is whole ms (migrate_downtime_limit): 96 ms
])
def test_exact_sync_below_and_completion_at_the_threshold(path, downtime_ms, reasons, stop_ms):
    """``migration_iteration_run``: exact sync iff pending < threshold_size; complete iff pending <= it.

    10 MiB/s max-bandwidth gives 1,048,576 bytes per window; the first window sends the header, then
    pages until the budget is passed. avail-switchover-bandwidth 32,768,000 B/s makes the threshold
    exactly 32,768 B/ms x downtime = 8 pages per ms of downtime-limit.
    """
    result = simulate(tiny(migration={"max_bandwidth": "10MiB/s", "avail_switchover_bandwidth": "32768000B/s",
                                      "downtime_limit": f"{int(downtime_ms * 1000)}us"}))
    downtime_ms = int(downtime_ms)
    events = result.events
    sent = window_pages(1_048_576, SETUP + IDSTR)
    assert sent == 256
    window = first(events, ev.RateWindow)
    assert (window.t_ns, window.time_spent_ms) == (100 * MS, 100)
    assert window.transferred == SETUP + IDSTR + sent * NORMAL + EOS + SECTION
    assert window.threshold_size == 32_768 * downtime_ms == 8 * downtime_ms * PAGE
    assert window.expected_downtime == downtime_ms  # no dirty-page rate yet: still the limit
    assert [s.reason for s in syncs(events)] == reasons
    stopped = first(events, ev.VcpusStopped)
    assert stopped.t_ns == stop_ms * MS
    final = syncs(events)[-1]
    assert final.pending_before == (1024 - sent * stop_ms // 100) * PAGE
    assert all(c.seq < stopped.seq for c in of(events, ev.LazyClear)), "no lazy clear in the last stage"
    assert sum(t.normal for t in pages(events)) == 1024
    assert of(events, ev.OracleCheck)[-1].stale_pages == 0


def test_rate_limit_windows_and_the_timeout(path):
    """``migration_rate_limit`` sleeps out each exhausted 100 ms window; ``migration_thread`` cancels when
    the timeout has passed (>=), checked when the thread wakes at 200 ms + 1 s exactly.

    1 MiB/s max-bandwidth: 104,857 bytes per window, 26 pages each, so 764 of 1,024 pages never leave.
    """
    result = simulate(tiny(migration={"max_bandwidth": "1MiB/s", "timeout": "1s", "start_at": "200ms"}))
    events = result.events
    windows = of(events, ev.RateWindow)
    assert [w.t_ns for w in windows] == [k * 100 * MS for k in range(3, 12)]
    assert all(w.time_spent_ms == 100 for w in windows)
    first_pages, later_pages = window_pages(104_857, SETUP + IDSTR), window_pages(104_857, 0)
    assert (first_pages, later_pages) == (26, 26)
    assert windows[0].transferred == SETUP + IDSTR + first_pages * NORMAL + EOS + SECTION
    assert all(w.transferred == later_pages * NORMAL + EOS + SECTION for w in windows[1:])
    w = windows[1]
    assert w.bandwidth == pytest.approx(w.transferred / 100)
    assert w.threshold_size == int(w.transferred / 100 * 300)
    assert w.mbps == pytest.approx(w.transferred * 8 / 0.1 / 1e6)
    assert w.pages_per_second == pytest.approx(later_pages / 0.1)
    check = of(events, ev.OracleCheck)[-1]
    assert (check.at, check.t_ns) == ("timeout", 1200 * MS)
    assert (check.stale_pages, check.lost_pages) == (1024 - 10 * 26, 0)  # unsent, still dirty in the bitmap
    assert [e.status for e in of(events, ev.MigrationStatus)] == ["setup", "active", "cancelled"]
    assert not of(events, ev.VcpusStopped) and result.stop_reason == "timeout"


def test_an_iteration_ends_after_more_than_50_ms(path):
    """``ram_save_iterate`` leaves its loop once more than MAX_WAIT (50 ms) passed since it began.

    100 Mbit/s: 80 ns per byte, 12,500 bytes per 1 ms slice (4 pages, 1.31 ms). The first iteration
    starts at 0 ms; its EOS follows the first slice that ends at 51 ms or later.
    """
    result = simulate(tiny(network={"bandwidth": "100Mbit/s"}))
    events = result.events
    window = first(events, ev.RateWindow)  # unlimited: closed by the first turn at 100 ms or later, mid-ms
    assert window.t_ns % MS and window.time_spent_ms == window.t_ns // MS  # the clock is whole ms
    eos = [e for e in events if isinstance(e, ev.Transfer) and e.kind == "eos"]
    before = [t for t in pages(events) if t.seq < eos[0].seq]
    assert before[-1].t_ns // MS > 50 >= before[-2].t_ns // MS
    assert eos[0].t_ns == before[-1].t_ns + (EOS + SECTION) * 80  # the EOS and the section's framing, one write
    assert all(t.normal == 4 for t in before)
    t0 = eos[0].t_ns // MS  # the second iteration begins right after the first one's EOS
    second = [t for t in pages(events) if eos[0].seq < t.seq < eos[1].seq]
    assert second[-1].t_ns // MS - t0 > 50 >= second[-2].t_ns // MS - t0


def test_lazy_clear_of_each_chunk_before_its_first_page(path):
    """``migration_clear_memory_region_dirty_bitmap``: 2.5 MiB in 1 MiB chunks (clear_bitmap_shift 8):
    each chunk is cleared once, before its first page is sent; the last chunk is only 512 KiB."""
    result = simulate(tiny(machine={"memory": {"size": "2560KiB"}}, dirty_tracking={"clear_bitmap_shift": 8}))
    events = result.events
    clears = of(events, ev.LazyClear)
    assert [(c.block, c.chunk, c.start, c.size) for c in clears] == [
        ("pc.ram", 0, 0, 1 << 20), ("pc.ram", 1, 1 << 20, 1 << 20), ("pc.ram", 2, 2 << 20, 512 << 10)]
    for c in clears:
        sent_before = sum(t.normal for t in pages(events) if t.seq < c.seq)
        assert sent_before <= 256 * c.chunk < sent_before + 31  # at most one slice before the chunk's start
    assert sum(t.normal for t in pages(events)) == 640


def _dirtying(**over):
    """8 MiB, half of it zero at boot, a 900 KiB/s uniform writer, 2 MiB/s max-bandwidth: about 4 s, syncs at
    window times, the one at 3800 ms exactly 1000 ms after the last period start. Syncs cost 1 ms per GiB."""
    return tiny(**merge({"machine": {"memory": {"size": "8MiB", "zero_fraction": 0.5},
                                     "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "900KiB/s"}}]},
                         "migration": {"max_bandwidth": "2MiB/s", "timeout": "10s"},
                         "costs": {"bitmap_sync_per_gib": "1ms"}}, over))


FAST_WRITER = {"machine": {"vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "3500KiB/s"}}]},
               "migration": {"max_bandwidth": "4MiB/s"}}  # the first period closes at 1400 ms


SLOW_SYNC = {"machine": {"vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "400KiB/s"}}]},
             "migration": {"max_bandwidth": "5MiB/s"},
             "costs": {"bitmap_sync_per_gib": "128ms"}}  # 1 ms per sync: the sync at 1000 ms ends at 1001 ms


@pytest.mark.parametrize("over, boundary_ms, closes_ms", [({}, 3800, None), (FAST_WRITER, None, 1400),
                                                          (SLOW_SYNC, None, 1001)])
def test_a_dirtying_guest_follows_every_rule(path, over, boundary_ms, closes_ms):
    """Recomputed from the event stream alone: the dirty count (every page dirty at setup, +0->1 at each
    sync, -each page sent), the exact-sync and completion decisions, the dirty-rate period
    (``migration_bitmap_sync``: closed when more than 1000 ms passed), the windows' expected downtime
    (``migration_update_counters``), and the sync cost charged to the migration thread."""
    result = simulate(_dirtying(**over))
    events = result.events
    cost = result.scenario.costs.bitmap_sync_per_gib * 8 // 1024  # 8 MiB
    pending, threshold, expected_downtime = 2048, 0, 300
    last_ms, period_new, rate, last_sync_dirty = 0, 0, 0, 0
    after_window = None
    decided = []
    for i, e in enumerate(events):
        if isinstance(e, ev.Transfer) and e.kind == "pages":
            pending -= e.normal + e.zero
            if after_window is not None:
                decided.append((after_window, "send"))
                after_window = None
        elif isinstance(e, ev.RateWindow):
            assert e.t_ns % (100 * MS) == 0 and e.time_spent_ms == 100
            assert e.bandwidth == pytest.approx(e.transferred / 100)
            assert e.threshold_size == int(e.transferred / 100 * 300)
            if rate and e.transferred > 10_000:
                expected_downtime = int(last_sync_dirty * PAGE / e.bandwidth)
            assert e.expected_downtime == expected_downtime
            threshold = e.threshold_size
            after_window = pending * PAGE < threshold
        elif isinstance(e, ev.BitmapSync):
            if after_window is not None:
                decided.append((after_window, "sync"))
                after_window = None
            assert e.cost_ns == cost
            assert not [x for x in events if e.t_ns - cost < x.t_ns < e.t_ns]
            assert any(x.t_ns == e.t_ns - cost for x in events[:i])
            assert (e.pending_before, e.threshold_size) == (pending * PAGE, threshold)
            if e.reason == "exact":
                assert e.pending_before < threshold
            pending += e.new_dirty_pages
            assert e.migration_dirty_pages == pending
            last_sync_dirty = pending
            end_ms = e.t_ns // MS
            period_new += e.new_dirty_pages
            assert e.period_closed == (end_ms > last_ms + 1000)
            if e.period_closed:
                rate = period_new * 1000 // (end_ms - last_ms)
                last_ms, period_new = end_ms, 0
            assert e.dirty_pages_rate == rate
            if e.reason == "exact":
                completes = isinstance(events[i + 1], ev.VcpusStopped)
                assert completes == (pending * PAGE <= threshold)
    exact = [s for s in syncs(events) if s.reason == "exact"]
    assert [s.dirty_sync_count for s in syncs(events)] == list(range(1, len(syncs(events)) + 1))
    assert [v.vcpu for v in of(events, ev.VcpuStats)] == [0] * len(syncs(events))
    assert any(s.period_closed for s in exact)
    if closes_ms:
        assert [s.t_ns // MS for s in exact if s.period_closed][0] == closes_ms
    if boundary_ms:
        assert any(s.t_ns // MS == boundary_ms and not s.period_closed for s in exact), "the period boundary itself"
    assert True in {d for d, _ in decided} and all(d == (what == "sync") for d, what in decided)
    assert pending == 0
    sent = pages(events)
    assert sum(t.normal + t.zero for t in sent) == 2048 + sum(s.new_dirty_pages for s in syncs(events))
    assert sum(t.resent for t in sent) == sum(s.new_dirty_pages for s in syncs(events))
    assert sum(t.zero for t in sent) > 0 and sum(t.normal for t in sent) > 0
    assert of(events, ev.OracleCheck)[-1].lost_pages == 0


DEFAULT_COSTS = {"write_fault": "2us", "get_dirty_log_per_gib": "7us", "clear_dirty_log_per_page": "73ns"}


def test_fused_and_python_slices_give_the_same_log(monkeypatch):
    """The fused loop is exact: a writing guest, lazy clears, rate windows, a wrap and an exact sync; costs
    charged to the migration thread (a clear's re-protection) and to the vCPUs (write faults)."""
    for sc in (_dirtying(), _dirtying(dirty_tracking={"clear_bitmap_shift": 6}, engine={"send_quantum": "300us"}),
               _dirtying(costs=DEFAULT_COSTS, dirty_tracking={"clear_bitmap_shift": 7}),
               _hotplug([{"at": "10ms", "hotplug": {"id": "d0", "size": "2MiB"}}],  # mid-slice: the loop stops for it
                        migration={"max_bandwidth": "0B/s"}),
               _hotplug([{"at": "248ns", "hotplug": {"id": "d0", "size": "2MiB"}}],  # when the first fused call returns
                        migration={"max_bandwidth": "0B/s"})):
        fused = simulate(sc)
        with monkeypatch.context() as m:
            m.setattr(FusedSlices, "eligible", lambda self: False)
            plain = simulate(sc)
        assert fused.fingerprint == plain.fingerprint


def _hotplug(timeline, **over):
    return tiny(**merge({"machine": {"device_memory": "4MiB"}, "migration": {"max_bandwidth": "4MiB/s"},
                         "timeline": timeline, "what_if": {"hotplug_during_migration": True}}, over))


def test_a_block_added_while_migrating_is_sent_whole(path):
    """``ram_list_init_bitmaps`` for the new block: all 512 pages dirty, counted in migration_dirty_pages."""
    writer = {"kind": "uniform", "rate": "1MiB/s", "working_set": "4MiB"}  # pc.ram: both blocks have new pages
    result = simulate(_hotplug([{"at": "150ms", "hotplug": {"id": "d0", "size": "2MiB"}}],
                               machine={"vcpus": [{"count": 1, "workload": writer}]}))
    events = result.events
    assert any(s.new_dirty_pages > 512 for s in syncs(events))
    added = [t for t in pages(events) if t.block == "d0"]
    assert sum(t.normal + t.zero for t in added) >= 512
    total = sum(t.normal + t.zero for t in pages(events))
    assert total == 1024 + 512 + sum(s.new_dirty_pages for s in syncs(events))
    assert of(events, ev.OracleCheck)[-1].stale_pages == 0


@pytest.mark.parametrize("unplug_ms, d0_scanned", [(150, False), (450, True)])
def test_a_removed_block_drops_its_dirty_pages(path, unplug_ms, d0_scanned):
    """Removing a block drops its pending pages from migration_dirty_pages and restarts the scan at the
    first block (``ram_state_reset``). pc.ram (256 pages) is done by 400 ms; d0 (512) follows. Each
    block's first page after a block change or a reset carries its idstr (7 bytes for pc.ram, 3 for d0)."""
    result = simulate(_hotplug([{"at": "0ms", "hotplug": {"id": "d0", "size": "2MiB"}},
                                {"at": f"{unplug_ms}ms", "unplug": {"id": "d0"}}],
                               machine={"memory": {"size": "1MiB"}}, costs={"memslot_update": "0ns"},
                               migration={"start_at": "100ms", "zero_page_detection": "none",
                                          "downtime_limit": "10ms"}))  # no exact sync: the fused loop resumes
    events = result.events
    removed = first(events, ev.RamBlockRemoved)
    d0_sent = sum(t.normal for t in pages(events) if t.block == "d0" and t.seq < removed.seq)
    assert (0 < d0_sent < 512) if d0_scanned else d0_sent == 0
    assert sum(t.normal + t.zero for t in pages(events)) == 256 + d0_sent
    restarted = 3 if d0_scanned else IDSTR  # after the reset the next page again names its block
    assert sum(t.bytes for t in pages(events)) == (256 + d0_sent) * NORMAL + IDSTR + restarted
    assert not [t for t in pages(events) if t.block == "d0" and t.seq > removed.seq]
    assert result.stop_reason == "completed" and of(events, ev.OracleCheck)[-1].stale_pages == 0


def test_the_scan_starts_at_page_0(path):
    """``ram_state_reset``: last_page = 0. Page 0 holds data (written before the migration), the rest is
    zero; 10 us slices (1,250 bytes) make page 0 a slice of its own."""
    writer = {"kind": "uniform", "rate": "4MiB/s", "working_set": "4KiB"}
    result = simulate(tiny(machine={"memory": {"zero_fraction": 1.0}, "vcpus": [{"count": 1, "workload": writer}]},
                           migration={"start_at": "10ms"}, engine={"send_quantum": "10us"}))
    head = pages(result.events)[0]
    assert (head.normal, head.zero, head.bytes) == (1, 0, NORMAL + IDSTR)


def test_send_before_clear_clears_each_chunk_after_its_pages():
    """The deliberately wrong order: a chunk's clear waits until the scan leaves it (or the next sync),
    so writes between a page's send and that clear are lost; each deferred clear is audited."""
    result = simulate(tiny(machine={"memory": {"size": "2560KiB"},
                                    "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "2MiB/s"}}]},
                           dirty_tracking={"clear_bitmap_shift": 8, "send_order": "send-before-clear"},
                           migration={"max_bandwidth": "4MiB/s"}))
    events = result.events
    clears = of(events, ev.LazyClear)
    assert [c.chunk for c in clears[:2]] == [0, 1]
    in_flight = next(t for t in pages(events) if t.seq > clears[0].seq)  # chunk 0: cleared once the scan left it
    assert sum(t.normal + t.zero for t in pages(events) if t.seq <= in_flight.seq) >= 256
    after = next(e for e in events[clears[1].seq:] if isinstance(e, (ev.Transfer, ev.BitmapSync)))
    assert isinstance(after, ev.BitmapSync)  # chunk 1: the sync ends the pass and flushes its clear
    audits = [e for e in of(events, ev.OracleCheck) if e.at == "send-before-clear"]
    assert audits and all(a.lost_pages > 0 for a in audits)
    final = of(events, ev.OracleCheck)[-1]
    assert final.at == "switchover" and final.lost_pages == final.stale_pages > 0


def test_device_add_is_refused_only_while_migrating():
    """``migration_is_running`` (qdev_device_add refuses RAM hotplug): plugged before the migration starts,
    refused after setup began."""
    result = simulate(tiny(machine={"device_memory": "4MiB"}, migration={"start_at": "1ms"},
                           timeline=[{"at": "0ms", "hotplug": {"id": "d0", "size": "2MiB"}},
                                     {"at": "5ms", "hotplug": {"id": "d1", "size": "1MiB"}}]))
    assert [a.result for a in of(result.events, ev.TimelineAction)] == [
        "done", "refused: device_add not allowed while migrating"]


def test_a_guest_of_more_than_64_bitmap_words_is_sent_whole(path):
    """32 MiB = 8,192 pages = 128 words of bmap: every page goes once, nothing stays stale."""
    result = simulate(tiny(machine={"memory": {"size": "32MiB"}}))
    assert sum(t.normal for t in pages(result.events)) == 8192
    assert of(result.events, ev.OracleCheck)[-1].stale_pages == 0


def test_wire_times_are_whole_ns_rounded_down(path):
    """7 Gbit/s = 875,000,000 B/s, 8/7 ns per byte: each transfer's wire time is bytes x 10^9 // link, and
    back-to-back slices (an idle guest, no costs, unlimited) follow each other by exactly that."""
    link = 875_000_000
    result = simulate(tiny(network={"bandwidth": "7Gbit/s"}, engine={"send_quantum": "10us"}))  # 3-page slices
    transfers = of(result.events, ev.Transfer)
    assert all(t.wire_ns == t.bytes * 10**9 // link for t in transfers)
    assert transfers[0].t_ns == SETUP * 10**9 // link == 69
    sent = pages(result.events)
    assert sent[0].t_ns == transfers[0].t_ns + sent[0].wire_ns
    assert all(b.t_ns == a.t_ns + b.wire_ns for a, b in zip(sent, sent[1:]))


def test_a_one_ns_wait_is_waited(path):
    """64 Gbit/s = 8 bytes per ns: the 8-byte EOS and its 10 bytes of section framing take 2 ns of link, the
    61-byte setup (header and framing) 7 ns."""
    transfers = of(simulate(tiny(network={"bandwidth": "64Gbit/s"})).events, ev.Transfer)
    assert (transfers[0].kind, transfers[0].t_ns) == ("setup", 7)
    eos = next(i for i, t in enumerate(transfers) if t.kind == "eos")
    assert transfers[eos].t_ns == transfers[eos - 1].t_ns + 1 + 1


def test_the_cost_of_a_clear_delays_the_slice_after_it(path):
    """KVM_CLEAR_DIRTY_LOG re-protects the 1,024 pages of the first chunk at 1 us each: the migration
    thread pays 1.024 ms on top of the first slice's wire time (``migration_clear_memory_region_dirty_bitmap``)."""
    result = simulate(tiny(costs={"clear_dirty_log_per_page": "1us"}))
    setup, head = first(result.events, ev.Transfer), pages(result.events)[0]
    assert head.t_ns == setup.t_ns + head.wire_ns + 1024 * 1000


@pytest.mark.parametrize("over, fused", [
    ({}, True),
    ({"machine": {"accel": "tcg"}}, True),
    ({"dirty_tracking": {"mode": "ring"}}, False),  # the reaper and ring-full exits run in Python
    ({"machine": {"devices": [{"kind": "vhost-user-net", "rx": "1MiB/s",
                                                "buffers": "1MiB"}]}}, False),  # a backend writes too
    ({"timeline": [{"at": "0ms", "pam": {"enabled": True}}], "migration": {"start_at": "1ms"}}, False),  # 2 blocks
])
def test_the_fused_loop_runs_where_it_is_exact(monkeypatch, over, fused):
    """``FusedSlices.eligible``: one RAMBlock, a KVM bitmap or TCG, no vhost backend (the common case)."""
    calls = []
    real = FusedSlices.run
    monkeypatch.setattr(FusedSlices, "run", lambda self, t0: calls.append(1) or real(self, t0))
    result = simulate(tiny(**over))
    assert bool(calls) == fused
    assert len(calls) <= 2  # many slices per call: the first stops for the lazy clear, the next sends the rest
    assert result.stop_reason == "completed"


def test_a_budget_met_exactly_allows_one_more_page(path):
    """``migration_rate_exceeded`` is strictly more than the budget: 1,017,860 bytes per window are the
    setup (header and framing), idstr and 248 pages (8 slices of 31) exactly, so a 249th page still goes."""
    budget = SETUP + IDSTR + 248 * NORMAL
    result = simulate(tiny(migration={"max_bandwidth": f"{budget * 10}B/s"}))
    window = first(result.events, ev.RateWindow)
    assert window.transferred == budget + NORMAL + EOS + SECTION


@pytest.mark.parametrize("quantum_ns, slice_pages", [
    (1_017_792, [31, 31]),  # cap 127,224 bytes = 31 pages exactly: a slice ends at its cap
    (32_889, [1, 2]),  # 4,111.125 bytes of link time: the cap is 4,111 whole bytes: the page with the idstr
])
def test_send_slices_stop_at_a_whole_byte_cap(path, quantum_ns, slice_pages):
    """One send slice is at most engine.send_quantum of link time in whole bytes (the page reaching it goes)."""
    result = simulate(tiny(engine={"send_quantum": f"{quantum_ns}ns"}))
    assert [t.normal for t in pages(result.events)[:2]] == slice_pages
    assert sum(t.normal for t in pages(result.events)) == 1024


@pytest.mark.parametrize("quantum, slices", [
    ("100ms", [(512, 512, 512 * (NORMAL + ZERO) + IDSTR)]),  # the whole guest in the first slice
    ("32880ns", [(1, 0, NORMAL + IDSTR)] + [(2, 0, 2 * NORMAL)] * 255 + [(1, 1, NORMAL + ZERO)]),  # cap 4,110
])
def test_slices_of_as_many_zero_as_normal_pages(path, quantum, slices):
    """This guest (seed 3) holds data in its first 2 MiB and zeros in the rest. With a 4,110-byte cap the
    first slice is one page with the idstr, then two pages a slice, so page 511 and zero page 512 share one."""
    result = simulate(tiny(machine={"memory": {"zero_fraction": 0.5}}, engine={"send_quantum": quantum}))
    sent = [(t.normal, t.zero, t.bytes) for t in pages(result.events)]
    assert sent[:len(slices)] == slices
    assert sum(n for n, _, _ in sent) == sum(z for _, z, _ in sent) == 512
    eos = [t for t in of(result.events, ev.Transfer) if t.kind == "eos"]
    assert len(eos) == 2  # one iteration sends it all (34 ms < 50 ms), then the switchover's


def test_an_iteration_goes_on_past_a_full_slice_table(path):
    """``ram_save_iterate`` ends after 50 ms, whatever the fused loop's table of 4,096 slices holds: zero pages
    (9 bytes) on a 900,000 B/s link with 10 us slices (9 bytes) make 4,095 slices in 41 ms of a 32 MiB guest."""
    result = simulate(tiny(machine={"memory": {"size": "32MiB", "zero_fraction": 1.0}},
                           network={"bandwidth": "7200000bit/s"}, engine={"send_quantum": "10us"}))
    eos = next(t for t in of(result.events, ev.Transfer) if t.kind == "eos")
    assert eos.t_ns // MS == 51
