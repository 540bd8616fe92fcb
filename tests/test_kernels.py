"""Every numba kernel in ``dirty/kernels.py`` against its twin in ``dirty/reference.py``.

Property tests run kernel and reference on copies of the same random inputs and
compare the return value and the final state of every array argument. Explicit
examples pin the QEMU/KVM semantics the simulator relies on.

Bitmaps are uint64 words: page ``p`` is bit ``p & 63`` of word ``p >> 6``.
Array dtypes match what the simulator passes (uint64 bitmaps, including the
page oracle's, int64 tables and counters, bool logging flags, uint8 clear_bmap),
so the cached numba specialisations are the production ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dirtysim.dirty import kernels as K
from dirtysim.sim import warm_up_kernels
from dirtysim.dirty import reference as R
from dirtysim.dirty.sendcost import (CV_CHAN_NORMAL, CV_CHAN_ZERO, CV_CHANNELS, CV_MAIN_NORMAL, CV_MAIN_PAGE,
                                     CV_MAIN_ZERO, CV_ROWS)
from dirtysim.dirty.kernels import (
    NORMAL_PAGE_BYTES,
    SEND_BUDGET,
    SEND_END_OF_BLOCK,
    SEND_NEED_CLEAR,
    ZERO_PAGE_BYTES,
)

U64 = np.uint64
FREE = np.zeros(CV_ROWS, dtype=np.int64)  # no CPU cost per page: slices are wire time only
FREE[CV_CHANNELS] = 1
ALL_ONES = (1 << 64) - 1
MAX_WORDS = 40

# Property-test budget: sized so the whole file runs in well under 40 s on 2 cores.
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def wa(pages, nwords: int = 2) -> np.ndarray:
    """Word array of ``nwords`` words with the given pages set."""
    out = np.zeros(nwords, dtype=U64)
    for p in pages:
        out[p >> 6] |= U64(1) << U64(p & 63)
    return out


def pages_of(words_: np.ndarray) -> set[int]:
    return {int(p) for p in np.flatnonzero(R.bits(words_))}


def run_both(kernel, reference, *args):
    """Run kernel and reference on independent copies; return (k_ret, k_args, r_ret, r_args)."""
    k_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    r_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    return kernel(*k_args), k_args, reference(*r_args), r_args


def assert_same(k_ret, k_args, r_ret, r_args):
    """Equal return values and equal final state of every array argument."""
    if isinstance(k_ret, tuple) or isinstance(r_ret, tuple):
        assert tuple(int(x) for x in k_ret) == tuple(int(x) for x in r_ret)
    elif k_ret is None or r_ret is None:
        assert k_ret is None and r_ret is None
    else:
        assert int(k_ret) == int(r_ret)
    for i, (ka, ra) in enumerate(zip(k_args, r_args)):
        if isinstance(ka, np.ndarray):
            assert ka.dtype == ra.dtype, f"argument {i}: dtype {ka.dtype} != {ra.dtype}"
            np.testing.assert_array_equal(ka, ra, err_msg=f"argument {i} differs")


def check(kernel, reference, *args):
    assert_same(*run_both(kernel, reference, *args))


# --------------------------------------------------------------------------- strategies


WORD_KINDS = ("zero", "ones", "single", "sparse", "uniform", "dense")


def build_words(kinds: bytes, seed: int) -> np.ndarray:
    """One uint64 word per kind byte: all-zero, all-ones, single bit, sparse, uniform or dense.

    Hypothesis chooses the kind of every word (one ``binary`` draw shrinks to all-zero
    words); the bits inside random words come from a seeded generator, which keeps
    drawing cheap enough for hundreds of examples per second.
    """
    rng = np.random.default_rng(seed)
    r = rng.integers(0, ALL_ONES, size=(3, len(kinds)), dtype=U64, endpoint=True)
    out = np.zeros(len(kinds), dtype=U64)
    for i, k in enumerate(kinds):
        kind = WORD_KINDS[k % len(WORD_KINDS)]
        if kind == "ones":
            out[i] = ~U64(0)
        elif kind == "single":
            out[i] = U64(1) << (r[0, i] & U64(63))
        elif kind == "sparse":
            out[i] = r[0, i] & r[1, i] & r[2, i]
        elif kind == "uniform":
            out[i] = r[0, i]
        elif kind == "dense":
            out[i] = r[0, i] | r[1, i] | r[2, i]
    return out


def words_of(n: int):
    """Strategy for an array of n uint64 words of mixed densities."""
    return st.builds(build_words, st.binary(min_size=n, max_size=n), st.integers(0, 2**32 - 1))


nwords = st.integers(1, MAX_WORDS)


@st.composite
def word_range(draw, n: int) -> tuple[int, int]:
    """[w0, w1) within n words (possibly empty, possibly the whole array)."""
    w0 = draw(st.integers(0, n))
    w1 = draw(st.integers(w0, n))
    return w0, w1


@st.composite
def two_bitmaps_and_range(draw):
    n = draw(nwords)
    a, b = draw(words_of(n)), draw(words_of(n))
    w0, w1 = draw(word_range(n))
    return a, b, w0, w1


# --------------------------------------------------------------------------- warm-up

warm_up_kernels()  # compile (or load from numba's cache) every kernel with the dtypes the simulator uses


# --------------------------------------------------------------------------- bitmap kernels


@pytest.mark.parametrize("name", ["sync_xchg", "or_into", "xchg_into", "clear_by_mask", "clear_all"])
@FAST
@given(case=two_bitmaps_and_range())
def test_two_bitmap_kernels_match_reference(name, case):
    """Kernels of the form f(a, b, w0, w1) over two word arrays."""
    check(getattr(K, name), getattr(R, name), *case)


@FAST
@given(st.data())
def test_count_set_matches_reference(data):
    n = data.draw(nwords)
    bmap = data.draw(words_of(n))
    w0, w1 = data.draw(word_range(n))
    check(K.count_set, R.count_set, bmap, w0, w1)


@FAST
@given(st.data())
def test_count_nonzero_words_matches_reference(data):
    n = data.draw(nwords)
    bmap = data.draw(words_of(n))
    w0, w1 = data.draw(word_range(n))
    check(K.count_nonzero_words, R.count_nonzero_words, bmap, w0, w1)


@FAST
@given(st.data())
def test_find_next_bit_matches_reference(data):
    n = data.draw(nwords)
    bmap = data.draw(words_of(n))
    end = data.draw(st.integers(0, n * 64))
    # page usually in [0, end], sometimes past end (must return end)
    page = data.draw(st.one_of(st.integers(0, end), st.integers(0, n * 64)))
    k_ret, k_args, r_ret, r_args = run_both(K.find_next_bit, R.find_next_bit, bmap, page, end)
    assert_same(k_ret, k_args, r_ret, r_args)
    dirty = pages_of(bmap)
    expected = next((p for p in range(page, end) if p in dirty), end)
    assert int(k_ret) == expected


# --------------------------------------------------------------------------- apply_writes


@st.composite
def apply_writes_case(draw):
    n = draw(nwords)
    ram_pages = n * 64
    # 1..3 non-overlapping GPA slots, each backed by some RAM range (ram_addr pages)
    nslots = draw(st.integers(1, 3))
    gpa, slots = draw(st.integers(0, 50)), []
    for _ in range(nslots):
        pages = draw(st.integers(1, min(ram_pages, 150)))
        ram = draw(st.integers(0, ram_pages - pages))
        slots.append((gpa, pages, ram, draw(st.booleans())))
        gpa += pages + draw(st.integers(0, 40))  # gap: writes there hit no slot
    slots = draw(st.permutations(slots))
    gpa_end = gpa + 40
    # writes: mostly inside slots, some anywhere (possibly unassigned), repeats likely
    inside = st.sampled_from(slots).flatmap(lambda s: st.integers(s[0], s[0] + s[1] - 1))
    writes = draw(st.lists(st.one_of(inside, inside, st.integers(0, gpa_end)), max_size=150))
    # some writes store identical bytes (encoded ~page, as run_vcpus records them)
    writes = [~g if same else g for g, same in zip(writes, draw(st.lists(st.booleans(), min_size=len(writes),
                                                                          max_size=len(writes))))]
    nvcpu = draw(st.integers(1, 4))
    cuts = sorted(draw(st.lists(st.integers(0, len(writes)), min_size=nvcpu - 1, max_size=nvcpu - 1)))
    seg_end = np.array(cuts + [len(writes)], dtype=np.int64)
    kvm_dirty = draw(words_of(n))
    nonzero, stale = draw(words_of(n)), draw(words_of(n))
    win = np.stack([draw(words_of(n)), draw(words_of(n))]) if draw(st.booleans()) else np.zeros((2, 0), dtype=U64)
    faults = np.array(draw(st.lists(st.integers(0, 5), min_size=nvcpu, max_size=nvcpu)), dtype=np.int64)
    # the oracle's own map of guest RAM: the same runs as the memslots (a correct map), or a shifted copy
    shift = draw(st.sampled_from([0, 0, 1, 7]))
    gmap = np.array([[s[0] for s in slots], [s[1] for s in slots],
                     [min(s[2] + shift, ram_pages - s[1]) for s in slots]], dtype=np.int64)
    return (
        np.array(writes, dtype=np.int64),
        seg_end,
        gmap,
        np.array([s[0] for s in slots], dtype=np.int64),
        np.array([s[1] for s in slots], dtype=np.int64),
        np.array([s[2] for s in slots], dtype=np.int64),
        np.array([s[3] for s in slots], dtype=np.bool_),
        kvm_dirty,
        nonzero,
        stale,
        win,
        faults,
    )


@SLOW
@given(apply_writes_case())
def test_apply_writes_matches_reference(case):
    check(K.apply_writes, R.apply_writes, *case)


def test_apply_writes_example():
    # slot 0: gpa [10, 20) -> ram [0, 10), logging; slot 1: gpa [100, 110) -> ram [64, 74), no logging
    slot_gpa = np.array([10, 100], dtype=np.int64)
    slot_pages = np.array([10, 10], dtype=np.int64)
    slot_ram = np.array([0, 64], dtype=np.int64)
    slot_logging = np.array([True, False])
    # vCPU 0 writes gpa 10, 10, 11, 50 (unassigned); vCPU 1 writes gpa 12 (already dirty), 100
    gpa_pages = np.array([10, 10, 11, 50, 12, 100], dtype=np.int64)
    seg_end = np.array([4, 6], dtype=np.int64)
    kvm = wa([2])
    nonzero, stale = wa([5]), wa([])
    faults = np.zeros(2, dtype=np.int64)
    gmap = np.stack([slot_gpa, slot_pages, slot_ram])
    closed = np.zeros((2, 0), dtype=U64)
    args = (gpa_pages, seg_end, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, kvm, nonzero, stale, closed, faults)
    k_ret, k_args, r_ret, r_args = run_both(K.apply_writes, R.apply_writes, *args)
    k_kvm, k_nonzero, k_stale, _, k_faults = k_args[7:]
    assert int(k_ret) == 1
    assert pages_of(k_kvm) == {0, 1, 2}  # no KVM bit for the non-logging slot
    assert pages_of(k_nonzero) == {0, 1, 2, 5, 64}  # every written RAM page holds data now
    assert pages_of(k_stale) == {0, 1, 2, 64}  # and the destination's copy of it is out of date
    assert k_faults.tolist() == [2, 0]  # first write to a protected page faults, the rest do not
    assert_same(k_ret, k_args, r_ret, r_args)


def test_a_write_of_identical_bytes_is_logged_but_changes_no_content():
    """KVM cannot tell identical bytes from new ones (the bit is set, the fault taken); the page's content,
    and so the destination's copy, stays as it was. The open window records the write, not a change."""
    slot = (np.array([0], dtype=np.int64), np.array([64], dtype=np.int64), np.array([0], dtype=np.int64),
            np.array([True]))
    gmap = np.stack(slot[:3])
    nonzero, stale, kvm = wa([]), wa([]), wa([])
    win = np.zeros((2, 2), dtype=U64)
    faults = np.zeros(1, dtype=np.int64)
    writes = np.array([~3, 4, ~4], dtype=np.int64)  # page 3 rewritten with its bytes; page 4 new data, then again
    k_ret, k_args, r_ret, r_args = run_both(K.apply_writes, R.apply_writes, writes, np.array([3], dtype=np.int64),
                                            gmap, *slot, kvm, nonzero, stale, win, faults)
    assert_same(k_ret, k_args, r_ret, r_args)
    k_kvm, k_nonzero, k_stale, k_win, k_faults = k_args[7:]
    assert pages_of(k_kvm) == {3, 4} and int(k_faults[0]) == 2
    assert pages_of(k_nonzero) == pages_of(k_stale) == {4}
    assert pages_of(k_win[K.WIN_WRITTEN]) == {3, 4} and pages_of(k_win[K.WIN_MODIFIED]) == {4}


