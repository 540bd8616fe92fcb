"""The reference's checkable facts (qemu-dirty-tracking.md §13), each reproducing its number."""

from __future__ import annotations

import numpy as np
import pytest

from builders import of, simulate, syncs
from dirtysim.accel.cost import CostMeter
from dirtysim.accel.kvm import KvmDirtyLog, KvmMemoryListener
from dirtysim.dirty.ramlist import RAMList
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION, MemorySystem
from dirtysim.memory.region import MemoryRegion
from dirtysim.migration.rate import rate_limit_max, threshold_size
from dirtysim.scenario.schema import Costs, DirtyTracking

PAGE = 4096
MIB = 1 << 20


@pytest.fixture(scope="module")
def default_bw_run():
    """QEMU's default max-bandwidth (128 MiB/s) on a fast link: the rate limit is what binds."""
    return simulate(migration={"max_bandwidth": "128MiB/s", "timeout": "12s"},
                    machine={"memory": {"size": "1GiB", "zero_fraction": 0.75}})


@pytest.fixture(scope="module")
def hot_run():
    return simulate()


def test_fact1_setup_sync(hot_run):
    """After setup dirty-sync-count == 1, remaining == total, and the setup sync finds 0 new pages."""
    first = syncs(hot_run.events)[0]
    assert (first.dirty_sync_count, first.reason, first.new_dirty_pages) == (1, "setup", 0)
    assert first.migration_dirty_pages * PAGE == 1 << 30
    statuses = [e.status for e in of(hot_run.events, ev.MigrationStatus)]
    assert statuses[:2] == ["setup", "active"]
    active = next(e for e in of(hot_run.events, ev.MigrationStatus) if e.status == "active")
    assert first.seq < active.seq


def test_fact2_threshold_number():
    """128 MiB/s measured -> 134,217.728 B/ms x 300 ms = 40,265,318 bytes (about 9,830 pages)."""
    assert threshold_size((128 * MIB) / 1000, 300) == 40_265_318 == 9830 * PAGE + 1638


def test_fact2_first_window_threshold(default_bw_run):
    """(Before the first window the threshold is 0: test_rules_precopy probes it with a guest that fits.)"""
    first_window = of(default_bw_run.events, ev.RateWindow)[0]
    # The first window's threshold comes from ~13.4 MB per 100 ms: 40,265,318 plus the page overshoot.
    assert 40_265_318 <= first_window.threshold_size <= 40_265_318 + 3 * (4096 + 8 + 7 + 8)


def test_fact3_sync_only_below_threshold(default_bw_run, hot_run):
    for run in (default_bw_run, hot_run):
        exact = [s for s in syncs(run.events) if s.reason == "exact"]
        assert exact, "expected exact syncs"
        for s in exact:
            assert s.pending_before < s.threshold_size
        # completion: the post-sync pending of the last exact sync fits; no earlier one did
        final = syncs(run.events)[-1]
        assert final.reason == "final"
        assert exact[-1].migration_dirty_pages * PAGE <= exact[-1].threshold_size
        assert all(s.migration_dirty_pages * PAGE > s.threshold_size for s in exact[:-1])


def test_fact3_scan_wrap_is_not_a_sync(hot_run):
    """A wrap of the page scan is followed by more sending, not by a sync."""
    events = hot_run.events
    wraps = of(events, ev.ScanWrap)
    assert wraps
    for wrap in wraps:
        after = events[wrap.seq + 1 :]
        nxt = next(e for e in after if isinstance(e, (ev.BitmapSync, ev.Transfer)))
        assert isinstance(nxt, ev.Transfer)


def _kvm_machine(manual_protect=True, initially_set=False, pages=1 << 12):
    rec = Recorder(lambda: 0)
    rl, mem = RAMList(), MemorySystem(rec)
    tracking = DirtyTracking(manual_protect=manual_protect, initially_set=initially_set)
    kvm = KvmDirtyLog(rl, tracking, 1)
    root = MemoryRegion("system", 1 << 40)
    asp = mem.address_space_init(root, "memory")
    listener = KvmMemoryListener(kvm, mem, tracking, Costs(), CostMeter())
    mem.memory_listener_register(listener, asp)
    block = rl.ram_block_add("pc.ram", pages * PAGE)
    block.mr = MemoryRegion("pc.ram", pages * PAGE, ram_block=block)
    mem.transaction_begin()
    root.add_subregion(0, block.mr)
    mem.update_pending = True
    mem.transaction_commit()
    rl.dirty_memory[:] = 0
    mem.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    return rec, rl, mem, kvm, listener, block


