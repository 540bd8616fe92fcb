"""``ram_save_iterate``'s send slices and the running guest in one numba call (``kernels.iterate_slices``).

The migration thread's common case, one RAMBlock and a KVM bitmap or TCG guest
with no vhost backend, is a tight loop: send up to a slice of pages, wait for
the wire while the vCPUs run, repeat until the window's budget, 50 ms or the
dirty pages run out. Python takes only the decisions around it (a lazy clear, a
wait that another SimPy process would interrupt) and turns the kernel's slice
records into the same events, at the same times, as ``send_slice`` would emit.
"""

from __future__ import annotations

import numpy as np

from ..dirty import kernels as K
from ..events import schema as ev
from .invariant import dirty_count_mismatch

RECORDS = 4096  # slices per kernel call at most


class FusedSlices:
    def __init__(self, migration):
        self.mig = migration
        self.io = np.zeros(7, dtype=np.int64)
        self.rec = np.zeros((RECORDS, K.REC_COLS), dtype=np.int64)
        self.sout = np.zeros(6, dtype=np.int64)

    def eligible(self) -> bool:
        """Only what the kernel models: one block, no ring, no backend, no cost waiting to be charged, no rate
        schedule (its phase boundaries are applied from Python), no trace being replayed, no XBZRLE (its cache
        decides each page's size, page by page).

        The guest runs between slices (it was started with the machine and is not stopped yet); without
        a dirty ring no vCPU is left half-way through a quantum.
        """
        m, rs = self.mig.m, self.mig.rs
        g = m.guest
        return (len(m.ram_list.blocks) == 1 and rs.block_index == 0 and not m.backends and not g.writer.ring
                and g.running and m.meter.idle() and not g.phased and not m.traces and self.mig.xbzrle is None)

    def run(self, t0_ms: int):
        """Slices until QEMU's loop ends (returns True) or Python must take the next step (returns False)."""
        mig = self.mig
        m, rs, env, rec, io = mig.m, mig.rs, mig.env, mig.rec, self.io
        block, rl, guest = m.ram_list.blocks[0], m.ram_list, m.guest
        first_extra = 0 if block is rs.last_sent_block else 1 + len(block.idstr)
        io[:K.IO_NREC] = (env.now, rs.page, rs.migration_dirty_pages, mig.transferred, first_extra, guest.next_t)
        horizon = min(env.peek(), float(1 << 62))
        w = block.words
        sc = mig.send
        status = K.iterate_slices(io, self.rec, int(horizon), t0_ms, mig.link_bytes_per_s, mig.slice_cap(),
                                  mig.counters.rate_limit_start, mig.counters.rate_limit_max, block.bmap,
                                  block.clear_bmap, rl.nonzero[w], rl.stale[w], rl.received[w], block.pages,
                                  mig.shift, mig.zero_detect, self.sout, sc.normal_bytes, sc.zero_bytes, sc.cv,
                                  sc.state, mig.sc.engine.send_quantum, *guest.write_args())
        now = int(io[K.IO_NOW])
        if now > env.now:  # first the clock (the guest is up to date: a plain SimPy wait), then the past's events
            yield env.timeout(now - env.now)
        nrec = int(io[K.IO_NREC])
        for row in self.rec[:nrec].tolist():
            self._emit_slice(block.idstr, row)
        rs.page, rs.migration_dirty_pages = int(io[K.IO_PAGE]), int(io[K.IO_DIRTY])
        if io[K.IO_EXTRA] == 0:
            rs.last_sent_block = block
        guest.next_t = int(io[K.IO_GUEST_NEXT])
        if status == K.IT_DONE:
            return True
        if status == K.IT_MORE:
            return False
        if status == K.IT_STUCK:
            raise dirty_count_mismatch(rs.migration_dirty_pages)
        start, _, n, z, nbytes, resent, unchanged, wraps, packets, cpu_ns, channel_ns = self.rec[nrec].tolist()
        for _ in range(wraps):
            rec.emit(ev.ScanWrap)
        if n + z or packets:
            mig._account_block(block, n, z, nbytes, resent, unchanged, packets, 0, 0, cpu_ns, channel_ns)
        if status == K.IT_PARTIAL:  # a lazy clear is due: send_slice meets the chunk, clears it, sends its page
            yield from mig.send_slice(mig.counters.budget_left(mig.transferred), (nbytes, n, z, packets))
        else:  # IT_PENDING: pages sent (the wait is not empty); it meets another process, or the vCPUs need
            yield from mig._wait(mig.slice_ns(nbytes, n, z, packets))  # more variates; nothing charged
            mig._record_pages()
        return mig.now_ms() - t0_ms > K.MAX_WAIT_MS

    def _emit_slice(self, idstr: str, row: list) -> None:
        """A completed slice's events at their own times: scan wraps at its start, the transfer at its end."""
        mig, rec = self.mig, self.mig.rec
        start, end, n, z, nbytes, resent, unchanged, wraps, packets, cpu_ns, channel_ns = row
        try:
            rec.time_override = start
            for _ in range(wraps):
                rec.emit(ev.ScanWrap)
            if n + z or packets:
                rec.time_override = end
                mig.emit_pages(idstr, n, z, nbytes, resent, unchanged, packets, 0, 0, cpu_ns, channel_ns)
        finally:
            rec.time_override = None
