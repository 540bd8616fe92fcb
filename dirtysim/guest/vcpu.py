"""The guest's vCPUs: state in arrays, advanced lazily by one numba call for many quanta.

Each vCPU runs in quanta of ``engine.quantum``: it first serves the run time it
owes (a write to a write-protected page costs ``costs.write_fault``, a
KVM_EXIT_DIRTY_RING_FULL the exit and the reaping, an atomic memslot update the
time it holds vCPUs out), then writes pages at its rate. A vCPU that faults a
lot writes less: the fault cost is what ``dirty_log_perf_test`` measures as
"dirty memory time".

The guest is a *lazy actor* (``LazyActor``): nothing happens per quantum in
Python or SimPy. Whoever acts next (the migration thread, the reaper, a timeline
action) first brings the guest up to its own simulated time, and
``run_vcpus`` applies all the quanta in between. Each vCPU draws its variates
from its own ``numpy.random.Generator`` in blocks; a block draw yields exactly
the sequence of one-by-one draws, so results do not depend on the batching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional

import numpy as np

from ..dirty import kernels
from ..scenario.schema import PAGE_SIZE
from .workload import Workload

NS_PER_S = 10**9
MIN_BLOCK = 8192  # variates drawn per vCPU at a time, at least
STAT_FIELDS = ("writes", "faults", "fault_ns", "ring_full_exits", "ring_full_ns", "inhibit_ns")


class LazyActor(ABC):
    """An actor that acts once per quantum from time 0, applied only when someone needs its effects.

    ``next_t`` is the start of its next quantum. SimPy would order a quantum
    that starts exactly when another process wakes by scheduling order: the
    quantum goes first iff its event was already scheduled when that process
    went to sleep, i.e. iff ``next_t`` then equalled the wake-up time
    (``Machine.sleep`` takes that snapshot).
    """

    quantum_ns: int
    next_t: int = 0
    started: bool = False  # by Machine.start (tests may drive a machine that never starts)
    running: bool = True  # the VM runs (until vm_stop)

    def start(self) -> None:
        """Begin at time 0 with the first quantum (SimPy runs a new process before anything scheduled later)."""
        self.started = True
        self.advance(0, True)

    def stop(self) -> None:
        """The VM stops (``vm_stop``): no further quanta."""
        self.running = False

    def advance(self, until: int, include: bool) -> None:
        """Apply every quantum starting before ``until`` (and at ``until`` if ``include``)."""
        if not (self.started and self.running):
            return
        last = until if include else until - 1
        if self.next_t <= last:
            self.run_quanta((last - self.next_t) // self.quantum_ns + 1)

    @abstractmethod
    def run_quanta(self, n: int) -> None:
        """Apply the next ``n`` quanta (``next_t`` advances by ``n`` quanta)."""


class Guest(LazyActor):
    """All vCPUs of the VM, their workloads, RNG streams and per-sync counters."""

    def __init__(self, workloads: list[Workload], rngs: list[np.random.Generator], rates: list[int], writer,
                 quantum_ns: int, fault_ns: int, recorder):
        """``writer`` applies writes (``KvmDirtyLog`` or ``TcgDirtyMemory``): it gives the kernel its target arrays."""
        self.quantum_ns, self.fault_ns, self.writer, self.recorder = quantum_ns, fault_ns, writer, recorder
        self.rngs = rngs
        nv = len(workloads)
        i64 = lambda values: np.array(values, dtype=np.int64)  # noqa: E731
        self.rate = i64(rates)
        page_ns = PAGE_SIZE * NS_PER_S
        if int(self.rate.max(initial=0)) * quantum_ns >= (1 << 62) - page_ns:
            raise ValueError("a vCPU's writes in one quantum overflow 64-bit arithmetic: lower rate or quantum")
        self.maxn = (page_ns - 1 + self.rate * quantum_ns) // page_ns  # most writes one quantum can make
        self.params = (i64([w.first_page for w in workloads]), i64([w.pages for w in workloads]),
                       i64([w.hot_first for w in workloads]), i64([w.hot_pages for w in workloads]),
                       np.array([w.hot_share for w in workloads], dtype=np.float64))
        self.carry, self.debt = np.zeros(nv, dtype=np.int64), np.zeros(nv, dtype=np.int64)
        self.stats = {name: np.zeros(nv, dtype=np.int64) for name in STAT_FIELDS}
        block = max(MIN_BLOCK, 16 * int(self.maxn.max(initial=0)))
        self.ubuf = np.zeros((nv, block))
        self.upos, self.ulen = np.zeros(nv, dtype=np.int64), np.zeros(nv, dtype=np.int64)
        self.qn, self.qf, self.seg_end = (np.zeros(nv, dtype=np.int64) for _ in range(3))
        self.buf = np.zeros(max(1, int(self.maxn.sum())), dtype=np.int64)
        self.rout = np.zeros(3, dtype=np.int64)
        self.state = np.array([0, -1, 0, 0], dtype=np.int64)  # see kernels.run_vcpus
        self.on_ring_full: Optional[Callable[[int], int]] = None  # reaps; returns the stall in ns

    @property
    def nvcpus(self) -> int:
        return self.rate.shape[0]

    @property
    def unassigned_writes(self) -> int:
        """Writes to guest-physical pages that no memslot maps (counted, not performed)."""
        return int(self.state[3])

    def run_quanta(self, n: int) -> None:
        w = self.writer
        ring = w.ring
        rings, di, ri, soft = (w.rings, w.dirty_index, w.reset_index, w.soft_limit) if ring else _NO_RING
        oracle = w.ram_list
        s = self.stats
        while n:
            status = kernels.run_vcpus(n, self.quantum_ns, ring, self.rate, self.carry, self.debt, self.maxn,
                                       self.ubuf, self.upos, self.ulen, *self.params, *w.write_args(),
                                       oracle.nonzero, oracle.stale, rings, di, ri,
                                       soft, self.fault_ns, s["writes"], s["faults"], s["fault_ns"], self.qn,
                                       self.qf, self.seg_end, self.buf, self.rout, self.state)
            done = int(self.state[0])
            self.next_t += done * self.quantum_ns
            n -= done
            if status == kernels.RUN_REFILL:
                self._refill()
            elif status == kernels.RUN_RING_FULL:
                self.recorder.time_override = self.next_t  # the exit happens in the quantum being run
                try:
                    self.stall(int(self.state[2]), self.on_ring_full(int(self.state[2])))
                finally:
                    self.recorder.time_override = None

    def _refill(self) -> None:
        """Draw the next block of each vCPU's variates (unused ones move to the front)."""
        for v, rng in enumerate(self.rngs):
            left = int(self.ulen[v] - self.upos[v])
            self.ubuf[v, :left] = self.ubuf[v, self.upos[v] : self.ulen[v]]
            rng.random(out=self.ubuf[v, left:])
            self.upos[v], self.ulen[v] = 0, self.ubuf.shape[1]

    def stall(self, vcpu: int, ns: int) -> None:
        """KVM_EXIT_DIRTY_RING_FULL: the vCPU is out of the guest for ``ns`` (exit + reaping)."""
        self.stats["ring_full_exits"][vcpu] += 1
        self.stats["ring_full_ns"][vcpu] += ns
        self.debt[vcpu] += ns

    def stall_inhibit(self, ns: int) -> None:
        """``accel_ioctl_inhibit_begin``: every vCPU held out of KVM_RUN while KVM applies an atomic memslot update."""
        self.stats["inhibit_ns"] += ns
        self.debt += ns

    def take_stats(self) -> list[dict]:
        """Per-vCPU counters since the previous call (one VcpuStats event each per sync)."""
        rows = [{name: int(self.stats[name][v]) for name in STAT_FIELDS} for v in range(self.nvcpus)]
        for arr in self.stats.values():
            arr[:] = 0
        return rows


_NO_RING = (np.zeros((1, 1), dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 0)
