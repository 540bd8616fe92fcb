"""The BQL (issue 12 item 4): the sync holds it; ring-full reaps, the reaper and MMIO exits wait for it.

Each test reproduces its number in closed form: the holds are set by hand or
read back from the events (a sync holds the lock for its ``cost_ns`` and ends
at its event's time).
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from builders import BASE, NO_COSTS, merge, of, simulate
from dirtysim.bql import Bql
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.report.tables import summary
from dirtysim.scenario.schema import Scenario

pytestmark = pytest.mark.rules

MS = 10**6


# --------------------------------------------------------------------------- the lock's timeline


def test_a_request_waits_for_the_current_hold_and_a_hold_taken_at_release_continues_it():
    bql = Bql()
    assert bql.hold(100, 50) == 0  # [100, 150)
    assert bql.hold(120, 10) == 30  # asked at 120, gets it at 150: held to 160, one span for anyone waiting
    assert bql.span.tolist() == [100, 160]
    assert bql.hold(155, 5) == 5 and bql.span.tolist() == [100, 165]
    assert bql.hold(164, 0) == 1 and bql.span.tolist() == [100, 165]  # a request that holds nothing
    assert bql.hold(165, 5) == 0 and bql.span.tolist() == [100, 170]  # taken at the release: still one span
    assert bql.hold(300, 1) == 0 and bql.span.tolist() == [300, 301]  # a new hold


def _drive(gen):
    """Run a generator that only yields from ``sleep``; its return value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def test_lock_waits_out_the_hold_even_when_it_grows_meanwhile():
    """bql_lock by a process: asked at 0 while held to 10 ns it sleeps 10; a vCPU's reap queued behind the
    holder while it slept keeps the lock to 15, so it sleeps 5 more: 15 ns waited in all."""
    bql, clock = Bql(), [0]
    bql.hold(0, 10)

    def sleep(ns):
        if clock[0] == 0:
            bql.hold(3, 5)  # asked at 3, runs [10, 15)
        clock[0] += ns
        yield

    assert _drive(bql.lock(lambda: clock[0], sleep)) == 15 and clock[0] == 15
    assert _drive(bql.lock(lambda: clock[0], sleep)) == 0  # free now: no sleep


def test_lock_waits_even_one_nanosecond():
    bql, clock = Bql(), [0]
    bql.hold(0, 1)

    def sleep(ns):
        clock[0] += ns
        yield

    assert _drive(bql.lock(lambda: clock[0], sleep)) == 1


# --------------------------------------------------------------------------- MMIO exits in the vCPU kernel


def _machine(ring=False, mmio=1000, mmio_cost="0ns", rate="0B/s", quantum="1ms", ring_size=1024):
    sc = Scenario.model_validate(merge(BASE, {
        "machine": {"memory": {"size": "64MiB"},
                    "vcpus": [{"count": 1, "mmio_exits": mmio, "workload": {"kind": "uniform", "rate": rate}}]},
        "dirty_tracking": {"mode": "ring" if ring else "bitmap", "ring_size": ring_size},
        "engine": {"quantum": quantum},
        "costs": {"mmio_exit": mmio_cost, "ring_full_exit": "10us", "ring_reap_per_entry": "50ns",
                  "ring_reset_per_entry": "70ns"}}))
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    return Machine(env, sc, rec, np.random.SeedSequence(sc.seed)), env, rec


def test_an_mmio_exit_inside_a_hold_waits_for_its_end():
    """1000 exits/s, 1 ms quanta, free exits: exits at 1, 2, 3 ms ... The BQL is held over [2.5, 7.5) ms: the
    exit at 3 ms waits 4.5 ms (prepare_mmio_access), the vCPU is out of the guest until 7.5 ms; of 10 ms it ran
    5.5 ms, so 5 exits."""
    m, env, _ = _machine()
    m.bql.hold(2_500_000, 5 * MS)
    m.guest.start()
    m.guest.advance(10 * MS, False)
    assert m.guest.total("bql_wait_ns") == 4_500_000
    assert m.guest.total("mmio_exits") == 5
    assert m.guest.out_of_guest_ns()[0] == 4_500_000


def test_exits_that_miss_the_hold_do_not_wait():
    """A hold between two exits ([1.2, 1.8) ms) is met by none: no wait."""
    m, env, _ = _machine()
    m.bql.hold(1_200_000, 600_000)
    m.guest.start()
    m.guest.advance(5 * MS, False)
    assert m.guest.total("bql_wait_ns") == 0
    assert m.guest.total("mmio_exits") == 5


