"""numba kernels: all per-page work of a quantum in one call.

Kernels take only arrays and scalars (no objects, no global state) and are
compiled with one decorator (``cache=True``). Bitmaps are little-endian uint64
words: page ``p`` is bit ``p & 63`` of word ``p >> 6``, the layout of QEMU's
``unsigned long`` bitmaps and of the KVM/vhost logs on 64-bit hosts. Every
page-level kernel has a slow, obviously correct twin in ``reference.py``; the
engine loops built from them (``run_vcpus``, ``run_backend``,
``iterate_slices``) are checked against the plain Python paths they replace
(``tests/test_engine.py``) and by the golden event logs.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .sendcost import (CV_CHAN_NORMAL, CV_CHAN_ZERO, CV_CHANNELS, CV_MAIN_NORMAL, CV_MAIN_PAGE, CV_MAIN_ZERO,
                       CV_PACKET_BYTES, RAM_SAVE_FLAG_MULTIFD_FLUSH_BYTES, channel_ns, flush_and_sync, main_ns,
                       queue_pages, slice_ns)

jit = numba.njit(cache=True, nogil=True)
inline = numba.njit(cache=True, nogil=True, inline="always")  # per-write helpers, inlined into the loops

PAGE_SIZE = 4096
PAGE_HEADER = 8  # save_page_header: be64 offset|flags
ZERO_PAGE_BYTES = PAGE_HEADER + 1  # save_zero_page: header + one byte
NORMAL_PAGE_BYTES = PAGE_HEADER + PAGE_SIZE  # save_normal_page

# send_pages() stop reasons (SEND_PAGE: not a stop, the page goes out)
SEND_END_OF_BLOCK, SEND_BUDGET, SEND_NEED_CLEAR, SEND_PAGE = 0, 1, 2, 3
# rows of the oracle's write window (``RAMList.window``): pages written, pages whose content changed
WIN_WRITTEN, WIN_MODIFIED = 0, 1


@intrinsic
def popcount64(typingctx, x):
    """LLVM ctpop on a uint64 (one instruction with POPCNT)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def cttz64(typingctx, x):
    """Count trailing zeros of a non-zero uint64 (index of the lowest set bit)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, True))

    return sig, codegen


@intrinsic
def prefetch_write(typingctx, arr, idx):
    """LLVM prefetch of ``arr[idx]`` for writing: a hint that lets a batch's cache misses overlap."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        ptr = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@jit
def sync_xchg(src, dst, w0, w1):
    """For words [w0, w1): old = xchg(src, 0); new += popcount(old & ~dst); dst |= old.

    The fast path of ``physical_memory_sync_dirty_bitmap`` (migration/ram.c):
    moves global dirty memory (L2) into ``RAMBlock.bmap`` (L3) counting only
    0->1 transitions. Branchless: it also stores 0 into words that were 0.
    Like every bitmap kernel here it loops over views from index 0, a form
    LLVM vectorizes (an offset loop over the whole arrays ran at 60 %).
    """
    s, d = src[w0:w1], dst[w0:w1]
    new = np.uint64(0)
    for w in range(s.shape[0]):
        old = s[w]
        x = d[w]
        s[w] = 0
        new += popcount64(old & ~x)
        d[w] = x | old
    return new


@jit
def or_into(dst, src, w0, w1):
    """dst |= src over words [w0, w1) (``physical_memory_set_dirty_lebitmap``); returns the non-zero words of src.

    QEMU skips zero words (to save atomic ops) and ORs each non-zero one into
    every dirty client's bitmap: the count is what it pays for. OR-ing a zero
    word changes nothing, and writing every word avoids a mispredicted branch.
    """
    d, s = dst[w0:w1], src[w0:w1]
    n = 0
    for w in range(d.shape[0]):
        x = s[w]
        d[w] |= x
        n += x != 0
    return n


@jit
def count_nonzero_words(bmap, w0, w1):
    """Non-zero words in [w0, w1): those ``physical_memory_sync_dirty_bitmap`` exchanges (``qatomic_xchg``)."""
    b = bmap[w0:w1]
    n = 0
    for w in range(b.shape[0]):
        n += b[w] != 0
    return n


@jit
def xchg_into(src, dst, w0, w1):
    """dst = src; src = 0 over [w0, w1); returns the number of bits moved.

    Legacy ``KVM_GET_DIRTY_LOG`` (``kvm_get_dirty_log_protect`` without manual
    protect): the kernel exchanges each word with 0 and re-protects those pages.
    """
    s, d = src[w0:w1], dst[w0:w1]
    n = np.uint64(0)
    for w in range(s.shape[0]):
        x = s[w]
        d[w] = x
        s[w] = 0
        n += popcount64(x)
    return n


@jit
def clear_by_mask(kvm, mask, w0, w1):
    """``KVM_CLEAR_DIRTY_LOG`` with QEMU's fetched mask over words [w0, w1).

    Kernel side (``kvm_clear_dirty_log_protect``): cleared = mask & bitmap;
    bitmap &= ~mask; only the cleared pages are re-protected. QEMU side
    (``kvm_log_clear_one_slot``): the cached mask is zeroed for the range so a
    second clear never re-clears bits it has not fetched again. Returns the
    number of re-protected pages.
    """
    k, msk = kvm[w0:w1], mask[w0:w1]
    n = np.uint64(0)
    for w in range(k.shape[0]):  # branch-free: a zero mask word clears nothing
        m = msk[w]
        x = k[w]
        n += popcount64(x & m)
        k[w] = x & ~m
        msk[w] = 0
    return n


@inline
def slot_of(g, slot_gpa, slot_pages):
    """Index of the memslot holding guest page ``g`` (a linear scan: guests have few), or len(slots)."""
    for s in range(slot_gpa.shape[0]):
        lo = slot_gpa[s]
        if lo <= g and g < lo + slot_pages[s]:
            return s
    return slot_gpa.shape[0]


