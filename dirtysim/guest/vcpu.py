"""vCPUs: run slices in which all vCPUs' writes are applied in one numba call.

A write to a write-protected page costs the vCPU ``costs.write_fault`` of run
time; that time is owed and taken from the following quanta, so a vCPU that
faults a lot writes less (the fault cost is what ``dirty_log_perf_test``
measures as "dirty memory time").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from ..dirty import kernels
from ..scenario.schema import PAGE_SIZE
from .actor import QuantumActor
from .workload import Workload

NS_PER_S = 10**9


@dataclass(eq=False)
class Vcpu:
    index: int
    workload: Workload
    rng: np.random.Generator
    rate: int  # bytes/s of page writes while running
    carry: int = 0  # remainder of rate * run time, in byte-nanoseconds
    debt_ns: int = 0  # fault time not yet served
    writes: int = 0  # since the last stats read
    faults: int = 0
    fault_ns: int = 0
    ring_full_exits: int = 0
    ring_full_ns: int = 0
    inhibit_ns: int = 0

    def take_stats(self) -> dict:
        """Counters since the previous call (one VcpuStats event per sync)."""
        stats = {"writes": self.writes, "faults": self.faults, "fault_ns": self.fault_ns,
                 "ring_full_exits": self.ring_full_exits, "ring_full_ns": self.ring_full_ns,
                 "inhibit_ns": self.inhibit_ns}
        self.writes = self.faults = self.fault_ns = self.ring_full_exits = self.ring_full_ns = self.inhibit_ns = 0
        return stats

    def stall_inhibit(self, ns: int) -> None:
        """``accel_ioctl_inhibit_begin``: held out of KVM_RUN while KVM applies an atomic memslot update."""
        self.inhibit_ns += ns
        self.debt_ns += ns

    def stall(self, ns: int) -> None:
        """KVM_EXIT_DIRTY_RING_FULL: the vCPU is out of the guest for ``ns`` (exit + reaping)."""
        self.ring_full_exits += 1
        self.ring_full_ns += ns
        self.debt_ns += ns

    def writes_in(self, quantum_ns: int) -> int:
        """Writes this vCPU makes in the next quantum, after serving fault time it owes."""
        run_ns = max(0, quantum_ns - self.debt_ns)
        self.debt_ns -= quantum_ns - run_ns
        n, self.carry = divmod(self.carry + self.rate * run_ns, PAGE_SIZE * NS_PER_S)
        return n


class Guest(QuantumActor):
    """The running guest: one SimPy process stepping all vCPUs a quantum at a time."""

    def __init__(self, env: simpy.Environment, vcpus: list[Vcpu], accel, quantum_ns: int, fault_ns: int):
        """``accel`` applies writes (``KvmDirtyLog`` or ``TcgDirtyMemory``)."""
        super().__init__(env, quantum_ns)
        self.vcpus, self.accel, self.fault_ns = vcpus, accel, fault_ns
        self.unassigned_writes = 0
        ws = [v.workload for v in vcpus]
        self._params = (
            np.array([w.first_page for w in ws], dtype=np.int64), np.array([w.pages for w in ws], dtype=np.int64),
            np.array([w.hot_first for w in ws], dtype=np.int64), np.array([w.hot_pages for w in ws], dtype=np.int64),
            np.array([w.hot_share for w in ws], dtype=np.float64),
        )
        self._faults = np.zeros(len(vcpus), dtype=np.int64)
        self._seg_end = np.zeros(len(vcpus), dtype=np.int64)
        self._u = np.zeros(0)
        self._pages = np.zeros(0, dtype=np.int64)

    def step(self, quantum_ns: int) -> None:
        """Apply the writes every vCPU makes in the next ``quantum_ns``."""
        counts = [v.writes_in(quantum_ns) for v in self.vcpus]
        total = sum(counts)
        if self._u.shape[0] < total:
            self._u = np.zeros(2 * total)
            self._pages = np.zeros(2 * total, dtype=np.int64)
        start = 0
        for k, (v, n) in enumerate(zip(self.vcpus, counts)):
            if n:
                v.rng.random(out=self._u[start : start + n])
            start += n
            self._seg_end[k] = start
        pages = self._pages[:total]
        kernels.map_writes(self._u, self._seg_end, *self._params, pages)
        self._faults[:] = 0
        self.unassigned_writes += self.accel.apply_writes(pages, self._seg_end, self._faults)
        for v, n, f in zip(self.vcpus, counts, self._faults.tolist()):
            v.writes += n
            v.faults += f
            v.fault_ns += f * self.fault_ns
            v.debt_ns += f * self.fault_ns
