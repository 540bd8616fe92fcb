"""XBZRLE sending side (``migration/xbzrle.py``) against QEMU's rules and its byte-level twin.

``xbzrle_reference.py`` keeps real page copies and encodes real bytes; the
kernel counts changed bytes. Property tests drive both with the same guest
writes; explicit examples pin the page-cache and counter rules of
``page_cache.c`` and ``ram.c``.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dirtysim.dirty.kernels import NORMAL_PAGE_BYTES, PAGE_SIZE, ZERO_PAGE_BYTES
from dirtysim.migration import xbzrle as X
from dirtysim.migration import xbzrle_reference as R

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDSTR = 1 + len("pc.ram")  # save_page_header after a block change


def run(offset: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random page and a copy whose bytes [offset, offset + length) all differ."""
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, PAGE_SIZE, dtype=np.uint8)
    new = old.copy()
    new[offset:offset + length] ^= rng.integers(1, 256, length, dtype=np.uint8)
    return old, new


def send(cache: X.XbzrleCache, pages, *, age, zero=(), changed=None, offsets=None, last_stage=False,
         first_extra=0) -> X.SendResult:
    """Send ``pages``; ``changed``: {page: bytes} for the written ones, ``zero``: zero pages."""
    changed = changed or {}
    return cache.send(np.array(pages, dtype=np.int64), np.array([p in zero for p in pages], dtype=bool),
                      np.array([p in changed for p in pages], dtype=bool),
                      np.array([changed.get(p, 0) for p in pages], dtype=np.int64), age=age,
                      last_stage=last_stage, offsets=offsets, first_extra=first_extra)


def entries(cache: X.XbzrleCache) -> dict[int, int]:
    """{page: age} of the filled slots."""
    return {int(t): int(a) for t, a in zip(cache.tags, cache.ages) if t >= 0}


# --------------------------------------------------------------------------- the encoding


def test_reference_encoder_writes_qemus_format():
    """zrun, nzrun, the bytes; ULEB128 lengths; the last zero run left out; 0 bytes when unchanged."""
    old = np.zeros(PAGE_SIZE, dtype=np.uint8)
    new = old.copy()
    new[5:8] = [1, 2, 3]
    assert R.encode(old, new) == bytes([5, 3, 1, 2, 3])
    new[200] = 9
    assert R.encode(old, new) == bytes([5, 3, 1, 2, 3]) + R.uleb128(200 - 8) + bytes([1, 9])
    assert R.uleb128(200 - 8) == bytes([0xC0, 0x01])
    assert R.encode(old, old) == b""


@SETTINGS
@given(st.integers(0, PAGE_SIZE).flatmap(lambda c: st.tuples(st.just(c), st.integers(0, PAGE_SIZE - c))),
       st.integers(0, 2**32 - 1))
def test_encoded_len_is_what_the_encoder_writes(run_, seed):
    length, offset = run_
    old, new = run(offset, length, seed)
    enc = R.encode(old, new)
    assert X.encoded_len(length, offset) == (-1 if enc is None else len(enc)) <= PAGE_SIZE
    if enc is not None:
        assert np.array_equal(R.decode(enc, old), new)


@pytest.mark.parametrize("length, offset, expected", [
    (0, 0, 0),  # nothing changed: skipped
    (100, 0, 1 + 1 + 100),
    (128, 127, 1 + 2 + 128),
    (4091, 0, 1 + 2 + 4091),  # 4094 + 2 more for the trailing zero run: just fits
    (4092, 0, -1),  # 4095 fits, but the check for two more bytes comes before the trailing run is skipped
    (4093, 3, 4096),  # runs to the page end: no trailing run, exactly dlen
    (4094, 2, -1),
    (PAGE_SIZE, 0, -1),  # the default write (a whole page) always overflows
])
def test_encoded_len_boundaries(length, offset, expected):
    assert X.encoded_len(length, offset) == expected
    old, new = run(offset, length)
    enc = R.encode(old, new)
    assert expected == (-1 if enc is None else len(enc))