@pytest.mark.parametrize("share", [0.0, 0.25, 0.9])
def test_rewrites_same_draws_the_share_it_is_given(share):
    u = np.random.default_rng(7).random(20_000)
    hits = sum(K.rewrites_same(x, share) for x in u)
    sd = (len(u) * share * (1 - share)) ** 0.5
    assert abs(hits - len(u) * share) <= 4 * sd


# --------------------------------------------------------------------------- send_pages


@st.composite
def send_pages_case(draw):
    n = draw(nwords)
    npages = n * 64
    bmap = draw(words_of(n))
    shift = draw(st.integers(6, 8))
    nchunks = -(-npages // (1 << shift))
    # one flag byte per chunk: mostly 0, else 1 or another non-zero value
    flags = draw(st.binary(min_size=nchunks, max_size=nchunks))
    clear_bmap = np.array([(0, 0, 1, 255)[b % 4] for b in flags], dtype=np.uint8)
    nonzero, stale, received = draw(words_of(n)), draw(words_of(n)), draw(words_of(n))
    end = draw(st.one_of(st.just(npages), st.integers(0, npages)))
    page = draw(st.one_of(st.just(0), st.integers(0, end)))
    small = st.integers(0, 3 * NORMAL_PAGE_BYTES)
    budget = draw(st.one_of(small, st.integers(0, 1 << 40)))
    cap = draw(st.one_of(st.integers(1, 3 * NORMAL_PAGE_BYTES), st.integers(1, 1 << 40)))
    lazy_clear = draw(st.booleans())
    zero_detect = draw(st.booleans())
    first_extra = draw(st.sampled_from([0, 8]))
    normal_bytes, zero_bytes = draw(st.sampled_from([(NORMAL_PAGE_BYTES, ZERO_PAGE_BYTES), (4096, 0), (1862, 9)]))
    cv = np.zeros(CV_ROWS, dtype=np.int64)
    costs = st.integers(0, 3000)
    cv[[CV_MAIN_PAGE, CV_MAIN_ZERO, CV_MAIN_NORMAL, CV_CHAN_ZERO, CV_CHAN_NORMAL]] = [draw(costs) for _ in range(5)]
    cv[CV_CHANNELS] = draw(st.integers(1, 4))
    t_cap = draw(st.one_of(st.integers(1, 20_000), st.just(1 << 62)))
    out = np.full(6, -7, dtype=np.int64)
    return (bmap, clear_bmap, nonzero, stale, received, page, end, budget, cap, shift, lazy_clear, zero_detect,
            first_extra, normal_bytes, zero_bytes, cv, t_cap, out)


@SLOW
@given(send_pages_case())
def test_send_pages_matches_reference(case):
    k_ret, k_args, r_ret, r_args = run_both(K.send_pages, R.send_pages, *case)
    assert_same(k_ret, k_args, r_ret, r_args)

    # Invariants of the kernel's own result (independent of the reference).
    bmap0, clear_bmap, nonzero, stale0, received0 = case[:5]
    page0, end, budget, cap, shift, lazy_clear, zero_detect, first_extra = case[5:13]
    normal_bytes, zero_bytes, cv, t_cap = case[13:17]
    bmap1, stale1, received1, out = k_args[0], k_args[3], k_args[4], k_args[17]
    nxt, normal, zero, nbytes, resent, unchanged = (int(x) for x in out)
    sent = sorted(pages_of(bmap0) - pages_of(bmap1))
    assert resent == len(set(sent) & pages_of(received0))
    assert unchanged == len(set(sent) & (pages_of(received0) - pages_of(stale0)))
    assert zero == (len(set(sent) - pages_of(nonzero)) if zero_detect else 0)
    assert len(sent) == normal + zero
    assert all(page0 <= p < nxt <= end for p in sent)
    assert pages_of(bmap1) <= pages_of(bmap0)
    # the destination now holds every sent page; nothing else changed
    assert pages_of(stale1) == pages_of(stale0) - set(sent)
    assert pages_of(received1) == pages_of(received0) | set(sent)
    # bytes: zero / normal records plus the block header on the first page only
    assert nbytes == zero * zero_bytes + normal * normal_bytes + (first_extra if sent else 0)
    thread = lambda n, z: (n + z) * cv[CV_MAIN_PAGE] + z * cv[CV_MAIN_ZERO] + n * cv[CV_MAIN_NORMAL]  # noqa: E731
    senders = lambda n, z: (z * cv[CV_CHAN_ZERO] + n * cv[CV_CHAN_NORMAL]) // cv[CV_CHANNELS]  # noqa: E731
    # pages are sent in address order with no dirty page skipped in [page0, nxt)
    assert all(p in sent for p in pages_of(bmap0) if page0 <= p < nxt)
    if sent:
        last_zero = zero_detect and sent[-1] not in pages_of(nonzero)
        last_cost = (zero_bytes if last_zero else normal_bytes) + (first_extra if len(sent) == 1 else 0)
        before_last = nbytes - last_cost
        assert before_last <= budget and before_last < cap  # overshoot by at most one page
        n1, z1 = normal - (not last_zero), zero - last_zero  # and in CPU time: the page before last was in time
        assert thread(n1, z1) < t_cap and senders(n1, z1) < t_cap
    if k_ret == SEND_END_OF_BLOCK:
        assert nxt == end and not any(page0 <= p < end for p in pages_of(bmap1))
    elif k_ret == SEND_BUDGET:
        assert nbytes > budget or nbytes >= cap or thread(normal, zero) >= t_cap or senders(normal, zero) >= t_cap
        assert nxt in pages_of(bmap1)
    else:
        assert k_ret == SEND_NEED_CLEAR and lazy_clear
        assert nxt in pages_of(bmap1) and clear_bmap[nxt >> shift]


def _send(bmap, clear_bmap, nonzero, page, end, budget, cap, shift, lazy_clear, zero_detect, first_extra):
    """Run the kernel and the reference on a never-sent block; return (status, bmap, received pages, out[:4])."""
    stale, received = ~np.zeros_like(nonzero), np.zeros_like(nonzero)
    out = np.zeros(6, dtype=np.int64)
    args = (bmap, clear_bmap, nonzero, stale, received, page, end, budget, cap, shift, lazy_clear, zero_detect,
            first_extra, NORMAL_PAGE_BYTES, ZERO_PAGE_BYTES, FREE, 1 << 62, out)
    k_ret, k_args, r_ret, r_args = run_both(K.send_pages, R.send_pages, *args)
    assert_same(k_ret, k_args, r_ret, r_args)
    assert pages_of(k_args[3]) == pages_of(stale) - pages_of(k_args[4])  # received pages are up to date
    return int(k_ret), k_args[0], pages_of(k_args[4]), [int(x) for x in k_args[17][:4]]


@pytest.mark.parametrize("page0", [0, 10])
def test_send_pages_stops_for_clear_before_first_dirty_page_of_chunk(page0):
    # shift 6: chunk c = pages [64c, 64c + 64). Dirty: 20 (chunk 0), 70 and 80 (chunk 1, flagged).
    bmap = wa([20, 70, 80], 3)
    clear_bmap = np.array([0, 1, 0], dtype=np.uint8)
    data = ~np.zeros(3, dtype=U64)
    big = 1 << 40
    status, bmap1, received, out = _send(bmap, clear_bmap, data, page0, 192, big, big, 6, True, True, 0)
    assert status == SEND_NEED_CLEAR
    assert out == [70, 1, 0, NORMAL_PAGE_BYTES]  # stops at page 70 itself, not at the chunk start (64)
    assert pages_of(bmap1) == {70, 80}  # 70 not sent: still dirty
    assert received == {20}

    # Once the chunk is cleared the caller resumes from out[0]. ...
    status, bmap2, _, out = _send(bmap1, np.zeros(3, dtype=np.uint8), data, 70, 192, big, big, 6, True, True,
                                  0)
    assert status == SEND_END_OF_BLOCK and out == [192, 2, 0, 2 * NORMAL_PAGE_BYTES]
    assert pages_of(bmap2) == set()

    # ... and in the last stage (lazy_clear False) the flag is ignored and the page is sent.
    status, bmap3, received, out = _send(bmap, clear_bmap, data, page0, 192, big, big, 6, False, True, 0)
    assert status == SEND_END_OF_BLOCK
    assert out == [192, 3, 0, 3 * NORMAL_PAGE_BYTES]
    assert pages_of(bmap3) == set() and received == {20, 70, 80}


def test_send_pages_need_clear_on_first_page_sends_nothing():
    bmap = wa([3], 1)
    status, bmap1, received, out = _send(bmap, np.array([1], dtype=np.uint8), ~np.zeros(1, dtype=U64),
                                         0, 64, 1 << 40, 1 << 40, 8, True, True, 8)
    assert status == SEND_NEED_CLEAR and out == [3, 0, 0, 0]
    assert pages_of(bmap1) == {3} and not received


def test_send_pages_overshoots_budget_by_at_most_one_page():
    bmap = wa(range(10), 1)
    src_gen = ~np.zeros(1, dtype=U64)  # no zero pages
    no_clear = np.zeros(1, dtype=np.uint8)
    # budget 10000: after 2 pages 8216 <= budget, so a 3rd goes out (12320 > budget), then stop.
    status, bmap1, _, out = _send(bmap, no_clear, src_gen, 0, 64, 10_000, 1 << 40, 6, True, True, 8)
    assert status == SEND_BUDGET
    assert out == [3, 3, 0, 3 * NORMAL_PAGE_BYTES + 8]
    assert out[3] > 10_000 and out[3] - NORMAL_PAGE_BYTES <= 10_000
    assert pages_of(bmap1) == set(range(3, 10))
    # budget exactly reached is not exceeded: one more page goes out.
    status, _, _, out = _send(bmap, no_clear, src_gen, 0, 64, 2 * NORMAL_PAGE_BYTES + 8, 1 << 40, 6, True, True, 8)
    assert status == SEND_BUDGET and out[:2] == [3, 3]
    # budget 0: the first page is always sent
    status, _, _, out = _send(bmap, no_clear, src_gen, 0, 64, 0, 1 << 40, 6, True, True, 0)
    assert status == SEND_BUDGET and out == [1, 1, 0, NORMAL_PAGE_BYTES]
    # cap stops at >= cap (a send slice), not > cap
    status, _, _, out = _send(bmap, no_clear, src_gen, 0, 64, 1 << 40, 2 * NORMAL_PAGE_BYTES, 6, True, True, 0)
    assert status == SEND_BUDGET and out == [2, 2, 0, 2 * NORMAL_PAGE_BYTES]


def test_send_pages_byte_costs():
    bmap = wa([0, 1, 2, 5], 1)
    src_gen = ~wa([0, 2], 1)  # pages 0 and 2 are zero pages
    no_clear = np.zeros(1, dtype=np.uint8)
    big = 1 << 40
    assert ZERO_PAGE_BYTES == 9 and NORMAL_PAGE_BYTES == 4104
    status, _, received, out = _send(bmap, no_clear, src_gen, 0, 64, big, big, 6, True, True, 8)
    assert status == SEND_END_OF_BLOCK
    # first page (zero) carries first_extra; later pages do not
    assert out == [64, 2, 2, (9 + 8) + 4104 + 9 + 4104]
    assert received == {0, 1, 2, 5}
    # first page normal: extra goes on it
    status, _, _, out = _send(bmap, no_clear, src_gen, 1, 64, big, big, 6, True, True, 8)
    assert out == [64, 2, 1, (4104 + 8) + 9 + 4104]
    # without zero detection every page is a normal page
    status, _, _, out = _send(bmap, no_clear, src_gen, 0, 64, big, big, 6, True, False, 0)
    assert out == [64, 4, 0, 4 * 4104]
    # nothing dirty: no bytes at all, not even first_extra
    status, _, _, out = _send(wa([], 1), no_clear, src_gen, 0, 64, big, big, 6, True, True, 8)
    assert status == SEND_END_OF_BLOCK and out == [64, 0, 0, 0]


def test_send_pages_end_not_word_aligned():
    # a block of 100 pages in 2 words whose tail bits (100..127) are set, as after bitmap_set
    bmap = np.full(2, ~U64(0), dtype=U64)
    status, bmap1, _, out = _send(bmap, np.zeros(1, dtype=np.uint8), ~np.zeros(2, dtype=U64), 90, 100,
                                  1 << 40, 1 << 40, 8, True, True, 0)
    assert status == SEND_END_OF_BLOCK and out == [100, 10, 0, 10 * NORMAL_PAGE_BYTES]
    assert pages_of(bmap1) == set(range(90)) | set(range(100, 128))


# --------------------------------------------------------------------------- count_stale


@st.composite
def count_stale_case(draw):
    n = draw(nwords)
    stale = draw(words_of(n))
    rows = draw(st.integers(1, 3))
    tracked = np.stack([draw(words_of(n)) for _ in range(rows)])
    w0, w1 = draw(word_range(n))
    return stale, tracked, w0, w1


@FAST
@given(count_stale_case())
def test_count_stale_matches_reference(case):
    check(K.count_stale, R.count_stale, *case)


def test_count_stale_example():
    stale = wa([1, 2], 1)  # pages 1 and 2 out of date at the destination
    tracked = np.stack([wa([1], 1), wa([5], 1)])  # page 1 remembered by a dirty layer, page 2 lost
    k_ret, k_args, r_ret, r_args = run_both(K.count_stale, R.count_stale, stale, tracked, 0, 1)
    assert tuple(int(x) for x in k_ret) == (2, 1)
    assert_same(k_ret, k_args, r_ret, r_args)


# --------------------------------------------------------------------------- pinned bitmap semantics


def test_sync_xchg_counts_only_new_bits():
    src, dst = wa([1, 2, 3]), wa([2])
    k_ret, (k_src, k_dst, *_), r_ret, r_args = run_both(K.sync_xchg, R.sync_xchg, src, dst, 0, 2)
    assert int(k_ret) == 2  # 2 was already dirty in the RAMBlock bitmap
    assert pages_of(k_dst) == {1, 2, 3}
    assert not k_src.any()
    assert_same(k_ret, [k_src, k_dst], r_ret, r_args)


def test_sync_xchg_respects_word_range():
    src, dst = wa([1, 64 + 1, 128 + 1], 3), wa([], 3)
    k_ret, (k_src, k_dst, *_), r_ret, r_args = run_both(K.sync_xchg, R.sync_xchg, src, dst, 1, 2)
    assert int(k_ret) == 1 and pages_of(k_src) == {1, 129} and pages_of(k_dst) == {65}
    assert_same(k_ret, [k_src, k_dst], r_ret, r_args)


def test_clear_by_mask_clears_only_masked_bits():
    kvm, mask = wa([0, 5, 9]), wa([0, 5, 7])
    k_ret, (k_kvm, k_mask, *_), r_ret, r_args = run_both(K.clear_by_mask, R.clear_by_mask, kvm, mask, 0, 2)
    assert int(k_ret) == 2  # pages 0 and 5 re-protected; 7 was not dirty in KVM, 9 was not fetched
    assert pages_of(k_kvm) == {9}
    assert not k_mask.any()
    assert_same(k_ret, [k_kvm, k_mask], r_ret, r_args)


def test_xchg_into_moves_and_counts():
    src, dst = wa([0, 63, 64]), wa([5, 70])
    k_ret, (k_src, k_dst, *_), r_ret, r_args = run_both(K.xchg_into, R.xchg_into, src, dst, 0, 2)
    assert int(k_ret) == 3 and pages_of(k_dst) == {0, 63, 64} and not k_src.any()  # dst overwritten, not OR-ed
    assert_same(k_ret, [k_src, k_dst], r_ret, r_args)


def test_or_into_and_count_set():
    dst, src = wa([1]), wa([2, 100])
    K.or_into(dst, src, 0, 2)
    assert pages_of(dst) == {1, 2, 100} and pages_of(src) == {2, 100}
    assert int(K.count_set(dst, 0, 2)) == 3 and int(K.count_set(dst, 1, 2)) == 1
    full = np.full(3, ~U64(0), dtype=U64)
    assert int(K.count_set(full, 0, 3)) == 192 == R.count_set(full, 0, 3)


def test_find_next_bit_examples():
    b = wa([3, 64, 127], 2)
    assert [int(K.find_next_bit(b, p, 128)) for p in (0, 3, 4, 64, 65, 127)] == [3, 3, 64, 64, 127, 127]
    assert int(K.find_next_bit(b, 4, 64)) == 64  # end not found -> end
    assert int(K.find_next_bit(b, 4, 50)) == 50
    assert int(K.find_next_bit(b, 100, 100)) == 100
    assert int(K.find_next_bit(wa([], 2), 0, 128)) == 128


@st.composite
def map_writes_cases(draw):
    """1..3 vCPUs, each a working set with an optional hot region inside it, and variates in [0, 1)."""
    nv = draw(st.integers(1, 3))
    first, pages, hot_first, hot_pages, share, seg_end = [], [], [], [], [], []
    total = 0
    for _ in range(nv):
        f, p = draw(st.integers(0, 1000)), draw(st.integers(1, 200))
        hp = draw(st.integers(0, p))
        hf = f + draw(st.integers(0, p - hp))
        first.append(f), pages.append(p), hot_first.append(hf), hot_pages.append(hp)
        share.append(0.0 if hp == 0 else (1.0 if hp == p else draw(st.floats(0.0, 1.0, exclude_max=True))))
        total += draw(st.integers(0, 50))
        seg_end.append(total)
    u = np.array(draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=total, max_size=total)))
    i64 = lambda xs: np.array(xs, dtype=np.int64)  # noqa: E731
    return u, i64(seg_end), i64(first), i64(pages), i64(hot_first), i64(hot_pages), np.array(share)