@inline
def oracle_write(r, nonzero, stale, win, same):
    """The page oracle sees RAM page ``r`` written.

    A write of new data (``same`` False) leaves data the destination does not
    have. A write that stores the bytes the page already holds changes nothing
    the destination could miss: a zero page stays zero, a sent page stays sent.
    While a write window is open (``win`` has columns) it records both kinds:
    every page written, and every page whose content changed. Branch-free on
    ``same``: the per-write helpers run a hundred million times a second.
    """
    w = r >> 6
    b = np.uint64(1) << np.uint64(r & 63)
    d = np.uint64(0) if same else b
    nonzero[w] |= d
    stale[w] |= d
    if win.shape[1]:
        win[WIN_WRITTEN, w] |= b
        win[WIN_MODIFIED, w] |= d


@inline
def ram_page(g, m0, m1, m2):
    """RAM page of guest page ``g`` in the oracle's own map, or -1 where there is no RAM.

    ``m0, m1, m2``: the rows of ``oracle.GuestMap`` (first guest page, pages,
    first RAM page of each writable RAM run), never the memslots or tables that
    track writes. Callers take the rows once per call, not per write.
    """
    o = slot_of(g, m0, m1)
    return g - m0[o] + m2[o] if o < m0.shape[0] else -1


@inline
def written_page(x):
    """The page of a write as the guest loop records it: ``~page`` when it stored identical bytes (``x < 0``)."""
    return x ^ (x >> 63)


@inline
def rewrites_same(u, share):
    """Whether the write drawn from variate ``u`` stores identical bytes: a hash of ``u``'s 53 bits below ``share``.

    The hash (splitmix64's finaliser) makes a second uniform number from the
    first without drawing from the stream, so a workload with no identical
    rewrites draws exactly the variates it always did.
    """
    z = np.uint64(u * 9007199254740992.0) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0) < share


@inline
def mark_dirty(bitmap, r):
    """Set page ``r``'s bit; 1 if it was clear (in KVM's bitmap: the write faulted), else 0. Branch-free."""
    w = r >> 6
    b = np.uint64(1) << np.uint64(r & 63)
    old = bitmap[w]
    bitmap[w] = old | b
    return np.int64((old & b) == 0)


@jit
def apply_writes(gpa_pages, seg_end, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, kvm_dirty, nonzero, stale,
                 win, faults):
    """Apply one quantum of guest writes of all vCPUs.

    ``gpa_pages[seg_end[v-1]:seg_end[v]]`` are vCPU v's writes (guest-physical
    page numbers; ``~page`` for a write of identical bytes, ``written_page``).
    Each write marks its RAM page written in the oracle (``ram_page`` through
    the oracle's own map ``gmap``, ``oracle_write``). KVM cannot tell an
    identical rewrite from any other write. In a memslot with dirty logging, a
    write to a write-protected page faults: ``mark_page_dirty_in_slot`` sets
    the KVM bit and the page becomes writable. In bitmap mode the protection
    state is exactly "KVM bit clear" (GET/CLEAR re-protect precisely the bits
    they clear), so no separate array is kept. Returns the number of writes
    that hit no RAM (MMIO, ROM, or nothing).
    """
    n = seg_end[seg_end.shape[0] - 1] if seg_end.shape[0] else 0
    m0, m1, m2 = gmap[0], gmap[1], gmap[2]
    nslots = slot_gpa.shape[0]
    for i in range(n):  # random pages of a big guest miss the cache: ask for them all first
        r = ram_page(written_page(gpa_pages[i]), m0, m1, m2)
        if r >= 0:  # KVM's bit is at the same RAM page whenever the memslots are right
            prefetch_write(nonzero, r >> 6)
            prefetch_write(stale, r >> 6)
            prefetch_write(kvm_dirty, r >> 6)
    unassigned = 0
    start = 0
    for v in range(seg_end.shape[0]):
        stop = seg_end[v]
        nfault = 0
        for i in range(start, stop):
            x = gpa_pages[i]
            g = written_page(x)
            r = ram_page(g, m0, m1, m2)
            if r >= 0:
                oracle_write(r, nonzero, stale, win, x < 0)
            else:
                unassigned += 1
            # the memslot, written out here: as a helper returning a page or -1, it costs 3x the loop
            s = slot_of(g, slot_gpa, slot_pages)
            if s < nslots and slot_logging[s]:
                nfault += mark_dirty(kvm_dirty, g - slot_gpa[s] + slot_ram[s])
        faults[v] += nfault
        start = stop
    return unassigned


@jit
def find_next_bit(bmap, page, end):
    """Index of the first set bit in [page, end), or ``end`` (``find_next_bit``)."""
    if page >= end:
        return end
    w = page >> 6
    x = bmap[w] & (~np.uint64(0) << np.uint64(page & 63))
    last = (end - 1) >> 6
    while True:
        if x:
            p = (w << 6) + np.int64(cttz64(x))
            return p if p < end else end
        w += 1
        if w > last:
            return end
        x = bmap[w]


@inline
def next_to_send(bmap, clear_bmap, page, end, shift, lazy_clear, stop):
    """The next dirty page from ``page`` and whether to send it (SEND_PAGE) or why not: the block ends, the
    slice is full (``stop``), or its chunk must be cleared first (``migration_clear_memory_region_dirty_bitmap``)."""
    p = find_next_bit(bmap, page, end)
    if p >= end:
        return p, SEND_END_OF_BLOCK
    if stop:
        return p, SEND_BUDGET
    if lazy_clear and clear_bmap[p >> shift]:
        return p, SEND_NEED_CLEAR
    return p, SEND_PAGE


@inline
def deliver_page(stale, received, w, b):
    """The destination receives page bit ``b`` of word ``w`` as it is now: (re-sent, re-sent though unchanged)."""
    resent = 1 if received[w] & b else 0
    unchanged = 1 if resent and not (stale[w] & b) else 0
    received[w] |= b
    stale[w] &= ~b
    return resent, unchanged


