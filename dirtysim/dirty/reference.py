"""Slow, obviously correct versions of every kernel in ``kernels.py``.

They work on unpacked boolean page arrays and Python loops, so that a reader
can check them against the QEMU/KVM description in one glance. Tests run both
on the same inputs; benchmarks compare their speed.
"""

from __future__ import annotations

import numpy as np

from .kernels import NORMAL_PAGE_BYTES, SEND_BUDGET, SEND_END_OF_BLOCK, SEND_NEED_CLEAR, ZERO_PAGE_BYTES


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


def apply_writes(gpa_pages, seg_end, slot_gpa, slot_pages, slot_ram, slot_logging, kvm_dirty, gen, faults):
    k = bits(kvm_dirty)
    unassigned = 0
    start = 0
    for v, stop in enumerate(seg_end):
        for g in gpa_pages[start:stop]:
            slots = [s for s in range(len(slot_gpa)) if slot_gpa[s] <= g < slot_gpa[s] + slot_pages[s]]
            if not slots:
                unassigned += 1
                continue
            s = slots[0]
            r = g - slot_gpa[s] + slot_ram[s]
            gen[r] += 1
            if slot_logging[s] and not k[r]:
                k[r] = True
                faults[v] += 1
        start = stop
    kvm_dirty[:] = words(k)
    return unassigned


def find_next_bit(bmap, page, end):
    b = bits(bmap)
    hits = np.flatnonzero(b[page:end])
    return page + int(hits[0]) if hits.size else end


def send_pages(bmap, clear_bmap, src_gen, dst_gen, page, end, budget, cap, shift, lazy_clear, zero_detect,
               first_extra, out):
    b = bits(bmap)
    nbytes = normal = zero = 0
    extra = first_extra
    status = SEND_END_OF_BLOCK
    while True:
        while page < end and not b[page]:
            page += 1
        if page >= end:
            page = end
            break
        if nbytes > budget or nbytes >= cap:
            status = SEND_BUDGET
            break
        if lazy_clear and clear_bmap[page >> shift]:
            status = SEND_NEED_CLEAR
            break
        b[page] = False
        is_zero = zero_detect and src_gen[page] == 0
        zero += is_zero
        normal += not is_zero
        nbytes += (ZERO_PAGE_BYTES if is_zero else NORMAL_PAGE_BYTES) + extra
        extra = 0
        dst_gen[page] = src_gen[page]
        page += 1
    bmap[:] = words(b)
    out[:4] = (page, normal, zero, nbytes)
    return status


def count_set(bmap, w0, w1):
    return int(np.count_nonzero(bits(bmap)[w0 * 64 : w1 * 64]))


def count_stale(src_gen, dst_gen, tracked, first, last):
    stale = src_gen[first:last] != dst_gen[first:last]
    seen = np.zeros(last - first, dtype=bool)
    for row in tracked:
        seen |= bits(row)[first:last]
    return int(np.count_nonzero(stale)), int(np.count_nonzero(stale & ~seen))


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