@settings(max_examples=300, deadline=None)
@given(map_writes_cases())
def test_map_writes_matches_reference(case):
    u, seg_end, first, pages, hot_first, hot_pages, share = case
    fast, slow = np.zeros(len(u), dtype=np.int64), np.zeros(len(u), dtype=np.int64)
    K.map_writes(u, seg_end, first, pages, hot_first, hot_pages, share, fast)
    R.map_writes(u, seg_end, first, pages, hot_first, hot_pages, share, slow)
    assert (fast == slow).all()
    start = 0
    for v, stop in enumerate(seg_end):  # every write lands in its vCPU's working set
        assert ((fast[start:stop] >= first[v]) & (fast[start:stop] < first[v] + pages[v])).all()
        start = stop


# --------------------------------------------------------------------------- tracking-lab kernels


@st.composite
def ring_case(draw):
    """apply_writes' inputs plus per-vCPU rings (small, possibly partly full) and a resume index."""
    (writes, seg_end, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, protected, nonzero, stale, win,
     faults) = draw(apply_writes_case())
    nvcpu = seg_end.shape[0]
    size = draw(st.sampled_from([8, 16, 64]))
    soft_limit = draw(st.integers(1, size))
    reset = np.array(draw(st.lists(st.integers(0, 50), min_size=nvcpu, max_size=nvcpu)), dtype=np.int64)
    dirty = reset + np.array(draw(st.lists(st.integers(0, soft_limit - 1), min_size=nvcpu, max_size=nvcpu)),
                             dtype=np.int64)
    ram_pages = protected.shape[0] * 64
    rings = np.array(draw(st.lists(st.integers(0, ram_pages - 1), min_size=nvcpu * size, max_size=nvcpu * size)),
                     dtype=np.int64).reshape(nvcpu, size)
    start = draw(st.integers(0, len(writes)))
    out = np.zeros(3, dtype=np.int64)
    return (writes, seg_end, start, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, protected, nonzero, stale,
            win, rings, dirty, reset, soft_limit, faults, out)