@jit
def send_pages(bmap, clear_bmap, nonzero, stale, received, page, end, budget, cap, shift, lazy_clear, zero_detect,
               first_extra, normal_bytes, zero_bytes, cv, t_cap, out):
    """Send dirty pages of one RAMBlock from ``page`` in address order.

    Models ``ram_find_and_save_block`` / ``ram_save_host_page`` for 4 KiB pages:
    stop before a page once more than ``budget`` bytes went out
    (``migration_rate_exceeded``), ``cap`` bytes (one send slice of link time) or
    ``t_cap`` ns of the migration thread's or the senders' CPU time (one send
    slice of CPU: the costs in ``cv``, ``dirty/sendcost.py``); stop and ask
    the caller to clear a chunk when the next dirty page lies in a chunk whose
    ``clear_bmap`` bit is set (``migration_clear_memory_region_dirty_bitmap``,
    skipped when ``lazy_clear`` is 0, i.e. in the last stage). Each sent page is
    test-and-cleared in ``bmap`` (``migration_bitmap_clear_dirty``), costs a
    zero-page or normal-page record (``nonzero`` clear: ``save_zero_page``), and
    the destination oracle receives its current content (``stale`` cleared,
    ``received`` set). A page puts ``normal_bytes`` or ``zero_bytes`` on the wire
    (``migration/sending.py``); ``first_extra`` bytes (block idstr) go on the first page.
    The oracle bitmaps are the block's words (page 0 = the block's first page).

    out[:] = next page, normal pages, zero pages, bytes, re-sent pages (received
    before), unchanged pages (re-sent although not written since the last send:
    "write-not-dirty"). Returns a SEND_* code.
    """
    nbytes = 0
    normal = 0
    zero = 0
    resent = 0
    unchanged = 0
    extra = first_extra
    nch = cv[CV_CHANNELS]
    m_zero, m_normal = cv[CV_MAIN_PAGE] + cv[CV_MAIN_ZERO], cv[CV_MAIN_PAGE] + cv[CV_MAIN_NORMAL]
    c_zero, c_normal = cv[CV_CHAN_ZERO], cv[CV_CHAN_NORMAL]
    m_worst, c_worst = max(m_zero, m_normal), max(c_zero, c_normal)
    tm = 0  # migration thread CPU so far
    tc = 0  # senders' CPU so far, summed over the channels
    while True:
        stop = nbytes > budget or nbytes >= cap or tm >= t_cap or tc // nch >= t_cap
        page, status = next_to_send(bmap, clear_bmap, page, end, shift, lazy_clear, stop)
        if status != SEND_PAGE:
            break
        p = page
        w = p >> 6
        x = bmap[w] & (~np.uint64(0) << np.uint64(p & 63))  # the dirty pages from p to the end of its word
        if end - (w << 6) < 64:
            x &= (np.uint64(1) << np.uint64(end - (w << 6))) - np.uint64(1)
        k = np.int64(popcount64(x))
        worst = nbytes + (k - 1) * max(normal_bytes, zero_bytes) + extra  # bytes out before the word's last page
        if worst <= budget and worst < cap and tm + (k - 1) * m_worst < t_cap and (
                tc + (k - 1) * c_worst) // nch < t_cap:
            # Every page left in the word passes the per-page checks (one chunk: shift >= 6): send them at once.
            bmap[w] &= ~x
            z = np.int64(popcount64(x & ~nonzero[w])) if zero_detect else 0
            zero += z
            normal += k - z
            nbytes += z * zero_bytes + (k - z) * normal_bytes + extra
            tm += z * m_zero + (k - z) * m_normal
            tc += z * c_zero + (k - z) * c_normal
            extra = 0
            rc = received[w] & x
            resent += np.int64(popcount64(rc))
            unchanged += np.int64(popcount64(rc & ~stale[w]))
            received[w] |= x
            stale[w] &= ~x
            page = min((w + 1) << 6, end)
            continue
        b = np.uint64(1) << np.uint64(p & 63)
        bmap[w] &= ~b
        if zero_detect and not (nonzero[w] & b):
            zero += 1
            nbytes += zero_bytes + extra
            tm += m_zero
            tc += c_zero
        else:
            normal += 1
            nbytes += normal_bytes + extra
            tm += m_normal
            tc += c_normal
        extra = 0
        r, u = deliver_page(stale, received, w, b)
        resent += r
        unchanged += u
        page = p + 1
    out[0] = page
    out[1] = normal
    out[2] = zero
    out[3] = nbytes
    out[4] = resent
    out[5] = unchanged
    return status


@jit
def count_set(bmap, w0, w1):
    """Number of set bits in words [w0, w1)."""
    b = bmap[w0:w1]
    n = np.uint64(0)
    for w in range(b.shape[0]):
        n += popcount64(b[w])
    return n


@jit
def count_stale(stale, tracked, w0, w1):
    """Oracle over words [w0, w1): (stale pages, stale and untracked pages).

    A page is stale when the destination's copy is out of date (never received,
    or written since it was last sent). It is untracked when no dirty layer (OR
    of the rows of ``tracked``, one per layer) remembers it, so it would never be
    sent again: that is a lost page.
    """
    nstale = np.uint64(0)
    lost = np.uint64(0)
    for w in range(w0, w1):
        x = stale[w]
        if x:
            nstale += popcount64(x)
            for k in range(tracked.shape[0]):
                x &= ~tracked[k, w]
            lost += popcount64(x)
    return nstale, lost