def test_an_encoded_page_never_exceeds_a_page_plus_its_record():
    """dlen is TARGET_PAGE_SIZE: an XBZRLE record can be 3 bytes longer than a normal page, never more."""
    worst = max(X.encoded_len(c, o) for c in range(PAGE_SIZE - 16, PAGE_SIZE + 1) for o in range(PAGE_SIZE - c + 1))
    assert worst == PAGE_SIZE
    cache = X.XbzrleCache(PAGE_SIZE, 1)
    send(cache, [0], age=1)
    res = send(cache, [0], age=2, changed={0: 4093}, offsets=np.array([3]))
    assert res.codes.tolist() == [X.XBZRLE_SENT]
    assert res.wire.tolist() == [8 + 3 + PAGE_SIZE] and res.wire[0] == NORMAL_PAGE_BYTES + 3


# --------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("size", [0, 1, PAGE_SIZE - 1, 3 * PAGE_SIZE, (64 << 20) + PAGE_SIZE])
def test_cache_size_is_a_power_of_two_of_at_least_a_page(size):
    with pytest.raises(ValueError, match="Option xbzrle_cache_size expects a power of two no less than "
                                         "the target page size"):
        X.XbzrleCache(size, 16)


def test_default_cache_has_16384_slots():
    cache = X.XbzrleCache(X.DEFAULT_XBZRLE_CACHE_SIZE, 1 << 20)
    assert cache.max_num_items == 16384 and cache.tags.shape == (16384,)
    assert X.XbzrleCache(X.DEFAULT_XBZRLE_CACHE_SIZE, 1000).tags.shape == (1024,)  # never-used slots not stored


def test_first_send_misses_the_next_is_encoded_to_the_exact_length():
    cache = X.XbzrleCache(1 << 20, 64)
    first = send(cache, [10], age=1)
    assert first.codes.tolist() == [X.CACHE_MISS_NORMAL] and first.wire.tolist() == [NORMAL_PAGE_BYTES]
    second = send(cache, [10], age=2, changed={10: 300}, offsets=np.array([40]))
    assert second.codes.tolist() == [X.XBZRLE_SENT]
    assert second.wire.tolist() == [8 + 1 + 2 + (1 + 2 + 300)]
    assert cache.query() == {"cache-size": 1 << 20, "bytes": 3 + 303, "pages": 1, "cache-miss": 1,
                             "cache-miss-rate": 0.0, "encoding-rate": 0.0, "overflow": 0}  # no period closed yet


def test_one_slot_cache_keeps_the_first_page_until_it_ages():
    """The smallest cache QEMU allows: every page collides; a young entry stays, a hit keeps it young."""
    cache = X.XbzrleCache(PAGE_SIZE, 8)
    assert send(cache, [0, 1, 2], age=1).codes.tolist() == [X.CACHE_MISS_NORMAL] * 3
    assert entries(cache) == {0: 1}
    res = send(cache, [0, 1, 2], age=2, changed={0: 10, 1: 10, 2: 10})
    assert res.codes.tolist() == [X.XBZRLE_SENT, X.CACHE_MISS_NORMAL, X.CACHE_MISS_NORMAL]
    assert entries(cache) == {0: 2}  # the hit refreshed it
    res = send(cache, [1], age=4, changed={1: 10})
    assert res.codes.tolist() == [X.CACHE_MISS_NORMAL] and entries(cache) == {1: 4}  # 2 + 2 <= 4: replaced


def test_a_young_entry_is_not_evicted_an_old_one_is():
    cache = X.XbzrleCache(4 * PAGE_SIZE, 64)  # 4 slots: pages 1, 5, 9 collide
    send(cache, [1], age=3)
    send(cache, [5], age=4)  # 3 + 2 > 4: refused
    assert entries(cache) == {1: 3}
    send(cache, [5], age=5)  # 3 + 2 > 5 fails: replaced
    assert entries(cache) == {5: 5}
    assert send(cache, [1], age=5).codes.tolist() == [X.CACHE_MISS_NORMAL]
    assert entries(cache) == {5: 5}


