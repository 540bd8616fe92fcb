"""Slow, obviously correct versions of every kernel in ``kernels.py``.

They work on unpacked boolean page arrays and Python loops, so that a reader
can check them against the QEMU/KVM description in one glance. Tests run both
on the same inputs; benchmarks compare their speed.
"""

from __future__ import annotations

import numpy as np

from . import sendcost
from .kernels import SEND_BUDGET, SEND_END_OF_BLOCK, SEND_NEED_CLEAR


def bits(words: np.ndarray) -> np.ndarray:
    """uint64 words -> bool array, one entry per page (little-endian bit order)."""
    return np.unpackbits(words.view(np.uint8), bitorder="little").astype(bool)


def words(bits_: np.ndarray) -> np.ndarray:
    """bool page array (length a multiple of 64) -> uint64 words."""
    return np.packbits(bits_.astype(np.uint8), bitorder="little").view(np.uint64).copy()


def sync_xchg(src, dst, w0, w1):
    s, d = bits(src), bits(dst)
    sl = slice(w0 * 64, w1 * 64)
    new = int(np.count_nonzero(s[sl] & ~d[sl]))
    d[sl] |= s[sl]
    s[sl] = False
    src[:], dst[:] = words(s), words(d)
    return new


def or_into(dst, src, w0, w1):
    d, s = bits(dst), bits(src)
    sl = slice(w0 * 64, w1 * 64)
    d[sl] |= s[sl]
    dst[:] = words(d)
    return count_nonzero_words(src, w0, w1)


def count_nonzero_words(bmap, w0, w1):
    """Words in [w0, w1) with at least one page set."""
    b = bits(bmap)  # unpacked once, not once per word
    return sum(1 for w in range(w0, w1) if b[w * 64:(w + 1) * 64].any())


def xchg_into(src, dst, w0, w1):
    s, d = bits(src), bits(dst)
    sl = slice(w0 * 64, w1 * 64)
    d[sl] = s[sl]
    s[sl] = False
    src[:], dst[:] = words(s), words(d)
    return int(np.count_nonzero(d[sl]))


def clear_by_mask(kvm, mask, w0, w1):
    k, m = bits(kvm), bits(mask)
    sl = slice(w0 * 64, w1 * 64)
    n = int(np.count_nonzero(k[sl] & m[sl]))
    k[sl] &= ~m[sl]
    m[sl] = False
    kvm[:], mask[:] = words(k), words(m)
    return n


class _Oracle:
    """The page oracle's bits as bool page arrays: nonzero, stale and (when open) the write window."""

    def __init__(self, nonzero, stale, win):
        self.arrays = (nonzero, stale, win)
        self.nz, self.st = bits(nonzero), bits(stale)
        self.win = [bits(row) for row in win] if win.shape[1] else None

    def write(self, x, gmap) -> bool:
        """Guest page ``x`` (``~page``: identical bytes) written; False when no RAM is there."""
        g, same = (~x, True) if x < 0 else (x, False)
        o = _slot_of(g, gmap[0], gmap[1])
        if o is None:
            return False
        r = g - gmap[0][o] + gmap[2][o]
        if not same:
            self.nz[r] = self.st[r] = True
        if self.win is not None:
            self.win[0][r] = True
            self.win[1][r] |= not same
        return True

    def store(self) -> None:
        nonzero, stale, win = self.arrays
        nonzero[:], stale[:] = words(self.nz), words(self.st)
        if self.win is not None:
            win[:] = np.stack([words(row) for row in self.win])


def _page(x):
    return ~x if x < 0 else x


def apply_writes(gpa_pages, seg_end, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, kvm_dirty, nonzero, stale,
                 win, faults):
    k, oracle = bits(kvm_dirty), _Oracle(nonzero, stale, win)
    unassigned = 0
    start = 0
    for v, stop in enumerate(seg_end):
        for x in gpa_pages[start:stop]:
            unassigned += not oracle.write(x, gmap)
            g = _page(x)
            s = _slot_of(g, slot_gpa, slot_pages)
            if s is None:
                continue
            r = g - slot_gpa[s] + slot_ram[s]
            if slot_logging[s] and not k[r]:
                k[r] = True
                faults[v] += 1
        start = stop
    kvm_dirty[:] = words(k)
    oracle.store()
    return unassigned


def find_next_bit(bmap, page, end):
    b = bits(bmap)
    hits = np.flatnonzero(b[page:end])
    return page + int(hits[0]) if hits.size else end