def test_mmio_exits_cost_guest_time():
    """20,000 exits/s at 10 us each: 20 % of the vCPU's time goes to exits, so its writes drop to ~5/6 of what
    they would be ... a vCPU that exits e times in run time r has e = r x 20,000/s and r + e x 10 us = T."""
    m, env, _ = _machine(mmio=20_000, mmio_cost="10us", rate="400MiB/s")
    m.guest.start()
    m.guest.advance(1000 * MS, False)
    exits, mmio_ns = m.guest.total("mmio_exits"), m.guest.total("mmio_ns")
    assert mmio_ns == exits * 10_000
    run = 1000 * MS / (1 + 20_000 * 10_000 / 1e9)  # r (1 + rate x cost) = T
    assert exits == pytest.approx(run * 20_000 / 1e9, rel=1e-3)  # exits are charged a quantum late
    quiet, _, _ = _machine(mmio=0, rate="400MiB/s")
    quiet.guest.start()
    quiet.guest.advance(1000 * MS, False)
    assert m.guest.total("writes") / quiet.guest.total("writes") == pytest.approx(run / (1000 * MS), rel=2e-3)


# --------------------------------------------------------------------------- ring-full reaps and the reaper


def test_a_ring_full_exit_waits_for_the_bql_and_holds_it_while_reaping():
    """kvm_cpu_exec on KVM_EXIT_DIRTY_RING_FULL: bql_lock, reap, bql_unlock. Held until 3 ms; the exit at 2 ms
    waits 1 ms (the vCPU's bql_wait_ns, the reap's event), reaps, and the lock is busy for the reap after."""
    m, env, rec = _machine(ring=True, mmio=0)
    m.memory.memory_global_dirty_log_start(1)
    m.bql.hold(0, 3 * MS)
    m.guest.start()
    m.guest.next_t = 2 * MS
    stall = m._ring_full(0)
    reap = of(rec.events, ev.DirtyRingReap)[-1]
    assert (reap.reason, reap.bql_wait_ns) == ("ring-full", 1 * MS)
    assert stall == reap.cost_ns + 10_000  # the exit and the reap; the wait is counted apart
    assert m.guest.total("bql_wait_ns") == 1 * MS
    assert m.bql.free_at == 3 * MS + reap.cost_ns


def test_the_reaper_waits_for_the_bql_and_its_period_starts_after_the_reap():
    """kvm_dirty_ring_reaper_thread: sleep 1 s, bql_lock, reap, unlock. Held [0, 1.5 s): the first reap comes at
    1.5 s having waited 0.5 s; the next one 1 s after that reap ended. (The vCPU's ring never fills, so only
    the reaper reaps.)"""
    m, env, rec = _machine(ring=True, mmio=0, rate="1MiB/s", ring_size=4096)
    m.memory.memory_global_dirty_log_start(1)
    m.bql.hold(0, 1500 * MS)
    m.start()
    env.run(until=3000 * MS)
    reaps = [e for e in of(rec.events, ev.DirtyRingReap) if e.reason == "reaper"]
    assert [(r.t_ns, r.bql_wait_ns) for r in reaps] == [(1500 * MS, 500 * MS), (2500 * MS + reaps[0].cost_ns, 0)]
    assert reaps[0].cost_ns > 0


# --------------------------------------------------------------------------- a migration


SLOW_SYNC = merge({"costs": NO_COSTS}, {
    "machine": {"memory": {"size": "1GiB"},
                "vcpus": [{"count": 2, "mmio_exits": 1000,
                           "workload": {"kind": "hotset", "rate": "40MiB/s", "hot": "64MiB", "hot_share": 0.9}}]},
    "costs": {"bitmap_sync_per_gib": "20ms", "mmio_exit": "0ns"}})


def _sync_windows(events) -> list[tuple[int, int]]:
    """[start, end) of each sync with the guest running: the sync's event comes at its end, it held the BQL
    for cost_ns (the setup's log start costs nothing here)."""
    stop = min([e.t_ns for e in of(events, ev.VcpusStopped)], default=events[-1].t_ns)
    return [(e.t_ns - e.cost_ns, e.t_ns) for e in of(events, ev.BitmapSync) if e.t_ns - e.cost_ns < stop]


def test_vcpus_with_mmio_exits_wait_out_every_sync():
    """Each running sync holds the BQL 20 ms; a vCPU exiting every 1 ms meets it within 1 ms of its start and
    waits to its end: per sync and vCPU a wait in (19, 20] ms. Nothing else holds it in bitmap mode."""
    res = simulate(**SLOW_SYNC)
    windows = _sync_windows(res.events)
    assert len(windows) >= 2 and all(end - start == 20 * MS for start, end in windows)
    s = summary(res.events)["dirtysim"]
    waited = s["vcpu-bql-wait-ms"] * MS
    n = 2 * len(windows)
    assert n * 19 * MS <= waited <= n * 20 * MS
    assert s["migration-bql-wait-ms"] == 0.0 and s["lost-pages"] == 0
    assert s["mmio-exits"] > 0