@SLOW
@given(ring_case())
def test_apply_writes_ring_matches_reference(case):
    k_ret, k_args, r_ret, r_args = run_both(K.apply_writes_ring, R.apply_writes_ring, *case)
    assert_same(k_ret, k_args, r_ret, r_args)
    dirty, reset, soft_limit = k_args[13], k_args[14], case[15]
    if int(k_ret) == 1:  # stopped because a vCPU's ring reached the soft limit, right after its push
        v = int(k_args[17][0])
        assert dirty[v] - reset[v] == soft_limit
    else:
        assert (dirty - reset < soft_limit).all()


@SLOW
@given(ring_case())
def test_reap_rings_matches_reference(case):
    rings, dirty, reset = case[12], case[13], case[14]
    protected = case[8]
    dirty_bmap = np.zeros_like(protected)
    reaped = np.zeros(rings.shape[0], dtype=np.int64)
    k_ret, k_args, r_ret, r_args = run_both(K.reap_rings, R.reap_rings, rings, dirty, reset, dirty_bmap, protected,
                                            reaped)
    assert_same(k_ret, k_args, r_ret, r_args)
    assert (k_args[2] == k_args[1]).all() and int(k_ret) == int((dirty - reset).sum())
    entries = {int(rings[v, k % rings.shape[1]]) for v in range(rings.shape[0]) for k in range(reset[v], dirty[v])}
    assert pages_of(k_args[3]) == entries and entries <= pages_of(k_args[4])  # collected and re-protected
    marked = np.zeros_like(protected)
    check(K.mark_ring_entries, R.mark_ring_entries, rings, dirty, reset, marked)