def send_pages(bmap, clear_bmap, nonzero, stale, received, page, end, budget, cap, shift, lazy_clear, zero_detect,
               first_extra, normal_bytes, zero_bytes, cv, t_cap, out):
    b, nz, st, rc = bits(bmap), bits(nonzero), bits(stale), bits(received)
    nbytes = normal = zero = resent = unchanged = 0
    extra = first_extra
    status = SEND_END_OF_BLOCK
    while True:
        while page < end and not b[page]:
            page += 1
        if page >= end:
            page = end
            break
        thread = sendcost.main_ns(cv, normal, zero)
        senders = sendcost.channel_ns(cv, normal, zero, 0) // cv[sendcost.CV_CHANNELS]
        if nbytes > budget or nbytes >= cap or thread >= t_cap or senders >= t_cap:
            status = SEND_BUDGET
            break
        if lazy_clear and clear_bmap[page >> shift]:
            status = SEND_NEED_CLEAR
            break
        b[page] = False
        is_zero = zero_detect and not nz[page]
        zero += is_zero
        normal += not is_zero
        nbytes += (zero_bytes if is_zero else normal_bytes) + extra
        extra = 0
        resent += bool(rc[page])
        unchanged += bool(rc[page] and not st[page])
        rc[page], st[page] = True, False
        page += 1
    bmap[:], stale[:], received[:] = words(b), words(st), words(rc)
    out[:6] = (page, normal, zero, nbytes, resent, unchanged)
    return status


def count_set(bmap, w0, w1):
    return int(np.count_nonzero(bits(bmap)[w0 * 64 : w1 * 64]))


def count_stale(stale, tracked, w0, w1):
    st = bits(stale)[w0 * 64 : w1 * 64]
    seen = np.zeros(st.shape[0], dtype=bool)
    for row in tracked:
        seen |= bits(row)[w0 * 64 : w1 * 64]
    return int(np.count_nonzero(st)), int(np.count_nonzero(st & ~seen))


def map_writes(u, seg_end, first, pages, hot_first, hot_pages, hot_share, out):
    start = 0
    for v, stop in enumerate(seg_end):
        cold_pages = [p for p in range(first[v], first[v] + pages[v])
                      if not hot_first[v] <= p < hot_first[v] + hot_pages[v]]
        for i in range(start, stop):
            if u[i] < hot_share[v]:
                out[i] = hot_first[v] + min(int(u[i] / hot_share[v] * hot_pages[v]), hot_pages[v] - 1)
            else:
                k = int((u[i] - hot_share[v]) / (1.0 - hot_share[v]) * len(cold_pages))
                out[i] = cold_pages[min(k, len(cold_pages) - 1)]
        start = stop


def clear_all(kvm, mask, w0, w1):
    k, m = bits(kvm), bits(mask)
    sl = slice(w0 * 64, w1 * 64)
    n = int(np.count_nonzero(k[sl] & m[sl]))
    k[sl] = False
    m[sl] = False
    kvm[:], mask[:] = words(k), words(m)
    return n


def _slot_of(g, slot_gpa, slot_pages):
    hits = [s for s in range(len(slot_gpa)) if slot_gpa[s] <= g < slot_gpa[s] + slot_pages[s]]
    return hits[0] if hits else None


def apply_writes_ring(gpa_pages, seg_end, start, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, protected,
                      nonzero, stale, win, rings, dirty_index, reset_index, soft_limit, faults, out):
    prot, oracle = bits(protected), _Oracle(nonzero, stale, win)

    def store():
        protected[:] = words(prot)
        oracle.store()

    n = rings.shape[1]
    seg_start = 0
    for v, stop in enumerate(seg_end):
        for i in range(max(seg_start, start), stop):
            if dirty_index[v] - reset_index[v] >= soft_limit:
                store()
                out[0], out[1] = v, i
                return 1
            out[2] += not oracle.write(gpa_pages[i], gmap)
            g = _page(gpa_pages[i])
            s = _slot_of(g, slot_gpa, slot_pages)
            if s is None:
                continue
            r = g - slot_gpa[s] + slot_ram[s]
            if slot_logging[s] and prot[r]:
                prot[r] = False
                rings[v, dirty_index[v] % n] = r
                dirty_index[v] += 1
                faults[v] += 1
                if dirty_index[v] - reset_index[v] >= soft_limit:
                    store()
                    out[0], out[1] = v, i + 1
                    return 1
        seg_start = stop
    store()
    return 0


def reap_rings(rings, dirty_index, reset_index, dirty_bmap, protected, reaped):
    d, p = bits(dirty_bmap), bits(protected)
    n = rings.shape[1]
    total = 0
    for v in range(rings.shape[0]):
        entries = [rings[v, k % n] for k in range(reset_index[v], dirty_index[v])]
        d[entries] = True
        p[entries] = True
        reaped[v] += len(entries)
        total += len(entries)
        reset_index[v] = dirty_index[v]
    dirty_bmap[:], protected[:] = words(d), words(p)
    return total