def test_last_stage_does_not_insert_or_update_but_zero_pages_go_in():
    cache = X.XbzrleCache(4 * PAGE_SIZE, 64)
    send(cache, [0], age=1)
    res = send(cache, [0, 1, 2], age=7, changed={0: 50}, zero={2}, last_stage=True)
    assert res.codes.tolist() == [X.XBZRLE_SENT, X.CACHE_MISS_NORMAL, X.ZERO_PAGE]
    assert entries(cache) == {0: 7, 2: 7}  # the hit refreshed the age; 1 not inserted; the zero page was
    assert cache.query()["cache-miss"] == 2  # the first send and page 1


def test_zero_page_replaces_a_stale_entry_and_counts_nothing():
    cache = X.XbzrleCache(4 * PAGE_SIZE, 64)
    send(cache, [2], age=1)
    res = send(cache, [2, 6], age=2, zero={2, 6})  # 6 collides with the young zero page of 2
    assert res.codes.tolist() == [X.ZERO_PAGE] * 2 and res.wire.tolist() == [ZERO_PAGE_BYTES] * 2
    assert entries(cache) == {2: 2}
    q = cache.query()
    assert (q["pages"], q["cache-miss"]) == (0, 1)
    assert send(cache, [2], age=3, changed={2: 8}).codes.tolist() == [X.XBZRLE_SENT]


def test_skipped_page_sends_nothing_and_leaves_the_header_to_the_next():
    cache = X.XbzrleCache(1 << 16, 64)
    send(cache, [3, 4], age=1)
    res = send(cache, [3, 4], age=2, changed={3: 0, 4: 20}, first_extra=IDSTR)
    assert res.codes.tolist() == [X.SKIPPED_UNCHANGED, X.XBZRLE_SENT]
    assert res.wire.tolist() == [0, 8 + IDSTR + 3 + 22] and res.extra_left == 0
    assert cache.query()["bytes"] == IDSTR + 3 + 22  # everything but the 8-byte header
    res = send(cache, [3], age=3, first_extra=IDSTR)  # dirty, not written
    assert res.codes.tolist() == [X.SKIPPED_UNCHANGED] and res.extra_left == IDSTR
    assert cache.totals[X.SKIPPED_PAGES] == 2 and cache.query()["pages"] == 3


