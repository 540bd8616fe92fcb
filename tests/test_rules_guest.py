"""The vCPUs (``guest.vcpu``) and the lazy actor (``guest.lazy``), checked by what the guest does.

A Guest is built by hand over a real machine's memory (KVM memslots, dirty
logging) with workloads small enough that every write, fault and stall is known
in advance: the expected counts are hand arithmetic on rate x run time
(``kvm_cpu_exec``: a vCPU in KVM_RUN writes; a write-protect fault, a
KVM_EXIT_DIRTY_RING_FULL or an ``accel_ioctl_inhibit_begin`` takes run time away).
"""

from __future__ import annotations

import numpy as np
import pytest
import simpy

from builders import of, scenario
from dirtysim.dirty import kernels as K
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.guest.lazy import LazyActor
from dirtysim.guest.vcpu import STAT_ROWS, Guest
from dirtysim.guest.workload import Workload
from dirtysim.machine import Machine
from dirtysim.memory.address_space import GLOBAL_DIRTY_MIGRATION


pytestmark = pytest.mark.rules

MS = 10**6
PAGE = 4096
PAGES_PER_MS = PAGE * 1000  # a rate of one 4 KiB page per ms, in bytes/s
NO_STATS = dict.fromkeys(STAT_ROWS, 0)  # a vCPU's counters when nothing happened


def _machine(mode="bitmap", size="64MiB", logging=True, initially_set=False, ring_full_exit="10us", vcpus=1):
    """A machine whose KVM has ``vcpus`` dirty rings (the hand-built Guest must have as many vCPUs in ring mode)."""
    sc = scenario(machine={"memory": {"size": size, "zero_fraction": 0.0},
                           "vcpus": [{"count": vcpus, "workload": {"kind": "uniform", "rate": "1MiB/s"}}]},
                  dirty_tracking={"mode": mode, "initially_set": initially_set, "ring_size": 1024},
                  costs={"ring_full_exit": ring_full_exit, "ring_reap_per_entry": "50ns",
                         "ring_reset_per_entry": "70ns"})
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    m = Machine(env, sc, rec, np.random.SeedSequence(sc.seed))
    if logging:
        m.memory.memory_global_dirty_log_start(GLOBAL_DIRTY_MIGRATION)
    return m, rec


def _guest(m, rec, workloads, rates, fault_ns=0, quantum=MS, seeds=None) -> Guest:
    seeds = seeds if seeds is not None else range(len(workloads))
    g = Guest(workloads, [np.random.default_rng(s) for s in seeds], rates, m.kvm, m.guest_map, quantum, fault_ns,
              rec)
    if m.kvm.ring:
        g.on_ring_full = lambda v: m.kvm_listener.reap("ring-full", v) + m.scenario.costs.ring_full_exit
    return g


def _column(g: Guest, name: str) -> list[int]:
    return [row[name] for row in g.take_stats()]


class Ticker(LazyActor):
    """A lazy actor that records which quanta it is asked to run."""

    def __init__(self, quantum_ns: int):
        self.quantum_ns, self.calls = quantum_ns, []

    def run_quanta(self, n: int) -> None:
        self.calls.append((self.next_t, n))
        self.next_t += n * self.quantum_ns


def test_lazy_actor_runs_the_quanta_simpy_would_have_run():
    """Quanta start at 0, q, 2q ...; a process waking at t sees those before t, and the one at t iff ``include``."""
    a = Ticker(10)
    a.advance(100, True)
    assert a.calls == [], "not started"
    a.start()
    assert (a.calls, a.next_t) == ([(0, 1)], 10)
    a.advance(30, False)  # quanta at 10 and 20
    a.advance(30, True)  # and the one at 30
    a.advance(35, True)  # none starts in (30, 35]
    a.advance(41, False)  # the one at 40
    assert a.calls == [(0, 1), (10, 2), (30, 1), (40, 1)]
    a.stop()
    a.advance(1000, True)
    assert a.next_t == 50 and len(a.calls) == 4