def mark_ring_entries(rings, dirty_index, reset_index, out_bmap):
    o = bits(out_bmap)
    n = rings.shape[1]
    for v in range(rings.shape[0]):
        for k in range(reset_index[v], dirty_index[v]):
            o[rings[v, k % n]] = True
    out_bmap[:] = words(o)


def backend_writes(gpa_pages, tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging):
    lg, oracle = bits(log), _Oracle(nonzero, stale, win)
    logged = 0
    for g in gpa_pages:  # device DMA: always new data
        if _slot_of(g, tbl_gpa, tbl_pages) is None:
            continue
        oracle.write(g, gmap)
        lg[g] |= bool(logging)
        logged += 1
    log[:] = words(lg)
    oracle.store()
    return logged


def harvest_log(log, dst, w0, w1, dst_w0, exchange, seen):
    lg, d = bits(log), bits(dst)
    n = 0
    for w in range(w0, w1):
        if not exchange:
            seen[w - w0] = log[w]
        page_bits = lg[w * 64 : (w + 1) * 64].copy()
        n += int(np.count_nonzero(page_bits))
        d[(dst_w0 + w - w0) * 64 : (dst_w0 + w - w0 + 1) * 64] |= page_bits
        if exchange:
            lg[w * 64 : (w + 1) * 64] = False
    log[:], dst[:] = words(lg), words(d)
    return n


def run_vcpus_dest(h, vi, vf, runs, ubuf, gmap, present, written, dv, faults, io):
    """``destkernels.run_vcpus_dest`` for hot/cold and sequential workloads, one write at a time on page arrays.

    RAM is identity-mapped here (``gmap`` one run from guest page 0); data-only runs are not used.
    """
    from .destkernels import (DEST_DONE, DEST_REFILL, DV_BLOCKED, DV_CARRY, DV_NEXT, DV_PEND, DV_WRITES,
                              IO_NFAULTS, IO_UNASSIGNED, NEVER)
    from .kernels import (KIND_SEQUENTIAL, VF_HOT_SHARE, VI_CURSOR, VI_FIRST, VI_HOT_FIRST, VI_HOT_PAGES, VI_KIND,
                          VI_PAGES, VI_RATE, VI_START, VI_STOP, VI_ULEN, VI_UPOS)

    have, wrote = bits(present), bits(written)
    for v in range(vi.shape[1]):
        while not dv[DV_BLOCKED, v] and dv[DV_NEXT, v] < h:
            t = int(dv[DV_NEXT, v])
            if t < vi[VI_START, v]:
                dv[DV_NEXT, v] = vi[VI_START, v]
                continue
            if t >= vi[VI_STOP, v] or vi[VI_RATE, v] == 0:
                dv[DV_NEXT, v] = NEVER
                break
            g = int(dv[DV_PEND, v])
            if g < 0:
                if vi[VI_UPOS, v] >= vi[VI_ULEN, v]:
                    written[:] = words(wrote)
                    return DEST_REFILL
                u = ubuf[v, vi[VI_UPOS, v]]
                vi[VI_UPOS, v] += 1
                if vi[VI_KIND, v] == KIND_SEQUENTIAL:
                    g = int(vi[VI_FIRST, v] + vi[VI_CURSOR, v] % vi[VI_PAGES, v])
                    vi[VI_CURSOR, v] += 1
                else:
                    out = np.zeros(1, dtype=np.int64)
                    map_writes(np.array([u]), [1], vi[VI_FIRST, v:v + 1], vi[VI_PAGES, v:v + 1],
                               vi[VI_HOT_FIRST, v:v + 1], vi[VI_HOT_PAGES, v:v + 1], vf[VF_HOT_SHARE, v:v + 1], out)
                    g = int(out[0])
            if g >= gmap[1, 0]:
                io[IO_UNASSIGNED] += 1
            elif not have[g]:
                faults[:, io[IO_NFAULTS]] = (v, g, t)
                io[IO_NFAULTS] += 1
                dv[DV_PEND, v], dv[DV_BLOCKED, v] = g, 1
                break
            else:
                wrote[g] = True
            dv[DV_PEND, v] = -1
            dv[DV_WRITES, v] += 1
            step, dv[DV_CARRY, v] = divmod(int(dv[DV_CARRY, v]) + 4096 * 10**9, int(vi[VI_RATE, v]))
            dv[DV_NEXT, v] = t + step
    written[:] = words(wrote)
    return DEST_DONE
