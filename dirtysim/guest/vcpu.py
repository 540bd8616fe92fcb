"""The guest's vCPUs: state in arrays, advanced lazily by one numba call for many quanta.

Each vCPU runs in quanta of ``engine.quantum``: it first serves the run time it
owes (a write to a write-protected page costs ``costs.write_fault``, a
KVM_EXIT_DIRTY_RING_FULL the exit and the reaping, an atomic memslot update the
time it holds vCPUs out, an MMIO exit its cost and any wait for the BQL), then
writes pages at its rate. A vCPU that faults a
lot writes less: the fault cost is what ``dirty_log_perf_test`` measures as
"dirty memory time".

The guest is a lazy actor (``guest.lazy``): nothing happens per quantum in
Python or SimPy. Whoever acts next (the migration thread, the reaper, a timeline
action) first brings the guest up to its own simulated time, and
``run_vcpus`` applies all the quanta in between. Each vCPU draws its variates
from its own ``numpy.random.Generator`` in blocks; a block draw yields exactly
the sequence of one-by-one draws, so results do not depend on the batching.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

import numpy as np

from ..bql import Bql
from ..dirty import kernels as K
from ..scenario.schema import PAGE_SIZE
from .lazy import LazyActor
from .workload import Workload

NS_PER_S = 10**9
MIN_BLOCK = 8192  # variates drawn per vCPU at a time, at least
STAT_ROWS = {"writes": K.VI_WRITES, "faults": K.VI_FAULTS, "fault_ns": K.VI_FAULT_NS,
             "ring_full_exits": K.VI_RING_FULL_EXITS, "ring_full_ns": K.VI_RING_FULL_NS, "inhibit_ns": K.VI_INHIBIT_NS,
             "throttle_ns": K.VI_THROTTLE_NS, "dirtylimit_ns": K.VI_DIRTYLIMIT_NS, "pml_logged": K.VI_PML_LOGGED,
             "pml_full_exits": K.VI_PML_EXITS, "pml_full_ns": K.VI_PML_NS, "mmio_exits": K.VI_MMIO_EXITS,
             "mmio_ns": K.VI_MMIO_NS, "bql_wait_ns": K.VI_BQL_NS}
OWED = ("fault_ns", "ring_full_ns", "inhibit_ns", "throttle_ns", "dirtylimit_ns", "pml_full_ns", "mmio_ns",
        "bql_wait_ns")  # added to VI_DEBT


class Guest(LazyActor):
    """All vCPUs of the VM, their workloads, RNG streams and per-sync counters (one int64 table, ``vi``)."""

    def __init__(self, workloads: list[Workload], rngs: list[np.random.Generator], rates: list[int], writer,
                 guest_map, quantum_ns: int, fault_ns: int, recorder, pml_exit_ns: int | None = None,
                 bql: Bql | None = None, mmio: tuple[list[int], int] = ((), 0)):
        """``writer`` tracks writes (``KvmDirtyLog`` or ``TcgDirtyMemory``: memslots and the target bitmap);
        ``guest_map`` (``oracle.GuestMap``) tells the page oracle which RAM page a write changes; ``mmio`` is
        (MMIO exits per second of each vCPU, ns per exit), each exit taking the ``bql``."""
        if writer.ring and writer.rings.shape[0] != len(workloads):  # the kernels do not bounds-check
            raise ValueError(f"{len(workloads)} vCPUs but {writer.rings.shape[0]} dirty rings")
        self.quantum_ns, self.fault_ns, self.writer, self.recorder = quantum_ns, fault_ns, writer, recorder
        # KVM with PML (``enable_pml``): first writes after protection log into the PML buffer, no fault
        self.pml, self.pml_exit_ns = pml_exit_ns is not None, pml_exit_ns or 0
        self.guest_map = guest_map
        self.rngs = rngs
        self.vi = vi = np.zeros((K.VI_ROWS, len(workloads)), dtype=np.int64)
        vi[K.VI_RATE] = rates
        self.schedules = {v: _Schedule(w.phases) for v, w in enumerate(workloads) if w.phases}
        peak = np.array([max([r, *(p[1] for p in w.phases)]) for r, w in zip(rates, workloads)], dtype=np.int64)
        page_ns = PAGE_SIZE * NS_PER_S
        if int(peak.max()) * quantum_ns >= (1 << 62) - page_ns:
            raise ValueError("a vCPU's writes in one quantum overflow 64-bit arithmetic: lower rate or quantum")
        vi[K.VI_MAXN] = (page_ns - 1 + peak * quantum_ns) // page_ns  # most writes one quantum can make
        for row, attr in ((K.VI_FIRST, "first_page"), (K.VI_PAGES, "pages"), (K.VI_HOT_FIRST, "hot_first"),
                          (K.VI_HOT_PAGES, "hot_pages"), (K.VI_KIND, "kind"), (K.VI_LOG_FIRST, "log_first"),
                          (K.VI_LOG_PAGES, "log_pages"), (K.VI_START, "start_ns"), (K.VI_STOP, "stop_ns")):
            vi[row] = [getattr(w, attr) for w in workloads]
        rates_mmio, cost_mmio = mmio
        if len(rates_mmio):
            vi[K.VI_MMIO_RATE], vi[K.VI_MMIO_COST] = rates_mmio, cost_mmio
        self.bql = bql if bql is not None else Bql()
        self.runs = np.zeros(1, dtype=np.int64)  # vCPUs' 2 MiB runs (``set_data_runs``)
        self.vf = vf = np.zeros((K.VF_ROWS, len(workloads)))
        for row, attr in ((K.VF_HOT_SHARE, "hot_share"), (K.VF_SAME_SHARE, "identical_rewrites"),
                          (K.VF_ZIPF_S, "zipf_s"), (K.VF_LOG_SHARE, "log_share")):
            vf[row] = [float(getattr(w, attr)) for w in workloads]
        self.debt = vi[K.VI_DEBT]
        self.stats = {name: vi[row] for name, row in STAT_ROWS.items()}
        self.ubuf = np.zeros((len(workloads), max(MIN_BLOCK, 16 * int(vi[K.VI_MAXN].max()))))
        self.buf = np.zeros(max(1, int(vi[K.VI_MAXN].sum())), dtype=np.int64)
        self.state = K.run_state()
        self.on_ring_full: Optional[Callable[[int], int]] = None  # reaps; returns the stall in ns
        self._taken = {name: np.zeros(len(workloads), dtype=np.int64) for name in STAT_ROWS}  # per vCPU, since boot
        sleeps = ("throttle_ns", "dirtylimit_ns")  # per vCPU: (charged before it, ns) not yet served; served so far
        self._sleeps = {stat: [deque() for _ in workloads] for stat in sleeps}
        self._slept = {stat: np.zeros(len(workloads), dtype=np.int64) for stat in sleeps}

    @property
    def nvcpus(self) -> int:
        return self.vi.shape[1]

    @property
    def unassigned_writes(self) -> int:
        """Writes to guest-physical pages that no memslot maps (counted, not performed)."""
        return int(self.state[K.ST_UNASSIGNED])

    def write_args(self) -> tuple:
        """``kernels.run_vcpus``' arguments after ``nq`` up to ``stale``: the guest's arrays, where writes go."""
        w = self.writer
        return (self.quantum_ns, self.fault_ns, self.pml, self.pml_exit_ns, self.vi, self.vf, self.runs, self.ubuf,
                self.buf, self.state, self.bql.span,
                self.guest_map.table, *w.write_args(), *w.ram_list.oracle_args())

    def kernel_args(self) -> tuple:
        """All of ``kernels.run_vcpus``' arguments after ``nq`` (``write_args`` and the dirty rings)."""
        w = self.writer
        rings = (w.rings, w.dirty_index, w.reset_index, w.soft_limit) if w.ring else _NO_RING
        return (*self.write_args(), w.ring, *rings)

    def set_data_runs(self, runs_per_vcpu: dict[int, np.ndarray]) -> None:
        """Working sets laid over 2 MiB runs (first guest page of each): a data-only vCPU's runs of data, or
        on a pc/q35 board the runs of its working set where the board's RAM aliases put them."""
        self.runs = np.concatenate([np.zeros(1, dtype=np.int64), *runs_per_vcpu.values()])
        off = 1
        for v, runs in runs_per_vcpu.items():
            if not len(runs):
                raise RuntimeError(f"vCPU {v}: data_only, but its working set holds no data at boot")
            self.vi[K.VI_RUNS_OFF, v], self.vi[K.VI_RUNS_N, v] = off, len(runs)
            pages = len(runs) * K.DATA_RUN_PAGES
            self.vi[K.VI_PAGES, v] = pages
            first = self.vi[K.VI_FIRST, v]  # regions inside the set are clipped to the data it holds
            for start, size in ((K.VI_HOT_FIRST, K.VI_HOT_PAGES), (K.VI_LOG_FIRST, K.VI_LOG_PAGES)):
                self.vi[size, v] = max(0, min(self.vi[size, v], first + pages - self.vi[start, v]))
            if self.vi[K.VI_HOT_PAGES, v] == 0:
                self.vf[K.VF_HOT_SHARE, v] = 0.0
            if self.vi[K.VI_LOG_PAGES, v] == 0:
                self.vi[K.VI_LOG_PAGES, v], self.vf[K.VF_LOG_SHARE, v] = 1, 0.0
            off += len(runs)

    @property
    def phased(self) -> bool:
        """Some vCPU follows a rate schedule (its rate changes at phase boundaries, set from Python)."""
        return bool(self.schedules)

    def run_quanta(self, n: int) -> None:
        """Apply ``n`` quanta; with rate schedules, in runs that stay inside every vCPU's current phase.

        A quantum writes at the rate of the phase its start falls in.
        """
        while n:
            k = n
            for v, schedule in self.schedules.items():
                self.vi[K.VI_RATE, v], left_ns = schedule.at(self.next_t)
                k = min(k, -(-left_ns // self.quantum_ns))
            self._run(k)
            n -= k

    def _run(self, n: int) -> None:
        """``kernels.run_vcpus`` until ``n`` quanta are done, serving its refills and ring-full exits in between.

        The loop is bounded: a call that returns RUN_DONE must have done every quantum asked for.
        """
        args = self.kernel_args()
        while True:
            self.state[K.ST_NOW] = self.next_t
            status = K.run_vcpus(n, *args)
            done = int(self.state[K.ST_DONE])
            self.next_t += done * self.quantum_ns
            n -= done
            if status == K.RUN_REFILL:
                self.refill()
            elif status == K.RUN_RING_FULL:
                vcpu = int(self.state[K.ST_VCPU])
                self.recorder.time_override = self.next_t  # the exit happens in the quantum being run
                try:
                    self.stall(vcpu, self.on_ring_full(vcpu))
                finally:
                    self.recorder.time_override = None
            elif n:
                raise RuntimeError(f"run_vcpus returned {status} with {n} of its quanta not done")
            else:
                return

    def refill(self) -> None:
        """Draw the next block of each vCPU's variates (unused ones move to the front)."""
        upos, ulen = self.vi[K.VI_UPOS], self.vi[K.VI_ULEN]
        for v, rng in enumerate(self.rngs):
            left = int(ulen[v] - upos[v])
            self.ubuf[v, :left] = self.ubuf[v, upos[v] : ulen[v]]
            rng.random(out=self.ubuf[v, left:])
            upos[v], ulen[v] = 0, self.ubuf.shape[1]

    def stall(self, vcpu: int, ns: int) -> None:
        """KVM_EXIT_DIRTY_RING_FULL: the vCPU is out of the guest for ``ns`` (exit + reaping)."""
        self.stats["ring_full_exits"][vcpu] += 1
        self.stats["ring_full_ns"][vcpu] += ns
        self.debt[vcpu] += ns

    def bql_wait(self, vcpu: int, ns: int) -> None:
        """The vCPU waits ``ns`` for the BQL outside the guest (before reaping its full dirty ring)."""
        self.stats["bql_wait_ns"][vcpu] += ns
        self.debt[vcpu] += ns

    def sleep(self, vcpus, ns: int, stat: str) -> None:
        """The ``vcpus`` (a mask or an index) leave the guest for ``ns`` after what they owe (``stat`` counts it).

        Owed time is served in the order it was charged, so the sleep is served
        once everything charged before it is: ``slept_ns`` reports it as served.
        """
        charged = self.charged_ns()
        for v in [vcpus] if np.ndim(vcpus) == 0 else np.flatnonzero(vcpus):
            self._sleeps[stat][v].append((int(charged[v]), ns))
        self.stats[stat][vcpus] += ns
        self.debt[vcpus] += ns

    def slept_ns(self, stat: str) -> np.ndarray:
        """Per vCPU, how much of its ``stat`` sleeps (``throttle_ns``, ``dirtylimit_ns``) it has served so far."""
        done, out = self._slept[stat], self._slept[stat].copy()
        waiting = [(v, pending) for v, pending in enumerate(self._sleeps[stat]) if pending]
        if waiting:  # most runs never sleep: no work then
            served = self.charged_ns() - self.debt
            for v, pending in waiting:
                while pending and sum(pending[0]) <= served[v]:
                    done[v] += pending.popleft()[1]
                out[v] = done[v] + sum(min(max(int(served[v]) - start, 0), ns) for start, ns in pending)
        return out

    def stall_inhibit(self, ns: int) -> None:
        """``accel_ioctl_inhibit_begin``: every vCPU held out of KVM_RUN while KVM applies an atomic memslot update."""
        self.stats["inhibit_ns"] += ns
        self.debt += ns

    def first_writes(self, vcpu: int, n: int) -> None:
        """A trace's first writes after protection (not charged, as its faults never were): faults, or with PML
        logged pages and a PML-full exit per 512 (``run_vcpus``' rule)."""
        if not self.pml:
            self.stats["faults"][vcpu] += n
            return
        fill = int(self.vi[K.VI_PML_FILL, vcpu]) + n
        self.vi[K.VI_PML_FILL, vcpu] = fill % K.PML_ENTRIES
        self.stats["pml_logged"][vcpu] += n
        self.stats["pml_full_exits"][vcpu] += fill // K.PML_ENTRIES

    def take_stats(self) -> list[dict]:
        """Per-vCPU counters since the previous call (one VcpuStats event each per sync)."""
        rows = [{name: int(self.stats[name][v]) for name in STAT_ROWS} for v in range(self.nvcpus)]
        for name, arr in self.stats.items():
            self._taken[name] += arr
            arr[:] = 0
        return rows

    def totals(self, name: str) -> np.ndarray:
        """A counter of ``STAT_ROWS`` per vCPU since boot (``take_stats`` does not reset it)."""
        return self._taken[name] + self.stats[name]

    def total(self, name: str) -> int:
        """A counter of ``STAT_ROWS`` summed over the vCPUs since boot."""
        return int(self.totals(name).sum())

    def charged_ns(self) -> np.ndarray:
        """Per vCPU, all the time outside the guest it was charged since boot (served or still owed)."""
        return sum(self.totals(name) for name in OWED)

    def out_of_guest_ns(self) -> np.ndarray:
        """Per vCPU, the time it has spent outside the guest since boot: all it was charged, less what it still owes."""
        return self.charged_ns() - self.debt


class _Schedule:
    """A vCPU's rate schedule: (duration, rate) phases from time 0, repeated."""

    def __init__(self, phases: tuple[tuple[int, int], ...]):
        self.ends = np.cumsum([d for d, _ in phases])
        self.rates = [r for _, r in phases]

    def at(self, t: int) -> tuple[int, int]:
        """The rate at time ``t`` and the ns until its phase ends."""
        cycle = int(self.ends[-1])
        i = int(np.searchsorted(self.ends, t % cycle, side="right"))
        return self.rates[i], int(self.ends[i]) - t % cycle


_NO_RING = (np.zeros((1, 1), dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 0)