@inline
def map_write(x, first, pages, hot_first, hot_pages, hot_share):
    """One uniform variate in [0, 1) -> a guest-physical page of a hot/cold workload.

    Below ``hot_share`` the write lands uniformly in the hot region, otherwise
    uniformly on the rest of the working set (the hot region skipped).
    ``hot_pages == 0`` is uniform.
    """
    if x < hot_share:
        return hot_first + min(np.int64(x / hot_share * hot_pages), hot_pages - 1)
    cold = pages - hot_pages
    k = min(np.int64((x - hot_share) / (1.0 - hot_share) * cold), cold - 1)
    if k >= hot_first - first:
        k += hot_pages
    return first + k


@jit
def map_writes(u, seg_end, first, pages, hot_first, hot_pages, hot_share, out):
    """Map uniform variates to guest-physical pages per vCPU segment (``map_write``).

    vCPU v's variates are ``u[seg_end[v-1]:seg_end[v]]``.
    """
    start = 0
    for v in range(seg_end.shape[0]):
        for i in range(start, seg_end[v]):
            out[i] = map_write(u[i], first[v], pages[v], hot_first[v], hot_pages[v], hot_share[v])
        start = seg_end[v]


@jit
def first_clears(kvm, mask, once, w0, w1):
    """Before a ``KVM_CLEAR_DIRTY_LOG`` over words [w0, w1): how many of the pages it will re-protect
    (mask & bitmap) were never cleared since logging started (``once`` unset); marks them in ``once``.

    With huge-page backing and INITIALLY_SET those are still mapped huge: the
    clear write-protects the huge mapping (``kvm_arch_mmu_enable_log_dirty_pt_masked``).
    """
    k, msk, o = kvm[w0:w1], mask[w0:w1], once[w0:w1]
    n = np.uint64(0)
    for w in range(k.shape[0]):
        x = k[w] & msk[w]
        n += popcount64(x & ~o[w])
        o[w] |= x
    return n


@jit
def clear_all(kvm, mask, w0, w1):
    """WRONG on purpose (``kvm_clear: clear-all``): clear every bit of the range, not QEMU's fetched mask.

    Bits set by the guest after the last GET are dropped although nobody fetched
    them: those writes are never reported (reference §5.3, rule 1).
    """
    k, msk = kvm[w0:w1], mask[w0:w1]
    n = np.uint64(0)
    for w in range(k.shape[0]):
        n += popcount64(k[w] & msk[w])
        k[w] = 0
        msk[w] = 0
    return n


@jit
def apply_writes_ring(gpa_pages, seg_end, start, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, protected,
                      nonzero, stale, win, rings, dirty_index, reset_index, soft_limit, faults, out):
    """Guest writes with the KVM dirty ring (``mark_page_dirty_in_slot`` -> ``kvm_dirty_ring_push``).

    A write to a write-protected page faults, pushes (the page's RAM index) onto
    the writing vCPU's ring and makes the page writable. When a ring holds
    ``soft_limit`` unreset entries the vCPU exits with KVM_EXIT_DIRTY_RING_FULL
    right after that push: the kernel returns 1 with out[0] = vCPU, out[1] =
    index of the next write, so the caller can reap and resume from ``start``.
    Returns 0 when every write is applied; out[2] counts unassigned writes.
    """
    n = rings.shape[1]
    m0, m1, m2 = gmap[0], gmap[1], gmap[2]
    nslots = slot_gpa.shape[0]
    seg_start = 0
    for v in range(seg_end.shape[0]):
        stop = seg_end[v]
        i = max(seg_start, start)
        while i < stop:
            if dirty_index[v] - reset_index[v] >= soft_limit:
                out[0] = v
                out[1] = i
                return 1
            x = gpa_pages[i]  # as in apply_writes, written out: an inlined helper with a branch costs 3x
            g = written_page(x)
            o = ram_page(g, m0, m1, m2)
            if o >= 0:
                oracle_write(o, nonzero, stale, win, x < 0)
            else:
                out[2] += 1
            s = slot_of(g, slot_gpa, slot_pages)
            i += 1
            if s < nslots and slot_logging[s]:
                r = g - slot_gpa[s] + slot_ram[s]
                w = r >> 6
                b = np.uint64(1) << np.uint64(r & 63)
                if protected[w] & b:
                    protected[w] &= ~b
                    rings[v, dirty_index[v] % n] = r
                    dirty_index[v] += 1
                    faults[v] += 1
                    if dirty_index[v] - reset_index[v] >= soft_limit:  # KVM_REQ_DIRTY_RING_SOFT_FULL: exit now
                        out[0] = v
                        out[1] = i
                        return 1
        seg_start = stop
    return 0


@jit
def reap_rings(rings, dirty_index, reset_index, dirty_bmap, protected, reaped):
    """``kvm_dirty_ring_reap`` + ``KVM_RESET_DIRTY_RINGS`` for every vCPU.

    Each collected entry sets its bit in ``KVMSlot.dirty_bmap`` (ram-indexed
    here); the reset re-protects the page. ``reaped[v]`` counts entries per vCPU
    (``cpu->dirty_pages``). Returns the total.
    """
    n = rings.shape[1]
    total = 0
    for v in range(rings.shape[0]):
        for k in range(reset_index[v], dirty_index[v]):
            r = rings[v, k % n]
            w = r >> 6
            b = np.uint64(1) << np.uint64(r & 63)
            dirty_bmap[w] |= b
            protected[w] |= b
        count = dirty_index[v] - reset_index[v]
        reaped[v] += count
        total += count
        reset_index[v] = dirty_index[v]
    return total


@jit
def mark_ring_entries(rings, dirty_index, reset_index, out_bmap):
    """OR the pages of not-yet-reaped ring entries into ``out_bmap`` (for the oracle)."""
    n = rings.shape[1]
    for v in range(rings.shape[0]):
        for k in range(reset_index[v], dirty_index[v]):
            r = rings[v, k % n]
            out_bmap[r >> 6] |= np.uint64(1) << np.uint64(r & 63)


