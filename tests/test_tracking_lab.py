"""Dirty-tracking semantics: facts 8 and 9, the dirty_log_test invariant, and the wrong variants."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import of, scenario, simulate
from dirtysim.accel.kvm import dirty_ring_soft_limit
from dirtysim.dirty import kernels
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.migration.precopy import PrecopyMigration
from dirtysim.sim import Machine

PAGE = 4096


# -- fact 8: dirty-ring soft-full -------------------------------------------------------------------

def test_fact8_soft_limit_numbers():
    assert dirty_ring_soft_limit(4096, pml=True) == 3520
    assert dirty_ring_soft_limit(1024, pml=True) == 448
    assert dirty_ring_soft_limit(4096, pml=False) == 4032


def _machine(**over):
    sc = scenario(**over)
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    machine = Machine(env, sc, rec, np.random.SeedSequence(sc.seed))
    migration = PrecopyMigration(env, sc, machine, rec)
    return env, rec, machine, migration


def _run(env, gen):
    """Drive one of the migration thread's generator steps to its end."""
    proc = env.process(gen)
    env.run(proc)


def _write(machine, vcpu, pages):
    nv = machine.guest.nvcpus
    seg_end = np.zeros(nv, dtype=np.int64)
    seg_end[vcpu:] = len(pages)
    faults = np.zeros(nv, dtype=np.int64)
    machine.kvm.apply_writes(np.asarray(pages, dtype=np.int64), seg_end, faults, machine.guest_map.table)
    return faults


@pytest.mark.parametrize("pml,limit", [(True, 448), (False, 960)])
def test_fact8_vcpu_exits_at_the_soft_limit(pml, limit):
    env, rec, machine, migration = _machine(
        machine={"memory": {"size": "16MiB"}, "vcpus": [{"count": 2, "workload": {"kind": "uniform",
                                                                                 "rate": "1MiB/s"}}]},
        dirty_tracking={"mode": "ring", "ring_size": 1024, "pml": pml})
    _run(env, migration.ram_save_setup())
    seen = []
    kvm = machine.kvm
    kvm.on_ring_full = lambda v: (seen.append((v, int(kvm.dirty_index[v] - kvm.reset_index[v]))),
                                  machine.kvm_listener.reap("ring-full", v))
    faults = _write(machine, 1, range(2000))  # 2000 distinct protected pages by vCPU 1
    assert seen == [(1, limit)] * (2000 // limit)
    assert faults[1] == 2000
    unreaped = range(2000 - 2000 % limit, 2000)
    assert _write(machine, 1, unreaped)[1] == 0  # their entries wait in the ring: still writable
    assert _write(machine, 1, range(10))[1] == 10  # reaped and reset: write-protected again
    reaps = [e for e in of(rec.events, ev.DirtyRingReap) if e.reason == "ring-full"]
    assert [e.entries for e in reaps] == [limit] * len(reaps)


# -- fact 9: the vhost harvesting race ---------------------------------------------------------------

def _vhost_machine(harvest):
    return _machine(machine={"memory": {"size": "16MiB"},
                             "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"}}],
                             "devices": [{"kind": "vhost-user-net", "rx": "1MiB/s", "buffers": "1MiB"}]},
                    dirty_tracking={"vhost_harvest": harvest, "vhost_harvest_gap": "1ms", "initially_set": False})


def _device_write(machine, pages):
    ls = machine.backends[0].listener
    rl = machine.ram_list
    return kernels.backend_writes(np.asarray(pages, dtype=np.int64), ls.tbl_gpa, ls.tbl_pages,
                                  machine.guest_map.table, *rl.oracle_args(), ls.log.words, ls.logging)


def _l2_pages(machine):
    rl = machine.ram_list
    return set(np.flatnonzero(np.unpackbits(rl.dirty_memory.view(np.uint8), bitorder="little")))


def test_fact9_read_then_zero_loses_a_bit_set_in_between():
    env, rec, machine, migration = _vhost_machine("read-then-zero")
    _run(env, migration.ram_save_setup())
    machine.ram_list.dirty_memory[:] = 0
    _device_write(machine, [100])
    machine.memory.memory_global_dirty_log_sync(False)  # reads the word holding page 100; the store of 0 comes later
    assert _l2_pages(machine) == {100}
    _device_write(machine, [101])  # same log word, ORed between the read and the store
    env.run(env.now + 2_000_000)  # the store of 0 happens
    assert of(rec.events, ev.VhostLogZero)[-1].erased_pages == 1
    machine.ram_list.dirty_memory[:] = 0
    machine.memory.memory_global_dirty_log_sync(False)
    assert 101 not in _l2_pages(machine)  # never reported: the page would not be re-sent


def test_fact9_exchange_reports_every_bit_exactly_once():
    env, rec, machine, migration = _vhost_machine("exchange")
    _run(env, migration.ram_save_setup())
    machine.ram_list.dirty_memory[:] = 0
    _device_write(machine, [100])
    machine.memory.memory_global_dirty_log_sync(False)
    _device_write(machine, [101])
    env.run(env.now + 2_000_000)
    reported = _l2_pages(machine)
    machine.ram_list.dirty_memory[:] = 0
    machine.memory.memory_global_dirty_log_sync(False)
    assert reported == {100} and _l2_pages(machine) == {101}
    machine.ram_list.dirty_memory[:] = 0
    machine.memory.memory_global_dirty_log_sync(False)
    assert _l2_pages(machine) == set()