def _write(kvm, *pages):
    faults = np.zeros(1, dtype=np.int64)
    kvm.apply_writes(np.array(pages, dtype=np.int64), np.array([len(pages)], dtype=np.int64), faults)
    return int(faults[0])


def _bit(words, page):
    return bool(int(words[page >> 6]) >> (page & 63) & 1)


def test_fact6_clear_uses_the_fetched_mask():
    """A bit set after the GET survives the CLEAR of its range and shows up in the next GET."""
    rec, rl, mem, kvm, listener, block = _kvm_machine()
    assert _write(kvm, 10) == 1  # write-protected page: fault, bit set
    mem.memory_global_dirty_log_sync(False)  # GET: page 10 fetched into the slot cache
    assert _write(kvm, 10, 11) == 1  # 10 is writable now (no fault); 11 faults after the GET
    mem.memory_region_clear_dirty_bitmap(block.mr, 0, block.used_length)
    assert not _bit(kvm.dirty, 10), "fetched and set: cleared and re-protected"
    assert _bit(kvm.dirty, 11), "set after the GET: not in the mask, kept"
    clear = of(rec.events, ev.KvmClearDirtyLog)[-1]
    assert clear.reprotected == 1 and clear.first_page % 64 == 0
    rl.dirty_memory[:] = 0
    mem.memory_global_dirty_log_sync(False)
    assert _bit(rl.dirty_memory, 11) and not _bit(rl.dirty_memory, 10)
    assert _write(kvm, 10) == 1, "re-protected page faults again"


def test_fact6_second_clear_does_not_reclear_unfetched_bits():
    """QEMU zeroes its cached mask after a CLEAR, so a repeated CLEAR cannot drop a newer bit."""
    rec, rl, mem, kvm, listener, block = _kvm_machine()
    _write(kvm, 5)
    mem.memory_global_dirty_log_sync(False)
    mem.memory_region_clear_dirty_bitmap(block.mr, 0, block.used_length)
    _write(kvm, 5)  # faults again, bit set, not fetched
    mem.memory_region_clear_dirty_bitmap(block.mr, 0, block.used_length)
    assert _bit(kvm.dirty, 5)


def test_initially_set_means_all_dirty_and_unprotected():
    rec, rl, mem, kvm, listener, block = _kvm_machine(initially_set=True)
    assert _write(kvm, 7) == 0  # nothing is write-protected until the first CLEAR
    mem.memory_global_dirty_log_sync(False)
    assert int(rl.dirty_memory[block.words].sum() != 0) and all(int(w) == 2**64 - 1 for w in rl.dirty_memory)


def test_legacy_get_reprotects_and_clear_is_a_noop():
    rec, rl, mem, kvm, listener, block = _kvm_machine(manual_protect=False)
    _write(kvm, 3)
    mem.memory_global_dirty_log_sync(False)
    assert not _bit(kvm.dirty, 3) and _bit(rl.dirty_memory, 3)
    assert of(rec.events, ev.KvmGetDirtyLog)[-1].reprotected == 1
    n_clears = len(of(rec.events, ev.KvmClearDirtyLog))
    mem.memory_region_clear_dirty_bitmap(block.mr, 0, block.used_length)
    assert len(of(rec.events, ev.KvmClearDirtyLog)) == n_clears
    assert _write(kvm, 3) == 1


def _intervals(events):
    """Events between consecutive syncs."""
    bounds = [s.seq for s in syncs(events)] + [len(events)]
    return [events[a + 1 : b] for a, b in zip(bounds, bounds[1:])]