@inline
def backend_write(g, tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging):
    """A vhost backend writes guest page ``g`` (DMA), then ``vu_log_page`` (atomic OR). False: not in its table.

    The backend reaches only what its memory table maps; the oracle learns the
    page from its own map (``ram_page``). The log is indexed by guest page.
    """
    if slot_of(g, tbl_gpa, tbl_pages) == tbl_gpa.shape[0]:
        return False
    r = ram_page(g, gmap[0], gmap[1], gmap[2])
    if r >= 0:
        oracle_write(r, nonzero, stale, win, False)  # DMA of packets and blocks: new data
    if logging:
        log[g >> 6] |= np.uint64(1) << np.uint64(g & 63)
    return True


@jit
def backend_writes(gpa_pages, tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging):
    """A vhost backend writes guest memory (``backend_write`` per page).

    The log is indexed by guest-physical page (``VHOST_LOG_PAGE`` = 4 KiB per
    bit) and written only while ``logging`` (VHOST_F_LOG_ALL); writes outside the
    backend's memory table are not performed. Returns pages written.
    """
    logged = 0
    for i in range(gpa_pages.shape[0]):
        logged += backend_write(gpa_pages[i], tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging)
    return logged


@jit
def harvest_log(log, dst, w0, w1, dst_w0, exchange, seen):
    """``vhost_dev_sync_region``: move vhost log words [w0, w1) into ``dst`` at ``dst_w0``.

    exchange=True: each non-zero word is atomically exchanged with 0 (QEMU).
    exchange=False: a plain read only (the WRONG read-then-zero variant; the
    caller stores 0 later), and ``seen`` receives the words read (the exchange
    leaves it untouched). Returns set bits.
    """
    lg, d = log[w0:w1], dst[dst_w0 : dst_w0 + w1 - w0]
    n = np.uint64(0)
    if exchange:  # branch-free: exchanging or OR-ing a zero word changes nothing
        for w in range(lg.shape[0]):
            x = lg[w]
            lg[w] = 0
            d[w] |= x
            n += popcount64(x)
    else:
        for w in range(lg.shape[0]):
            x = lg[w]
            seen[w] = x
            d[w] |= x
            n += popcount64(x)
    return n


# run_vcpus() results
RUN_DONE, RUN_RING_FULL, RUN_REFILL = 0, 1, 2
PML_ENTRIES = 512  # vmx PML_LOG_NR_ENTRIES: GPAs the buffer holds before a PML-full VM exit
NS_PER_S = 1_000_000_000
# Rows of run_vcpus' per-vCPU int64 table ``vi`` (one column per vCPU)
(VI_RATE, VI_CARRY, VI_DEBT, VI_MAXN, VI_UPOS, VI_ULEN, VI_FIRST, VI_PAGES, VI_HOT_FIRST, VI_HOT_PAGES, VI_WRITES,
 VI_FAULTS, VI_FAULT_NS, VI_RING_FULL_EXITS, VI_RING_FULL_NS, VI_INHIBIT_NS, VI_QN, VI_QF, VI_SEG_END, VI_KIND,
 VI_CURSOR, VI_LOG_FIRST, VI_LOG_PAGES, VI_START, VI_STOP, VI_RUNS_OFF, VI_RUNS_N, VI_THROTTLE_NS,
 VI_DIRTYLIMIT_NS, VI_PML_LOGGED, VI_PML_FILL, VI_PML_EXITS, VI_PML_NS, VI_MMIO_RATE, VI_MMIO_CARRY, VI_MMIO_COST,
 VI_MMIO_EXITS, VI_MMIO_NS, VI_BQL_NS) = range(39)
VI_ROWS = 39  # VI_THROTTLE_NS, VI_DIRTYLIMIT_NS: counters Python keeps (sleeps it adds to VI_DEBT)
DATA_RUN_PAGES = 512  # data_only: the workload's pages are the data runs (2 MiB) of its working set, in order
# Rows of its float64 table ``vf``: hot-set share, identical-rewrite share, zipf exponent, log share
VF_HOT_SHARE, VF_SAME_SHARE, VF_ZIPF_S, VF_LOG_SHARE = range(4)
VF_ROWS = 4
# Workload kinds (``VI_KIND``): hot/cold mixture (uniform is one), zipf, a sequential sweep, a database
KIND_HOTSET, KIND_ZIPF, KIND_SEQUENTIAL, KIND_DATABASE = range(4)
ZIPF_SCATTER = np.uint64(2654435761)  # ranks are spread over the working set (rank * prime mod pages)
# run_vcpus' ``state``: quanta done, resume index (-1 none), exiting vCPU, unassigned writes, start of the next
# quantum (ns), then 3 for apply_writes_ring
ST_DONE, ST_RESUME, ST_VCPU, ST_UNASSIGNED, ST_NOW, ST_ROUT = 0, 1, 2, 3, 4, 5


def run_state() -> np.ndarray:
    """A fresh ``state`` for ``run_vcpus``: no quantum to resume, no unassigned writes, room for ``ST_ROUT``'s 3."""
    state = np.zeros(ST_ROUT + 3, dtype=np.int64)
    state[ST_RESUME] = -1
    return state