def test_counters_and_rates_of_a_scripted_sequence():
    """Hand-computed: 4 slots; pages 0 and 4 share slot 0, 1 and 5 slot 1."""
    cache = X.XbzrleCache(4 * PAGE_SIZE, 16)
    # period 1: three misses; 4 is refused by page 0's young entry
    r = send(cache, [0, 1, 4], age=2, first_extra=IDSTR)
    assert r.wire.tolist() == [NORMAL_PAGE_BYTES + IDSTR, NORMAL_PAGE_BYTES, NORMAL_PAGE_BYTES]
    cache.update_rates(3)
    assert (cache.cache_miss_rate, cache.encoding_rate) == (1.0, 0.0)
    # period 2: 0 encoded (1 + 1 + 100 bytes), 1 skipped, 4 refused again, 2 inserted at 3900
    r = send(cache, [0, 1, 2, 4], age=3, changed={0: 100, 1: 0, 2: 196, 4: PAGE_SIZE},
             offsets=np.array([0, 0, 3900, 0]))
    assert r.codes.tolist() == [X.XBZRLE_SENT, X.SKIPPED_UNCHANGED, X.CACHE_MISS_NORMAL, X.CACHE_MISS_NORMAL]
    assert r.wire[0] == 8 + 3 + 102
    cache.update_rates(3)  # the skipped page is no target page
    assert cache.cache_miss_rate == pytest.approx(2 / 3)
    assert cache.encoding_rate == pytest.approx(2 * PAGE_SIZE / 105)
    # period 3: 2 overflows, 3 is a zero page, 4 evicts 0 (refreshed at 3; 3 + 2 > 5 fails)
    r = send(cache, [2, 3, 4], age=5, changed={2: PAGE_SIZE}, zero={3})
    assert r.codes.tolist() == [X.OVERFLOW_NORMAL, X.ZERO_PAGE, X.CACHE_MISS_NORMAL]
    assert entries(cache) == {4: 5, 1: 3, 2: 5, 3: 5}
    cache.update_rates(3)
    assert cache.cache_miss_rate == pytest.approx(1 / 3)
    assert cache.encoding_rate == 1.0  # one hit, a page counted for the overflow
    # period 4: only a skipped page, no target page: QEMU returns early, the period start stays
    send(cache, [1], age=6)
    cache.update_rates(0)
    assert (cache.cache_miss_rate, cache.encoding_rate) == (pytest.approx(1 / 3), 1.0)
    # period 5: 0 refused by 4's young entry; 1 encoded (ULEB128(4000) is 2 bytes)
    r = send(cache, [0, 1], age=6, changed={1: 10}, offsets=np.array([0, 4000]))
    assert r.wire.tolist() == [NORMAL_PAGE_BYTES, 8 + 3 + 13]
    cache.update_rates(2)  # over periods 4 and 5: 1 miss, 2 hits, 16 bytes
    assert cache.query() == {"cache-size": 4 * PAGE_SIZE, "bytes": 105 + PAGE_SIZE + 16, "pages": 5,
                             "cache-miss": 7, "cache-miss-rate": 0.5, "encoding-rate": 2 * PAGE_SIZE / 16,
                             "overflow": 1}