# -- the dirty_log_test invariant (KVM selftests dirty_log_test) as a property --------------------------------------

MODES = {
    "legacy": {"manual_protect": False},
    "manual-protect": {"manual_protect": True, "initially_set": False, "clear_bitmap_shift": 6},
    "manual-initially-set": {"manual_protect": True, "initially_set": True, "clear_bitmap_shift": 7},
    "ring": {"mode": "ring", "ring_size": 1024},
}
RAM_PAGES = 256  # 1 MiB: few pages, so random steps collide often
DEVICE_PAGES = range(RAM_PAGES - 64 + 1, RAM_PAGES)  # the NIC's buffers (after its used ring)

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 1), st.lists(st.integers(0, RAM_PAGES - 1), max_size=500)),
    st.tuples(st.just("device"), st.lists(st.sampled_from(DEVICE_PAGES), max_size=40)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("send"), st.integers(1, 30)),
    st.tuples(st.just("reap")),
), max_size=30)


@pytest.mark.parametrize("mode", list(MODES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops)
def test_dirty_log_invariant(mode, steps):
    """Any interleaving of guest writes, device DMA, syncs, sends and reaps: a written page not yet reported is
    reported by the next sync (after every sync each stale page is in bmap), no dirty layer ever forgets a stale
    page, and after the final sync and send nothing is lost."""
    env, rec, machine, migration = _machine(
        machine={"memory": {"size": "1MiB", "zero_fraction": 0.0},
                 "vcpus": [{"count": 2, "workload": {"kind": "uniform", "rate": "1MiB/s"}}],
                 "devices": [{"kind": "vhost-user-net", "rx": "1MiB/s", "buffers": "256KiB"}]},
        dirty_tracking=MODES[mode], network={"bandwidth": "41040B/s"},
        engine={"send_quantum": "1s"}, costs={"write_fault": "0ns"})  # send slices of 10 pages
    _run(env, migration.ram_save_setup())
    for step in steps:
        kind = step[0]
        if kind == "write":
            _write(machine, step[1], step[2])
        elif kind == "device":
            _device_write(machine, step[1])
        elif kind == "sync":
            _run(env, migration.bitmap_sync("exact", 0))
            stale = np.unpackbits(machine.ram_list.stale.view(np.uint8), bitorder="little").astype(bool)
            bmap = np.unpackbits(machine.ram_list.blocks[0].bmap.view(np.uint8), bitorder="little").astype(bool)
            assert not (stale & ~bmap).any(), "a stale page was not reported by the sync"
        elif kind == "send":
            for _ in range(step[1]):
                _run(env, migration.send_slice(1 << 40))
        elif kind == "reap" and machine.kvm.ring:
            machine.kvm_listener.reap("reaper")
        assert machine.oracle()[1] == 0, f"a dirty layer forgot a stale page after {kind}"
    _run(env, migration.completion())
    check = of(rec.events, ev.OracleCheck)[-1]
    assert (check.at, check.stale_pages, check.lost_pages) == ("switchover", 0, 0)


# -- the wrong variants lose pages; the correct modes do not, in the same runs -------------------------

LAB = {
    "machine": {"memory": {"size": "1GiB", "zero_fraction": 0.3},
                "vcpus": [{"count": 2, "workload": {"kind": "hotset", "rate": "48MiB/s", "hot": "128MiB",
                                                     "hot_share": 0.9}}],
                "devices": [{"kind": "vhost-user-net", "queues": 2, "rx": "1Gbit/s", "buffers": "128MiB"}]},
    "dirty_tracking": {"clear_bitmap_shift": 14},
    "migration": {"max_bandwidth": "512MiB/s", "start_at": "300ms", "timeout": "60s"},
    "seed": 21,
}


@pytest.mark.parametrize("wrong", [{"kvm_clear": "clear-all"}, {"send_order": "send-before-clear"},
                                   {"vhost_harvest": "read-then-zero"}])
def test_wrong_variants_lose_pages(wrong):
    result = simulate(**{**LAB, "dirty_tracking": {**LAB["dirty_tracking"], **wrong}})
    checks = of(result.events, ev.OracleCheck)
    final = checks[-1]
    assert final.at == "switchover" and final.lost_pages > 0 and final.lost_pages == final.stale_pages
    first = next(c for c in checks if c.lost_pages)
    assert first.at in ("clear-all", "send-before-clear", "vhost-zero") and first.t_ns < final.t_ns


@pytest.mark.parametrize("correct", [{}, {"mode": "ring"}, {"manual_protect": False}])
def test_correct_modes_lose_nothing_in_the_lab(correct):
    result = simulate(**{**LAB, "dirty_tracking": {**LAB["dirty_tracking"], **correct}})
    final = of(result.events, ev.OracleCheck)[-1]
    assert (final.at, final.lost_pages, final.stale_pages) == ("switchover", 0, 0)
    assert sum(e.pages for e in of(result.events, ev.VhostLogSync)) > 0