@jit
def other_page(u, v, vi, vf):
    """The page of one write of vCPU ``v`` from variate ``u``, for the kinds other than the hot/cold mixture.

    zipf: rank k (1-based) with probability proportional to k^-s over the
    working set (the continuous inverse CDF, floored), ranks spread over the
    pages by a multiplicative scatter so hot pages are not contiguous.
    sequential: the next page of a sweep over the working set, wrapping (the
    variate is drawn and unused, so every kind consumes its stream alike).
    database: a ``log_share`` of the writes append to a sequential log
    (wrapping), the rest fall on the hot/cold mixture.
    """
    kind = vi[VI_KIND, v]
    first, pages = vi[VI_FIRST, v], vi[VI_PAGES, v]
    g = first
    if kind == KIND_ZIPF:
        s = vf[VF_ZIPF_S, v]
        if abs(s - 1.0) < 1e-12:
            k = np.int64(math.exp(u * math.log(pages + 1.0)))
        else:
            a = (pages + 1.0) ** (1.0 - s)
            k = np.int64((1.0 + u * (a - 1.0)) ** (1.0 / (1.0 - s)))
        k = min(max(k, 1), pages) - 1
        g = first + np.int64((np.uint64(k) * ZIPF_SCATTER) % np.uint64(pages))
    elif kind == KIND_SEQUENTIAL:
        g = first + vi[VI_CURSOR, v] % pages
        vi[VI_CURSOR, v] += 1
    elif kind == KIND_DATABASE:
        share = vf[VF_LOG_SHARE, v]
        if u < share:
            g = vi[VI_LOG_FIRST, v] + vi[VI_CURSOR, v] % vi[VI_LOG_PAGES, v]
            vi[VI_CURSOR, v] += 1
        else:
            g = map_write((u - share) / (1.0 - share), first, pages, vi[VI_HOT_FIRST, v], vi[VI_HOT_PAGES, v],
                          vf[VF_HOT_SHARE, v])
    return g


@inline
def mmio_bql_wait(bql, t0, run, carry, rate, e):
    """ns the first of ``e`` MMIO exits that finds the BQL held waits for it (``prepare_mmio_access`` takes it).

    Exit k (1..e) falls at ``t0 + ceil((k * 1e9 - carry) / rate)``, ``t0`` being
    when the vCPU entered the guest in this quantum for ``run`` ns; ``bql`` is
    the latest hold [start, end) (``bql.Bql``).
    """
    start, end = bql[0], bql[1]
    if end <= t0 or start > t0 + run:  # every exit falls inside [t0, t0 + run]
        return 0
    k = 1 if start <= t0 else ((start - t0 - 1) * rate + carry) // NS_PER_S + 1  # the first exit at or after start
    if k > e:
        return 0
    t = t0 + (k * NS_PER_S - carry + rate - 1) // rate
    return end - t if t < end else 0


@inline
def mmio_exits(vi, v, t0, run, bql):
    """A vCPU's KVM_EXIT_MMIO exits in ``run`` ns of guest time from ``t0``: ``VI_MMIO_RATE`` per second (remainder
    carried), each costing ``VI_MMIO_COST``; the first one that meets a BQL hold waits for its end."""
    rate, carry = vi[VI_MMIO_RATE, v], vi[VI_MMIO_CARRY, v]
    x = carry + rate * run
    e = x // NS_PER_S
    vi[VI_MMIO_CARRY, v] = x - e * NS_PER_S
    if e:
        wait = mmio_bql_wait(bql, t0, run, carry, rate, e)
        cost = e * vi[VI_MMIO_COST, v]
        vi[VI_MMIO_EXITS, v] += e
        vi[VI_MMIO_NS, v] += cost
        vi[VI_BQL_NS, v] += wait
        vi[VI_DEBT, v] += cost + wait