def test_resize_during_migration_changes_only_the_reported_size():
    """migrate_params_apply stores the parameter before xbzrle_cache_resize compares against it."""
    cache = X.XbzrleCache(4 * PAGE_SIZE, 64)
    send(cache, [0, 1], age=1)
    cache.resize(64 * PAGE_SIZE)
    assert cache.query()["cache-size"] == 64 * PAGE_SIZE
    assert cache.tags.shape == (4,) and entries(cache) == {0: 1, 1: 1}
    with pytest.raises(ValueError, match="power of two"):
        cache.resize(PAGE_SIZE // 2)
    assert cache.query()["cache-size"] == 64 * PAGE_SIZE


@pytest.mark.parametrize("kwargs, message", [
    ({"pages": [64]}, "page numbers must lie in 0 .. 63"),
    ({"pages": [-1]}, "page numbers"),
    ({"changed": [PAGE_SIZE + 1]}, "within the page"),
    ({"changed": [10], "offsets": [PAGE_SIZE - 9]}, "within the page"),
    ({"zero": [1]}, "zero must be a 1-D array of booleans"),
    ({"written": [True, False]}, "written has 2 entries, pages has 1"),
    ({"pages": [1.0]}, "pages must be a 1-D array of integers"),
    ({"age": 2}, r"age \(dirty_sync_count\) went back from 3 to 2"),
    ({"first_extra": -1}, "first_extra"),
])
def test_send_refuses_bad_input(kwargs, message):
    cache = X.XbzrleCache(4 * PAGE_SIZE, 64)
    send(cache, [0], age=3)
    args = {"pages": [0], "zero": [False], "written": [True], "changed": [1], "age": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        cache.send(args.pop("pages"), args.pop("zero"), args.pop("written"), args.pop("changed"), **args)


@numba.njit
def _send_twice(pages, zero, written, changed, offsets, tags, ages, wire, codes, totals):
    """A numba caller, as the migration thread's send loop will be."""
    X.xbzrle_send_pages(pages, zero, written, changed, offsets, False, 1, tags, ages, 0, wire, codes, totals)
    return X.xbzrle_send_pages(pages, zero, written, changed, offsets, False, 2, tags, ages, 7, wire, codes, totals)


def test_kernel_runs_inside_another_numba_kernel():
    n = 3
    tags, ages = np.full(4, -1, dtype=np.int64), np.zeros(4, dtype=np.int64)
    wire, codes, totals = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int8), np.zeros(X.NTOTALS, dtype=np.int64)
    left = _send_twice(np.arange(n, dtype=np.int64), np.zeros(n, dtype=bool), np.ones(n, dtype=bool),
                       np.array([0, 5, PAGE_SIZE], dtype=np.int64), np.zeros(n, dtype=np.int64), tags, ages, wire,
                       codes, totals)
    assert left == 0
    assert codes.tolist() == [X.SKIPPED_UNCHANGED, X.XBZRLE_SENT, X.OVERFLOW_NORMAL]
    assert wire.tolist() == [0, 8 + 7 + 3 + 7, NORMAL_PAGE_BYTES]
    assert totals[X.XBZRLE_CACHE_MISS] == 3 and totals[X.XBZRLE_PAGES] == 3


# --------------------------------------------------------------------------- kernel vs real bytes


@st.composite
def migrations(draw):
    """A small guest, a cache and rounds of (sync steps, writes, extra dirty pages, split, last stage)."""
    npages = draw(st.integers(1, 24))
    slots = 1 << draw(st.integers(0, 5))
    page = st.integers(0, npages - 1)
    def runs(lo: int, hi: int):
        return st.integers(lo, hi).flatmap(lambda c: st.tuples(st.just("run"), st.integers(0, PAGE_SIZE - c),
                                                               st.just(c)))

    write = st.one_of(st.just(("zero",)), runs(0, 64), runs(0, PAGE_SIZE), runs(PAGE_SIZE - 8, PAGE_SIZE))
    rounds = draw(st.lists(st.tuples(st.integers(0, 2), st.dictionaries(page, write, max_size=npages),
                                     st.sets(page, max_size=4), st.integers(0, npages)), min_size=1, max_size=5))
    return npages, slots, rounds, draw(st.booleans()), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(migrations())
def test_kernel_agrees_with_real_bytes(case):
    npages, slots, rounds, last_stage_at_end, seed = case
    rng = np.random.default_rng(seed)
    memory = rng.integers(0, 256, (npages, PAGE_SIZE), dtype=np.uint8)
    memory[rng.random(npages) < 0.3] = 0
    cache, ref = X.XbzrleCache(slots * PAGE_SIZE, npages), R.ReferenceXbzrle(slots * PAGE_SIZE)
    age = 1
    for r, (step, writes, extra_dirty, split) in enumerate(rounds):
        age += step
        changed, offsets = np.zeros(npages, dtype=np.int64), np.zeros(npages, dtype=np.int64)
        for p, w in writes.items():
            if w[0] == "zero":
                memory[p] = 0
            else:
                _, o, c = w
                memory[p, o:o + c] ^= rng.integers(1, 256, c, dtype=np.uint8)
                changed[p], offsets[p] = c, o
        last_stage = last_stage_at_end and r == len(rounds) - 1
        dirty = np.array(sorted(set(writes) | extra_dirty), dtype=np.int64)
        extra = IDSTR
        for batch in (dirty[:split], dirty[split:]):
            res = cache.send(batch, ~memory[batch].any(axis=1), np.isin(batch, list(writes)), changed[batch],
                             age=age, last_stage=last_stage, offsets=offsets[batch], first_extra=extra)
            expected = []
            for p in batch:
                code, wire, extra = ref.send(int(p), memory[p], age, last_stage, extra)
                expected.append((code, wire))
            assert list(zip(res.codes.tolist(), res.wire.tolist())) == expected
            assert res.extra_left == extra
        assert cache.totals.tolist() == ref.totals
        assert entries(cache) == {page: a for page, a, _ in ref.cache.values()}
