"""Replay a recorded page-write trace as one vCPU's writes (workload kind ``trace``).

File format (text, UTF-8; ``#`` starts a comment; blank lines are skipped), one write per line::

    time_ns,gpa[,length]

``time_ns``: when the write happens, in simulated ns from the start of the run
(non-decreasing); ``gpa``: guest-physical byte address, decimal or ``0x`` hex;
``length``: bytes written from there (default 4096), every page it touches is
written. Writes go through the memslots exactly as a vCPU's do (KVM dirty
logging, the dirty ring, TCG's dirty memory) and the oracle sees them through
its own map; they are applied at the start of the quantum they fall in. The
trace vCPU's write-protect faults and ring-full exits are counted in its
statistics; it has no run time to lose, so their cost is not charged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dirty import kernels as K
from .lazy import LazyActor

PAGE = 4096
MAX_TRACE_WRITES = 50_000_000  # pages: the trace lives in memory as two int64 arrays (800 MB at the limit)


class TraceError(ValueError):
    """A trace file that cannot be replayed: ``str()`` is ``FILE:LINE: message``."""


def load_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(times in ns, guest pages), one entry per page written, in time order."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    times, pages, last = [], [], 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) not in (2, 3):
                raise ValueError(f"expected time_ns,gpa[,length], got {len(fields)} fields")
            t, gpa = int(fields[0]), int(fields[1], 0)
            length = int(fields[2], 0) if len(fields) == 3 else PAGE
            if t < 0 or gpa < 0 or length < 1:
                raise ValueError("time, address and length must be non-negative (length at least 1)")
            if t < last:
                raise ValueError(f"time goes back (previous line at {last} ns)")
        except ValueError as exc:
            raise TraceError(f"{path}:{n}: {exc} (got {raw.strip()!r})") from None
        first, end = gpa // PAGE, -(-(gpa + length) // PAGE)
        times.extend([t] * (end - first))
        pages.extend(range(first, end))
        last = t
        if len(pages) > MAX_TRACE_WRITES:
            raise TraceError(f"{path}:{n}: more than {MAX_TRACE_WRITES} page writes (dirtysim's limit)")
    if not pages:
        raise TraceError(f"{path}: the trace has no writes")
    return np.array(times, dtype=np.int64), np.array(pages, dtype=np.int64)


class TraceReplayer(LazyActor):
    """The trace's writes, a quantum at a time, on behalf of vCPU ``vcpu`` of ``guest``."""

    def __init__(self, times: np.ndarray, pages: np.ndarray, guest, vcpu: int):
        self.times, self.pages, self.guest, self.vcpu = times, pages, guest, vcpu
        self.quantum_ns = guest.quantum_ns
        self.seg_end = np.zeros(guest.nvcpus, dtype=np.int64)  # vCPUs before ``vcpu`` write nothing here
        self.faults = np.zeros(guest.nvcpus, dtype=np.int64)

    def run_quanta(self, n: int) -> None:
        t1 = self.next_t + n * self.quantum_ns
        i0, i1 = np.searchsorted(self.times, [self.next_t, t1], side="left")
        self.next_t = t1
        if i1 == i0:
            return
        g = self.guest
        self.seg_end[self.vcpu:] = i1 - i0
        self.faults[:] = 0
        w = g.writer
        if w.ring:
            unassigned = w.apply_writes(self.pages[i0:i1], self.seg_end, self.faults, g.guest_map.table)
        else:
            unassigned = K.apply_writes(self.pages[i0:i1], self.seg_end, g.guest_map.table, *w.write_args(),
                                        *w.ram_list.oracle_args(), self.faults)
        g.state[K.ST_UNASSIGNED] += unassigned
        g.stats["writes"][self.vcpu] += i1 - i0
        g.first_writes(self.vcpu, int(self.faults[self.vcpu]))
