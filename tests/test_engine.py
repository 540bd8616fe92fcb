"""The fast engine paths against the plain ones they replace: same events, same state.

``kernels.iterate_slices`` (send slices and the vCPUs between them in one numba
call) is checked against ``PrecopyMigration.send_slice`` driven by SimPy one
slice at a time; ``kernels.run_vcpus`` over many quanta against one quantum per
call. Both must give the identical event log (fingerprint) or state.
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from builders import scenario
from dirtysim.dirty import kernels as K
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION
from dirtysim.migration.slices import FusedSlices
from dirtysim.sim import run

CASES = {
    "kvm-manual": {},
    "kvm-legacy": {"dirty_tracking": {"manual_protect": False, "initially_set": False}},
    "kvm-shift-6": {"dirty_tracking": {"clear_bitmap_shift": 6}},
    "tcg": {"machine": {"accel": "tcg"}},
    "rate-limited": {"migration": {"max_bandwidth": "64MiB/s", "timeout": "4s"}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_slices_give_the_same_log_as_python_slices(monkeypatch, case):
    sc = scenario(**CASES[case])
    fused = run(sc, progress=False)
    monkeypatch.setattr(FusedSlices, "eligible", lambda self: False)
    plain = run(sc, progress=False)
    assert fused.error is None and plain.error is None
    assert len(fused.events) > 200
    assert fused.fingerprint == plain.fingerprint


def _guest_machine():
    sc = scenario(machine={"memory": {"size": "256MiB"}, "vcpus": [
        {"count": 3, "workload": {"kind": "hotset", "rate": "37MiB/s", "hot": "16MiB", "hot_share": 0.7}}]},
        costs={"write_fault": "150us"}, dirty_tracking={"pml": False})  # write-protect faults, not PML
    env = simpy.Environment()
    m = Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(4))
    m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    m.kvm.dirty[:] = 0  # everything write-protected: writes fault and owe run time
    m.guest.start()
    return m


def test_many_quanta_in_one_call_equal_one_quantum_per_call():
    a, b = _guest_machine(), _guest_machine()
    a.guest.advance(3_000_000_000, False)
    while b.guest.next_t < 3_000_000_000:
        b.guest.advance(b.guest.next_t, True)
    assert a.guest.next_t == b.guest.next_t == 3_000_000_000
    np.testing.assert_array_equal(a.guest.vi, b.guest.vi)
    assert a.guest.vi[K.VI_FAULT_NS].sum() > 0  # faults cost run time: the owed-time rule was exercised
    for name in ("nonzero", "stale"):
        np.testing.assert_array_equal(getattr(a.ram_list, name), getattr(b.ram_list, name))
    np.testing.assert_array_equal(a.kvm.dirty, b.kvm.dirty)