@SLOW
@given(apply_writes_case(), st.booleans())
def test_backend_writes_matches_reference(case, logging):
    writes, _, gmap, slot_gpa, slot_pages, _, _, _, nonzero, stale, win, _ = case
    writes = np.where(writes < 0, ~writes, writes)  # devices write new data
    log = np.zeros(-(-(int(writes.max(initial=0)) + 1) // 64), dtype=U64)
    check(K.backend_writes, R.backend_writes, writes, slot_gpa, slot_pages, gmap, nonzero, stale, win, log, logging)


@FAST
@given(two_bitmaps_and_range(), st.booleans(), st.integers(0, 5))
def test_harvest_log_matches_reference(case, exchange, shift):
    log, dst, w0, w1 = case
    dst = np.concatenate([dst, np.zeros(shift, dtype=U64)])
    seen = np.zeros(w1 - w0, dtype=U64)
    k_ret, k_args, r_ret, r_args = run_both(K.harvest_log, R.harvest_log, log, dst, w0, w1, shift, exchange, seen)
    assert_same(k_ret, k_args, r_ret, r_args)
    if exchange:
        assert not k_args[0][w0:w1].any()  # taken by exchange: nothing left behind
    else:
        np.testing.assert_array_equal(k_args[6], log[w0:w1])  # the words read, for the later store of 0
        np.testing.assert_array_equal(k_args[0], log)  # a plain read leaves the log as it was
