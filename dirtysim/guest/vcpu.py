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

from ..accel.kvm import KvmDirtyLog
from ..scenario.schema import PAGE_SIZE

NS_PER_S = 10**9


@dataclass(eq=False)
class Vcpu:
    index: int
    workload: object
    rng: np.random.Generator
    rate: int  # bytes/s of page writes while running
    carry: int = 0  # remainder of rate * run time, in byte-nanoseconds
    debt_ns: int = 0  # fault time not yet served
    writes: int = 0  # since the last stats read
    faults: int = 0
    fault_ns: int = 0

    def take_stats(self) -> tuple[int, int, int]:
        stats = (self.writes, self.faults, self.fault_ns)
        self.writes = self.faults = self.fault_ns = 0
        return stats


class Guest:
    """The running guest: one SimPy process stepping all vCPUs a quantum at a time."""

    def __init__(self, env: simpy.Environment, vcpus: list[Vcpu], kvm: KvmDirtyLog, quantum_ns: int, fault_ns: int):
        self.env, self.vcpus, self.kvm = env, vcpus, kvm
        self.quantum_ns, self.fault_ns = quantum_ns, fault_ns
        self.running = True
        self.unassigned_writes = 0
        self._faults = np.zeros(len(vcpus), dtype=np.int64)

    def stop(self) -> None:
        """``vm_stop``: vCPUs leave KVM_RUN; no write happens after this."""
        self.running = False

    def run(self):
        while self.running:
            self.step(self.quantum_ns)
            yield self.env.timeout(self.quantum_ns)

    def step(self, quantum_ns: int) -> None:
        """Apply the writes every vCPU makes in the next ``quantum_ns``."""
        batches = []
        for v in self.vcpus:
            run_ns = max(0, quantum_ns - v.debt_ns)
            v.debt_ns -= quantum_ns - run_ns
            budget = v.carry + v.rate * run_ns
            n, v.carry = divmod(budget, PAGE_SIZE * NS_PER_S)
            batches.append(v.workload.draw(v.rng, n))
        pages = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        seg_end = np.cumsum([b.shape[0] for b in batches]).astype(np.int64)
        self._faults[:] = 0
        self.unassigned_writes += self.kvm.apply_writes(pages, seg_end, self._faults)
        for v, b, f in zip(self.vcpus, batches, self._faults.tolist()):
            v.writes += b.shape[0]
            v.faults += f
            v.fault_ns += f * self.fault_ns
            v.debt_ns += f * self.fault_ns