def test_without_mmio_exits_a_bitmap_migration_never_waits():
    res = simulate(**merge(SLOW_SYNC, {"machine": {"vcpus": [{"count": 2, "mmio_exits": 0, "workload": {
        "kind": "hotset", "rate": "40MiB/s", "hot": "64MiB", "hot_share": 0.9}}]}}))
    s = summary(res.events)["dirtysim"]
    assert s["vcpu-bql-wait-ms"] == 0.0 and s["mmio-exits"] == 0


def test_ring_full_reaps_during_a_sync_wait_for_its_end():
    """Dirty ring, a vCPU filling its 1024-entry ring every ~2 ms: a ring-full exit inside a sync's 20 ms
    hold waits until the sync (or a reap queued behind it) releases the BQL; one outside waits for nothing
    but another reap. The vCPUs' waits add up to the reaps' waits."""
    res = simulate(**merge(SLOW_SYNC, {
        "machine": {"vcpus": [{"count": 2, "workload": {"kind": "uniform", "rate": "2GiB/s"}}]},
        "dirty_tracking": {"mode": "ring", "ring_size": 1024}}))
    windows = _sync_windows(res.events)
    reaps = [e for e in of(res.events, ev.DirtyRingReap) if e.reason == "ring-full"]
    inside = [(r, end) for r in reaps for start, end in windows if start <= r.t_ns < end]
    assert inside, "no ring-full exit fell inside a sync"
    assert all(r.t_ns + r.bql_wait_ns >= end for r, end in inside)
    stats = of(res.events, ev.VcpuStats)
    assert sum(e.bql_wait_ns for e in stats) == sum(r.bql_wait_ns for r in reaps if r.t_ns < windows[-1][1])
    assert summary(res.events)["dirtysim"]["lost-pages"] == 0


def test_compare_counts_bql_waits_and_pml_exits_as_vcpu_time_lost():
    """`dirtysim compare` / sweep tables: vcpu-lost-ms is what tracking takes from the vCPUs (faults, ring-full
    and PML-full exits, BQL waits), not the MMIO exits' own cost."""
    from dirtysim.sweep import comparison_row

    res = simulate(**merge(SLOW_SYNC, {"costs": {"pml_full_exit": "5us", "mmio_exit": "5us"}}))
    d = summary(res.events)["dirtysim"]
    assert d["vcpu-bql-wait-ms"] > 0 and d["vcpu-pml-full-ms"] > 0 and d["vcpu-mmio-ms"] > 0
    row = comparison_row("slow-sync", summary(res.events))
    assert row["vcpu-lost-ms"] == round(d["vcpu-fault-ms"] + d["vcpu-ring-full-ms"] + d["vcpu-pml-full-ms"]
                                        + d["vcpu-bql-wait-ms"], 1)
    assert row["vcpu-lost-ms"] < round(d["vcpu-bql-wait-ms"] + d["vcpu-pml-full-ms"] + d["vcpu-mmio-ms"], 1)


def test_the_migration_thread_waits_for_a_reap_that_holds_the_bql():
    """ram_state_pending_exact takes the BQL: a sync that comes while the reaper or a ring-full vCPU reaps
    (here slowly: 20 us per entry) starts when that reap, and any queued behind it, releases the lock."""
    res = simulate(**merge(SLOW_SYNC, {
        "machine": {"vcpus": [{"count": 2, "workload": {"kind": "uniform", "rate": "64MiB/s"}}]},
        "dirty_tracking": {"mode": "ring", "ring_size": 4096},
        "costs": {"ring_reap_per_entry": "20us", "bitmap_sync_per_gib": "1ms"}}))
    ends = set()
    for r in of(res.events, ev.DirtyRingReap):
        if r.reason == "ring-full":
            ends.add(r.t_ns + r.bql_wait_ns + r.cost_ns)  # the exit at t_ns, the reap after its wait
        elif r.reason == "reaper":
            ends.add(r.t_ns + r.cost_ns)  # the reap at t_ns, after its wait
    waited = [e for e in of(res.events, ev.BitmapSync) if e.bql_wait_ns]
    assert waited, "no sync met a reap"
    assert all(e.t_ns - e.cost_ns in ends for e in waited)  # it starts exactly at a reap's release
    assert summary(res.events)["dirtysim"]["migration-bql-wait-ms"] * MS == pytest.approx(
        sum(e.bql_wait_ns for e in waited), abs=1000)