def test_lazy_actor_boundaries_at_one_nanosecond():
    """With 1 ns quanta every boundary shows: start runs only the quantum at 0; excluding t keeps t - 1."""
    a = Ticker(1)
    a.start()
    a.advance(5, False)
    a.advance(5, True)
    assert a.calls == [(0, 1), (1, 4), (5, 1)]


def test_writes_are_rate_times_run_time_with_the_remainder_carried():
    """1.5 pages per 1 ms quantum: after k quanta floor(1.5 k) writes; quanta start at 0, 1, 2 ... ms."""
    m, rec = _machine(logging=False)
    g = _guest(m, rec, [Workload(0, 64)], [PAGES_PER_MS * 3 // 2])
    g.advance(10 * MS, True)
    assert g.take_stats()[0]["writes"] == 0, "not started: no quanta"
    g.start()  # the quantum at 0
    assert (g.next_t, g.take_stats()[0]["writes"]) == (MS, 1)
    g.advance(10 * MS, False)  # quanta at 1 .. 9 ms
    assert (g.next_t, _column(g, "writes")) == (10 * MS, [15 - 1])
    g.advance(10 * MS, True)  # and the one at 10 ms
    assert (g.next_t, _column(g, "writes")) == (11 * MS, [16 - 15])
    g.advance(10 * MS, True)  # nothing left before or at 10 ms
    assert (g.next_t, _column(g, "writes")) == (11 * MS, [0])
    g.stop()
    g.advance(20 * MS, True)
    assert (g.next_t, _column(g, "writes")) == (11 * MS, [0])


def test_quantum_length_scales_the_writes():
    """A 250 us quantum at 4 pages per ms: one page per quantum; 40 quanta in 10 ms."""
    m, rec = _machine(logging=False)
    g = _guest(m, rec, [Workload(0, 64)], [4 * PAGES_PER_MS], quantum=MS // 4)
    g.start()
    g.advance(10 * MS, False)
    assert (g.next_t, _column(g, "writes")) == (10 * MS, [40])


def test_write_protect_fault_costs_run_time():
    """One page, write-protected at the start of logging: the first write faults and costs 0.4 ms of run time.

    10 pages/ms: quantum 0 writes 10 (1 fault); quantum 1 runs 0.6 ms -> 6; quantum 2 writes 10 again.
    """
    m, rec = _machine()
    g = _guest(m, rec, [Workload(5, 1)], [10 * PAGES_PER_MS], fault_ns=400_000)
    g.start()
    assert g.take_stats() == [NO_STATS | {"writes": 10, "faults": 1, "fault_ns": 400_000}]
    g.advance(MS, True)
    assert (_column(g, "writes"), g.next_t) == ([6], 2 * MS)
    g.advance(2 * MS, True)
    assert _column(g, "writes") == [10]
    assert m.kvm.dirty[0] == 1 << 5, "the page's bit is set (and it is writable again)"


def test_a_fault_longer_than_a_quantum_takes_whole_quanta():
    """A 2.5 ms fault: quanta 1 and 2 run not at all, quantum 3 runs 0.5 ms (5 writes at 10 pages/ms)."""
    m, rec = _machine()
    g = _guest(m, rec, [Workload(0, 1)], [10 * PAGES_PER_MS], fault_ns=2_500_000)
    g.start()
    assert _column(g, "writes") == [10]
    g.advance(2 * MS, True)
    assert _column(g, "writes") == [0]
    g.advance(3 * MS, True)
    assert _column(g, "writes") == [5]


def test_no_faults_without_dirty_logging_or_with_initially_set():
    """Pages are write-protected only by dirty logging, and INITIALLY_SET leaves them writable until a CLEAR."""
    for kw in ({"logging": False}, {"initially_set": True}):
        m, rec = _machine(**kw)
        g = _guest(m, rec, [Workload(0, 1)], [10 * PAGES_PER_MS], fault_ns=400_000)
        g.start()
        g.advance(MS, True)
        assert _column(g, "writes") == [20], kw


def test_every_first_write_to_a_page_faults_once():
    """Bitmap mode, manual protect: faults = distinct pages written = bits in the KVM bitmap; time = faults x cost."""
    m, rec = _machine()
    g = _guest(m, rec, [Workload(0, 4096), Workload(2048, 4096)], [50 * PAGES_PER_MS, 30 * PAGES_PER_MS],
               fault_ns=1_000)
    g.start()
    g.advance(20 * MS, False)
    rows = g.take_stats()
    faults = sum(r["faults"] for r in rows)
    distinct = sum(bin(int(w)).count("1") for w in m.kvm.dirty)
    assert 0 < faults == distinct < sum(r["writes"] for r in rows)
    assert [r["fault_ns"] for r in rows] == [r["faults"] * 1_000 for r in rows]
    assert not m.kvm.dirty[6144 // 64 :].any(), "no write beyond the working sets"


def _expected_pages(seed: int, first: int, pages: int, n: int) -> set[int]:
    """The pages a uniform workload writes: one variate per write, drawn one by one."""
    u = np.random.default_rng(seed).random(n)
    return set((first + (u * pages).astype(np.int64)).tolist())


def test_pages_written_are_the_streams_draws_across_refills():
    """Each vCPU maps its own stream's variates in order, whatever the block size: 2 x 12,000 writes cross refills."""
    m, rec = _machine(size="1GiB")
    g = _guest(m, rec, [Workload(0, 100_000), Workload(150_000, 100_000)], [100 * PAGES_PER_MS, 20 * PAGES_PER_MS],
               seeds=[11, 12])
    g.start()
    g.advance(120 * MS, False)
    assert _column(g, "writes") == [12_000, 2_400]
    g.advance(600 * MS, False)
    assert _column(g, "writes") == [48_000, 9_600]
    expected = _expected_pages(11, 0, 100_000, 60_000) | _expected_pages(12, 150_000, 100_000, 12_000)
    bits = np.unpackbits(m.kvm.dirty.view(np.uint8), bitorder="little")
    assert set(np.flatnonzero(bits).tolist()) == expected


def test_stall_takes_run_time_from_that_vcpu_only():
    """KVM_EXIT_DIRTY_RING_FULL of vCPU 1 for 2.5 ms: it writes 25 pages fewer; vCPU 0 is not held."""
    m, rec = _machine(logging=False)
    g = _guest(m, rec, [Workload(0, 64), Workload(64, 64)], [10 * PAGES_PER_MS] * 2)
    g.start()
    g.take_stats()
    g.stall(1, 2_500_000)
    g.stall(1, 1_000_000)
    g.advance(10 * MS, False)
    assert g.take_stats() == [NO_STATS | {"writes": 90},
                              NO_STATS | {"writes": 90 - 35, "ring_full_exits": 2, "ring_full_ns": 3_500_000}]
    assert _column(g, "ring_full_exits") == [0, 0], "counters restart after each take"


def test_inhibit_holds_every_vcpu():
    """``accel_ioctl_inhibit_begin`` for 1.2 ms: each vCPU writes 12 pages fewer and counts the time."""
    m, rec = _machine(logging=False)
    g = _guest(m, rec, [Workload(0, 64), Workload(64, 64)], [10 * PAGES_PER_MS, 20 * PAGES_PER_MS])
    g.start()
    g.take_stats()
    g.stall_inhibit(1_200_000)
    g.advance(5 * MS, False)
    rows = g.take_stats()
    assert [r["writes"] for r in rows] == [40 - 12, 80 - 24]
    assert [r["inhibit_ns"] for r in rows] == [1_200_000] * 2


def test_ring_full_exit_stalls_the_vcpu_and_is_recorded_in_its_quantum():
    """Ring mode, 1024 entries with PML: soft-full at 448. 100 distinct pages per ms fill it in quantum 4 (t=4 ms).

    Each exit costs the vCPU the exit (10 us) plus the reaping (120 ns per entry), and the reap event carries the
    time of the quantum being run; the ring is reaped, so the vCPU goes on.
    """
    m, rec = _machine(mode="ring", vcpus=2)
    g = _guest(m, rec, [Workload(0, 16384), Workload(0, 1)], [100 * PAGES_PER_MS, PAGES_PER_MS])
    g.start()
    g.advance(30 * MS, False)
    reaps = [e for e in of(rec.events, ev.DirtyRingReap) if e.reason == "ring-full"]
    rows = g.take_stats()
    assert len(reaps) == rows[0]["ring_full_exits"] >= 2
    assert (rows[1]["ring_full_exits"], rows[1]["ring_full_ns"], rows[1]["writes"]) == (0, 0, 30), \
        "vCPU 1 pushes one entry per reap: its ring never fills"
    assert reaps[0].vcpu == 0 and reaps[0].t_ns == 4 * MS and 448 <= reaps[0].entries < 548
    assert rows[0]["ring_full_ns"] == sum(10_000 + r.entries * 120 for r in reaps)
    assert rec.time_override is None
    # writes lost to the stalls: 100 pages per ms of stall, the remainder carried (stalls end before 30 ms)
    assert rows[0]["writes"] == (100 * (30 * MS - rows[0]["ring_full_ns"])) // MS


def test_kernel_arguments_follow_the_writer():
    """Bitmap mode passes a dummy ring (never used); ring mode passes the machine's rings."""
    m, rec = _machine(mode="ring")
    g = _guest(m, rec, [Workload(0, 64)], [PAGES_PER_MS])
    args = g.kernel_args()
    assert args[-5] is True and args[-4] is m.kvm.rings and args[-1] == m.kvm.soft_limit == 448
    m2, rec2 = _machine()
    args = _guest(m2, rec2, [Workload(0, 64)], [PAGES_PER_MS]).kernel_args()
    assert args[-5] is False and args[-1] == 0


def test_ring_mode_needs_a_ring_per_vcpu():
    """The write kernels index the dirty rings by vCPU without bounds checks: a missing ring is refused up front."""
    m, rec = _machine(mode="ring")
    with pytest.raises(ValueError, match="^2 vCPUs but 1 dirty rings$"):
        _guest(m, rec, [Workload(0, 64)] * 2, [PAGES_PER_MS] * 2)


def test_overflowing_rate_is_refused():
    """rate x quantum must stay below 2**62 - 4096e9 so that carry + rate x run cannot overflow int64.

    2**62 - 4096e9 = 2**21 x (2**41 - 1953125): with a 2**21 ns quantum the boundary is hit exactly.
    """
    m, rec = _machine(logging=False)
    message = "^a vCPU's writes in one quantum overflow 64-bit arithmetic: lower rate or quantum$"
    with pytest.raises(ValueError, match=message):
        _guest(m, rec, [Workload(0, 64)] * 2, [PAGES_PER_MS, (1 << 41) - 1953125], quantum=1 << 21)
    _guest(m, rec, [Workload(0, 64)], [(1 << 41) - 1953125 - 1], quantum=1 << 21)  # just below: accepted


def test_unassigned_writes_are_counted():
    """Writes to guest pages no memslot maps (above 64 MiB of RAM) are counted, not performed."""
    m, rec = _machine()
    g = _guest(m, rec, [Workload(20_000, 8)], [5 * PAGES_PER_MS])
    g.start()
    g.advance(MS, True)
    assert (g.unassigned_writes, g.nvcpus) == (10, 1)
    assert not m.kvm.dirty.any()


def test_a_kernel_that_stops_early_is_an_error_not_a_spin(monkeypatch):
    """``run_quanta`` waits for its quanta to be done: RUN_DONE with quanta left is a broken invariant, reported."""
    m, rec = _machine(logging=False)
    g = _guest(m, rec, [Workload(0, 64)], [PAGES_PER_MS])
    monkeypatch.setattr(K, "run_vcpus", lambda n, *args: K.RUN_DONE)  # does nothing, says done
    with pytest.raises(RuntimeError, match=r"^run_vcpus returned 0 with 3 of its quanta not done$"):
        g.run_quanta(3)
