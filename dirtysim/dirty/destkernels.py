"""numba kernels of postcopy's destination: the guest writing through userfaults, placements, discard ranges.

After ``postcopy_start`` the guest runs on the destination, where a page the
destination does not hold (``receivedmap`` clear) is registered
``UFFDIO_REGISTER_MODE_MISSING``: touching it blocks the vCPU until the page is
placed (``postcopy_ram_fault_thread``, ``postcopy_place_page``). The kernels work
per write, not per quantum, because a vCPU stops at the write that faults.
Their slow twins are in ``reference.py`` (``run_vcpus_dest``) and ``tests/test_rules_postcopy.py``.
"""

from __future__ import annotations

import numpy as np

from .kernels import (DATA_RUN_PAGES, KIND_HOTSET, NS_PER_S, VF_HOT_SHARE, VI_FIRST, VI_HOT_FIRST, VI_HOT_PAGES,
                      VI_KIND, VI_PAGES, VI_RATE, VI_RUNS_N, VI_RUNS_OFF, VI_START, VI_STOP, VI_ULEN, VI_UPOS, inline,
                      jit, map_write, other_page, popcount64, ram_page)

# Rows of the destination's per-vCPU table ``dv``: next write (ns), rate remainder, blocked on a fault,
# the guest page of the write that faulted (-1: none), writes done on the destination
DV_NEXT, DV_CARRY, DV_BLOCKED, DV_PEND, DV_WRITES = range(5)
DV_ROWS = 5
# run_vcpus_dest's ``io``: faults recorded in ``faults`` (rows vcpu, RAM page, ns), writes that hit no RAM
IO_NFAULTS, IO_UNASSIGNED = 0, 1
DEST_DONE, DEST_REFILL = 0, 1
NEVER = np.int64(1 << 62)


@inline
def _bit(bitmap, r):
    return (bitmap[r >> 6] >> np.uint64(r & 63)) & np.uint64(1)


@jit
def run_vcpus_dest(h, vi, vf, runs, ubuf, gmap, present, written, dv, faults, io):
    """Run every unblocked destination vCPU's writes that start before ``h`` ns.

    A vCPU writes a page every 4 KiB / ``rate`` of its running time (remainder
    carried in ``DV_CARRY``), only inside [``VI_START``, ``VI_STOP``), drawing one
    variate per write from its stream exactly as ``kernels.run_vcpus`` does (so
    the stream never depends on blocking: a faulted write keeps its page in
    ``DV_PEND`` and retries it). A write to a RAM page missing from ``present``
    (QEMU's ``receivedmap``) records (vcpu, page, time) in ``faults`` and blocks
    the vCPU; a write to a present page sets ``written``. The caller guarantees
    that ``present`` does not change before ``h`` (the lookahead of
    ``migration/postcopy.py``), so the vCPUs are independent and one call
    collects every fault in the interval. Returns DEST_REFILL when a vCPU needs
    variates (``Guest.refill``, then call again), else DEST_DONE.
    """
    m0, m1, m2 = gmap[0], gmap[1], gmap[2]
    upos, ulen = vi[VI_UPOS], vi[VI_ULEN]
    page_ns = 4096 * NS_PER_S
    for v in range(vi.shape[1]):
        while dv[DV_BLOCKED, v] == 0 and dv[DV_NEXT, v] < h:
            t = dv[DV_NEXT, v]
            if t < vi[VI_START, v]:
                dv[DV_NEXT, v] = vi[VI_START, v]
                continue
            if t >= vi[VI_STOP, v] or vi[VI_RATE, v] == 0:
                dv[DV_NEXT, v] = NEVER
                break
            g = dv[DV_PEND, v]
            if g < 0:
                if upos[v] >= ulen[v]:
                    return DEST_REFILL
                u = ubuf[v, upos[v]]
                upos[v] += 1
                if vi[VI_KIND, v] == KIND_HOTSET:
                    g = map_write(u, vi[VI_FIRST, v], vi[VI_PAGES, v], vi[VI_HOT_FIRST, v], vi[VI_HOT_PAGES, v],
                                  vf[VF_HOT_SHARE, v])
                else:
                    g = other_page(u, v, vi, vf)
                if vi[VI_RUNS_N, v]:
                    k = g - vi[VI_FIRST, v]
                    g = runs[vi[VI_RUNS_OFF, v] + k // DATA_RUN_PAGES] + k % DATA_RUN_PAGES
            r = ram_page(g, m0, m1, m2)
            if r >= 0 and _bit(present, r) == 0:
                n = io[IO_NFAULTS]
                faults[0, n], faults[1, n], faults[2, n] = v, r, t
                io[IO_NFAULTS] = n + 1
                dv[DV_PEND, v] = g
                dv[DV_BLOCKED, v] = 1
                break
            if r >= 0:
                written[r >> 6] |= np.uint64(1) << np.uint64(r & 63)
            else:
                io[IO_UNASSIGNED] += 1
            dv[DV_PEND, v] = -1
            dv[DV_WRITES, v] += 1
            x = dv[DV_CARRY, v] + page_ns
            step = x // vi[VI_RATE, v]
            dv[DV_CARRY, v] = x - step * vi[VI_RATE, v]
            dv[DV_NEXT, v] = t + step
    return DEST_DONE


@jit
def place(present, written, w0, mask, out):
    """Place the pages of ``mask`` (words from ``w0``) on the destination: ``postcopy_place_page`` per page.

    out[:] = pages placed, pages that were present already (QEMU's UFFDIO_COPY
    fails with -EEXIST and the destination keeps its copy: never with correct
    semantics), and of those the pages the destination's guest had written
    (on a copy it should not have had). ``present`` gains the mask.
    """
    placed = 0
    double = 0
    clobbered = 0
    for i in range(mask.shape[0]):
        x = mask[i]
        if x:
            w = w0 + i
            placed += np.int64(popcount64(x))
            double += np.int64(popcount64(x & present[w]))
            clobbered += np.int64(popcount64(x & present[w] & written[w]))
            present[w] |= x
    out[0] = placed
    out[1] = double
    out[2] = clobbered


@jit
def count_runs(bmap, w0, w1):
    """Runs of consecutive set bits in words [w0, w1): the ranges ``postcopy_send_discard_bm_ram`` sends."""
    n = 0
    carry = np.uint64(0)  # the previous word's top bit, moved to bit 0
    for w in range(w0, w1):
        x = bmap[w]
        n += np.int64(popcount64(x & ~((x << np.uint64(1)) | carry)))
        carry = x >> np.uint64(63)
    return n