@jit
def run_vcpus(nq, quantum, fault_cost, pml, pml_cost, vi, vf, runs, ubuf, buf, state, bql, gmap, slot_gpa,
              slot_pages, slot_ram, slot_logging, target, nonzero, stale, win, ring, rings, dirty_index, reset_index,
              soft_limit):
    """Advance every vCPU by up to ``nq`` quanta of ``quantum`` ns; all guest work between two decisions.

    Per quantum, as the guest runs it: each vCPU first serves the run time it
    owes (``VI_DEBT``: write-protect faults, ring-full stalls, atomic memslot
    updates), then makes ``rate * run_ns`` bytes of page writes (remainder
    carried, one page per 4 KiB), drawing one variate per write from its own
    stream ``ubuf[v, upos:ulen]``; a ``vf[VF_SAME_SHARE, v]`` share of the writes
    store identical bytes (``rewrites_same``). A vCPU writes only in quanta that
    start inside [``VI_START``, ``VI_STOP``) (``state[ST_NOW]`` is the start of
    the next quantum). A data-only vCPU (``VI_RUNS_N`` > 0) writes a virtual
    working set that ``runs[VI_RUNS_OFF:...]`` (first guest page of each 2 MiB
    run of data) lays over the pages that held data at boot, so free memory
    stays zero. The pages (``map_write``, ``other_page`` by ``VI_KIND``) are applied vCPU by
    vCPU through the memslots (``apply_writes`` into ``target``, the KVM bitmap
    or TCG's dirty memory; ``apply_writes_ring`` with the dirty ring, where
    ``target`` is the write-protection map). Each fault costs the vCPU
    ``fault_cost`` of later run time. With ``pml`` (x86 Page Modification
    Logging) the same first writes after protection take no fault: the
    CPU sets the D-bit and logs the GPA into the vCPU's 512-entry buffer;
    each full buffer is a PML-full VM exit (``handle_pml_full``) costing
    ``pml_cost``, the buffer carried across quanta (``VI_PML_FILL``). A vCPU
    with ``VI_MMIO_RATE`` exits to QEMU for MMIO in its guest time
    (``mmio_exits``); an exit that meets a BQL hold (``bql``) waits for it.

    ``vi`` holds the per-vCPU state and counters (rows ``VI_*``). Returns
    RUN_DONE; RUN_RING_FULL (``state[ST_VCPU]`` exited with
    KVM_EXIT_DIRTY_RING_FULL: the caller reaps and calls again, and the quantum
    resumes at ``state[ST_RESUME]``); or RUN_REFILL (before a quantum: a vCPU
    may lack variates). ``state[ST_DONE]`` = quanta completed by this call.
    """
    page_ns = 4096 * NS_PER_S
    nv = vi.shape[1]
    rate, carry, debt, maxn = vi[VI_RATE], vi[VI_CARRY], vi[VI_DEBT], vi[VI_MAXN]
    upos, ulen, qn, qf, seg_end = vi[VI_UPOS], vi[VI_ULEN], vi[VI_QN], vi[VI_QF], vi[VI_SEG_END]
    rout = state[ST_ROUT:]
    done = 0
    while done < nq:
        if state[ST_RESUME] < 0:
            for v in range(nv):
                if ulen[v] - upos[v] < maxn[v]:
                    state[ST_DONE] = done
                    return RUN_REFILL
            total = 0
            now = state[ST_NOW]
            for v in range(nv):
                run = quantum - debt[v] if debt[v] < quantum else 0
                debt[v] -= quantum - run
                active = vi[VI_START, v] <= now and now < vi[VI_STOP, v]
                if active and run and vi[VI_MMIO_RATE, v]:
                    mmio_exits(vi, v, now + quantum - run, run, bql)
                x = carry[v] + (rate[v] * run if active else 0)
                n = x // page_ns
                carry[v] = x - n * page_ns
                qn[v] = n
                kind, same = vi[VI_KIND, v], vf[VF_SAME_SHARE, v]
                roff, rn = vi[VI_RUNS_OFF, v], vi[VI_RUNS_N, v]
                for i in range(n):
                    u = ubuf[v, upos[v] + i]
                    if kind == KIND_HOTSET:
                        g = map_write(u, vi[VI_FIRST, v], vi[VI_PAGES, v], vi[VI_HOT_FIRST, v], vi[VI_HOT_PAGES, v],
                                      vf[VF_HOT_SHARE, v])
                    else:
                        g = other_page(u, v, vi, vf)
                    if rn:
                        k = g - vi[VI_FIRST, v]
                        g = runs[roff + k // DATA_RUN_PAGES] + k % DATA_RUN_PAGES
                    buf[total + i] = ~g if same > 0.0 and rewrites_same(u, same) else g
                upos[v] += n
                total += n
                seg_end[v] = total
                qf[v] = 0
            start = 0
        else:
            start = state[ST_RESUME]
            state[ST_RESUME] = -1
        if ring:
            rout[2] = 0
            exited = apply_writes_ring(buf, seg_end, start, gmap, slot_gpa, slot_pages, slot_ram, slot_logging,
                                       target, nonzero, stale, win, rings, dirty_index, reset_index, soft_limit, qf,
                                       rout)
            state[ST_UNASSIGNED] += rout[2]
            if exited:
                state[ST_DONE] = done
                state[ST_RESUME] = rout[1]
                state[ST_VCPU] = rout[0]
                return RUN_RING_FULL
        else:
            state[ST_UNASSIGNED] += apply_writes(buf, seg_end, gmap, slot_gpa, slot_pages, slot_ram, slot_logging,
                                                 target, nonzero, stale, win, qf)
        for v in range(nv):
            vi[VI_WRITES, v] += qn[v]
            if pml:
                fill = vi[VI_PML_FILL, v] + qf[v]
                exits = fill // PML_ENTRIES
                vi[VI_PML_FILL, v] = fill - exits * PML_ENTRIES
                vi[VI_PML_LOGGED, v] += qf[v]
                vi[VI_PML_EXITS, v] += exits
                vi[VI_PML_NS, v] += exits * pml_cost
                debt[v] += exits * pml_cost
            else:
                vi[VI_FAULTS, v] += qf[v]
                vi[VI_FAULT_NS, v] += qf[v] * fault_cost
                debt[v] += qf[v] * fault_cost
        done += 1
        state[ST_NOW] += quantum
    state[ST_DONE] = done
    return RUN_DONE


@jit
def run_backend(nq, rate_q, unit_div, carry, cursor, buf_slots, buf_first, unit_pages, used_first, queues, tbl_gpa,
                tbl_pages, gmap, nonzero, stale, win, log, logging):
    """Advance one vhost backend by ``nq`` quanta: each quantum's units (packets, read requests), then its used rings.

    A quantum carries ``rate_q`` byte-nanoseconds; every ``unit_div`` of them is one
    unit written into the next buffer slot, round-robin (``vu_queue_fill``); then
    each used ring written in the quantum is logged once (``vring_used_write``).
    ``carry`` and ``cursor`` are one-element state arrays. Returns pages written.
    """
    written = 0
    for _ in range(nq):
        x = carry[0] + rate_q
        n = x // unit_div
        carry[0] = x - n * unit_div
        if n == 0:
            continue
        for j in range(n):
            base = buf_first + ((cursor[0] + j) % buf_slots) * unit_pages
            for k in range(unit_pages):
                written += backend_write(base + k, tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging)
        cursor[0] = (cursor[0] + n) % buf_slots
        for j in range(min(queues, n)):
            written += backend_write(used_first + j, tbl_gpa, tbl_pages, gmap, nonzero, stale, win, log, logging)
    return written


# iterate_slices() results, and the rows of its ``io`` array
IT_DONE, IT_MORE, IT_PENDING, IT_PARTIAL, IT_STUCK = 0, 1, 2, 3, 4
IO_NOW, IO_PAGE, IO_DIRTY, IO_TRANSFERRED, IO_EXTRA, IO_GUEST_NEXT, IO_NREC = range(7)
# columns of its slice records
(REC_START, REC_END, REC_NORMAL, REC_ZERO, REC_BYTES, REC_RESENT, REC_UNCHANGED, REC_WRAPS, REC_PACKETS, REC_CPU,
 REC_CHANNEL, REC_COLS) = range(12)
MAX_WAIT_MS = 50  # ram_save_iterate


@jit
def iterate_slices(io, rec, horizon, t0_ms, link, cap, rl_start, rl_max, bmap, clear_bmap, bnonzero, bstale,
                   breceived, end, shift, zero_detect, sout, normal_bytes, zero_bytes, cv, mstate, t_cap, quantum,
                   fault_cost, pml, pml_cost, vi, vf, runs, ubuf, buf, state, bql, gmap, slot_gpa, slot_pages,
                   slot_ram, slot_logging, target, nonzero, stale, win):
    """``ram_save_iterate``'s loop of send slices over one RAMBlock, with the guest running between them.

    Each slice is exactly what ``PrecopyMigration.send_slice`` does: dirty pages
    in address order from ``io[IO_PAGE]`` (``send_pages``, wrapping at the end of
    the block) until ``cap`` bytes, ``t_cap`` ns of CPU or the window's budget
    (``migration_rate_exceeded``) are reached, multifd packets filled and, at a
    wrap, flushed (``sendcost.py``); then the thread waits out the slice (the
    slowest of wire and CPU, ``slice_ns``) while the vCPUs run (``run_vcpus`` up to the wake-up
    time, the quantum starting exactly then included iff it was already due when
    the thread went to sleep, as SimPy orders it). The loop ends as QEMU's does:
    budget exceeded, nothing sent, or more than MAX_WAIT (50 ms) since ``t0_ms``
    (IT_DONE). It returns to Python before anything it does not model: a chunk
    whose lazy clear is due (IT_PARTIAL: the slice in progress continues in
    Python), a wait that would reach ``horizon`` (the next event of another
    SimPy process) or need more variates (IT_PENDING: the slice is sent, Python
    waits), a full record table (IT_MORE), or a dirty count the bitmap cannot
    satisfy (IT_STUCK, a broken invariant). ``rec`` rows ``[0, io[IO_NREC])`` are
    completed slices; row ``io[IO_NREC]`` is the pending or partial one.
    """
    now, page, dirty, transferred = io[IO_NOW], io[IO_PAGE], io[IO_DIRTY], io[IO_TRANSFERRED]
    extra, g_next = io[IO_EXTRA], io[IO_GUEST_NEXT]
    maxn, upos, ulen = vi[VI_MAXN], vi[VI_UPOS], vi[VI_ULEN]
    nrec = 0
    status = IT_MORE
    while nrec < rec.shape[0] - 1:
        budget = rl_start + rl_max - transferred if rl_max > 0 else 1 << 62
        nbytes = normal = zero = resent = unchanged = wraps = packets = 0
        sent_since_wrap = 1
        st = SEND_BUDGET
        t_left = t_cap
        while dirty > 0 and nbytes < cap and nbytes <= budget and t_left > 0:
            st = send_pages(bmap, clear_bmap, bnonzero, bstale, breceived, page, end, budget - nbytes, cap - nbytes,
                            shift, True, zero_detect, extra, normal_bytes, zero_bytes, cv, t_left, sout)
            n = sout[1] + sout[2]
            if n:
                extra = 0
            normal += sout[1]
            zero += sout[2]
            nbytes += sout[3]
            resent += sout[4]
            unchanged += sout[5]
            dirty -= n
            page = sout[0]
            sent_since_wrap += n
            pk = queue_pages(cv, mstate, sout[1], sout[2])
            packets += pk
            nbytes += pk * cv[CV_PACKET_BYTES]
            t_left = t_cap - slice_ns(cv, link, 0, normal, zero, packets)
            if st == SEND_NEED_CLEAR:
                break
            if st == SEND_END_OF_BLOCK:
                if sent_since_wrap == 0:
                    status = IT_STUCK
                    break
                page = 0
                wraps += 1
                sent_since_wrap = 0
                pk = flush_and_sync(cv, mstate)  # find_dirty_block: the per-round multifd sync
                if pk:
                    packets += pk
                    nbytes += pk * cv[CV_PACKET_BYTES] + RAM_SAVE_FLAG_MULTIFD_FLUSH_BYTES
        r = rec[nrec]
        r[REC_START], r[REC_END], r[REC_NORMAL], r[REC_ZERO] = now, -1, normal, zero
        r[REC_BYTES], r[REC_RESENT], r[REC_UNCHANGED], r[REC_WRAPS] = nbytes, resent, unchanged, wraps
        r[REC_PACKETS], r[REC_CPU] = packets, main_ns(cv, normal, zero)
        r[REC_CHANNEL] = channel_ns(cv, normal, zero, packets)
        if status == IT_STUCK:
            break
        if st == SEND_NEED_CLEAR:
            status = IT_PARTIAL
            break
        t_end = now + slice_ns(cv, link, nbytes, normal, zero, packets)
        if t_end > now:  # a zero wait does not yield in SimPy: nobody else runs
            if t_end >= horizon:
                status = IT_PENDING
                break
            last = t_end if g_next == t_end else t_end - 1
            nq = (last - g_next) // quantum + 1 if g_next <= last else 0
            short = False
            for v in range(maxn.shape[0]):
                if ulen[v] - upos[v] < maxn[v] * nq:
                    short = True
            if short:
                status = IT_PENDING
                break
            if nq:
                state[ST_NOW] = g_next
                run_vcpus(nq, quantum, fault_cost, pml, pml_cost, vi, vf, runs, ubuf, buf, state, bql, gmap, slot_gpa,
                          slot_pages, slot_ram, slot_logging, target, nonzero, stale, win, False, vi[:1, :1],
                          vi[0, :1], vi[0, :1], 0)
                g_next += nq * quantum
        r[REC_END] = t_end
        nrec += 1
        now = t_end
        transferred += nbytes
        if normal + zero == 0 or now // 1_000_000 - t0_ms > MAX_WAIT_MS or (
                rl_max > 0 and transferred - rl_start > rl_max):
            status = IT_DONE
            break
    io[IO_NOW], io[IO_PAGE], io[IO_DIRTY], io[IO_TRANSFERRED] = now, page, dirty, transferred
    io[IO_EXTRA], io[IO_GUEST_NEXT], io[IO_NREC] = extra, g_next, nrec
    return status