def test_fact7_lazy_clear_granularity(hot_run):
    """Shift 18: at most one 1 GiB CLEAR per chunk per sync, before sending; none in the last stage."""
    events = hot_run.events
    clears = of(events, ev.LazyClear)
    assert clears and all(c.size == 1 << 30 for c in clears)
    for interval in _intervals(events):
        chunks = [e.chunk for e in interval if isinstance(e, ev.LazyClear)]
        assert len(chunks) == len(set(chunks))
    final = syncs(events)[-1]
    assert final.reason == "final"
    assert not [e for e in events[final.seq :] if isinstance(e, (ev.LazyClear, ev.KvmClearDirtyLog))]
    # each lazy clear is the KVM_CLEAR_DIRTY_LOG of exactly that chunk, issued right away
    kvm_clears = of(events, ev.KvmClearDirtyLog)
    assert [(k.first_page, k.num_pages) for k in kvm_clears] == [(c.start // PAGE, c.size // PAGE) for c in clears]


def test_fact7_smaller_chunks_clear_more_often():
    run = simulate(dirty_tracking={"clear_bitmap_shift": 12})
    clears = of(run.events, ev.LazyClear)
    assert all(c.size == PAGE << 12 for c in clears)
    for interval in _intervals(run.events):
        chunks = [e.chunk for e in interval if isinstance(e, ev.LazyClear)]
        assert len(chunks) == len(set(chunks))
    # the first pass clears 16 MiB chunks one after another in address order, each before its first page
    first_pass = [e.chunk for e in _intervals(run.events)[0] if isinstance(e, ev.LazyClear)]
    assert first_pass == list(range(len(first_pass))) and len(first_pass) > 32


def test_fact11_rate_limit(default_bw_run):
    """No window moves more than 13,421,772 bytes plus one page (and the EOS marker) while rate-limited."""
    assert rate_limit_max(128 * MIB) == 13_421_772
    events = default_bw_run.events
    stop = of(events, ev.VcpusStopped)[0].seq
    windows = [w for w in of(events, ev.RateWindow) if w.seq < stop]
    assert len(windows) > 20
    overshoot = 8 + 4096 + 1 + len("pc.ram") + 8
    assert max(w.transferred for w in windows) <= 13_421_772 + overshoot
    assert max(w.transferred for w in windows) > 13_421_772  # the budget is actually used up


def test_fact11_switchover_is_unlimited(default_bw_run):
    """During downtime the stream runs at link speed (10 Gbit/s), not at max-bandwidth."""
    events = default_bw_run.events
    stop = of(events, ev.VcpusStopped)[0]
    down = [e for e in of(events, ev.Transfer) if not e.running and e.kind == "pages"]
    nbytes, ns = sum(e.bytes for e in down), sum(e.wire_ns for e in down)
    assert nbytes > 13_421_772 or ns < 100e6
    assert nbytes / ns * 1e9 == pytest.approx(1.25e9, rel=0.01)
    assert stop.seq < down[0].seq


def test_fact13_expected_downtime(hot_run):
    """300 ms until the first > 1 s sync period; then dirty_bytes_last_sync / bandwidth per window."""
    events = hot_run.events
    first_rate = next(s for s in syncs(events) if s.period_closed and s.dirty_pages_rate)
    last_sync = None
    checked = 0
    for e in events:
        if isinstance(e, ev.BitmapSync):
            last_sync = e
        elif isinstance(e, ev.RateWindow):
            if e.seq < first_rate.seq:
                assert e.expected_downtime == 300
            elif e.transferred > 10_000:
                assert e.expected_downtime == int(last_sync.migration_dirty_pages * PAGE / e.bandwidth)
                checked += 1
    assert checked >= 1


def test_dirty_pages_rate_only_over_periods_longer_than_a_second(hot_run):
    """``migration_update_rates``: rate = new pages of the period x 1000 // period ms, only for periods > 1000 ms."""
    ms = lambda e: e.t_ns // 10**6  # noqa: E731
    syncs_ = syncs(hot_run.events)
    start, pending, rate = ms(syncs_[0]), 0, 0
    for s in syncs_[1:]:
        pending += s.new_dirty_pages
        assert s.period_closed == (ms(s) > start + 1000)
        if s.period_closed:
            rate = pending * 1000 // (ms(s) - start)
            start, pending = ms(s), 0
        assert s.dirty_pages_rate == rate
    assert any(s.period_closed for s in syncs_)
