"""XBZRLE on the sending side: the page cache, the encoded size and the counters.

Models ``migration/page_cache.c``, ``xbzrle_encode_buffer`` (``migration/xbzrle.c``)
and the XBZRLE part of ``migration/ram.c``: ``save_zero_page`` ->
``xbzrle_cache_zero_page``, ``ram_save_page`` -> ``save_xbzrle_page``,
``migration_update_rates`` and query-migrate's ``xbzrle-cache``
(``populate_ram_info``). The migration thread calls ``xbzrle_send_pages`` (or
``XbzrleCache.send``) only once ``rs->xbzrle_started`` is set, i.e. after the
scan's first wrap (``find_dirty_block``); before that QEMU never touches the cache.
XBZRLE runs in the migration thread only: ``migrate_caps_check`` refuses it
with multifd ("Multifd is not compatible with xbzrle").

The cache is direct-mapped: a page goes to slot ``page & (max_num_items - 1)``
(``cache_get_cache_pos``), where ``page`` is the ram_addr page number (block
offset / 4 KiB + page in the block), so pages of different blocks collide as in
QEMU. A slot holds its page's number (the tag; QEMU keeps the byte address
``it_addr``, the same thing) and an age: the value of
``dirty_sync_count`` when the entry was inserted or last hit. That count is the
caller's ``age`` argument; QEMU bumps it at the start of every
``migration_bitmap_sync``.

Page contents are not stored. [Assumption] A page's change since its cached
copy is one contiguous run of ``changed`` differing bytes starting at
``offset`` (0 unless the caller knows better). The cached copy is always what
was last sent for the page: a hit or an insertion makes QEMU send the cache's
copy, a zero page puts zeros into the cache, and a page that could not be
inserted has no entry (another page owns the slot). So the run is what the guest
changed since the page was last sent.

The encoded size is that of the portable ``xbzrle_encode_buffer``; hosts with
AVX-512BW run another encoder of the same format. Rules easy to get wrong:

* ``xbzrle-cache-size`` must be a power of two of at least one target page
  (``migrate_params_check``); nothing rounds it. ``cache_init`` also refuses a
  page count that is not a power of two despite its "round down" comment.
* The encoding limit is ``TARGET_PAGE_SIZE`` itself, with nothing reserved for
  the 3 bytes of flag and length: an encoded page can take 4107 bytes on the
  wire, 3 more than a normal page.
* A zero page goes into the cache even in the last stage; only
  ``save_xbzrle_page`` checks ``last_stage``.
* A skipped page (no byte changed) is still counted in ``pages``, but
  ``ram_save_target_page`` returns 0 pages for it, so ``target_page_count``
  (the ``cache-miss-rate`` denominator) does not count it.
* ``migrate-set-parameters xbzrle-cache-size`` never resizes a running cache:
  see ``XbzrleCache.resize``.
* ``ram_get_total_transferred_pages`` adds ``pages`` to the normal and zero
  pages: an overflowed page counts twice there, a skipped one once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..scenario.schema import XBZRLE_CACHE_SIZE_ERROR
from ..dirty.kernels import (NORMAL_PAGE_BYTES, PAGE_HEADER, PAGE_SIZE, SEND_PAGE, ZERO_PAGE_BYTES, deliver_page,
                             inline, jit, next_to_send)

DEFAULT_XBZRLE_CACHE_SIZE = 64 << 20  # DEFAULT_MIGRATE_XBZRLE_CACHE_SIZE (options.c)
CACHED_PAGE_LIFETIME = 2  # page_cache.c: an entry is not replaced within two syncs
XBZRLE_RECORD_BYTES = 1 + 2  # ENCODING_FLAG_XBZRLE byte + be16 encoded length (save_xbzrle_page)

# Per-page codes of xbzrle_send_pages
CACHE_MISS_NORMAL = 0  # not cached: sent as a normal page (inserted unless refused or in the last stage)
XBZRLE_SENT = 1  # cache hit: an XBZRLE record went out
OVERFLOW_NORMAL = 2  # cache hit, encoding longer than a page: sent as a normal page
SKIPPED_UNCHANGED = 3  # cache hit, no byte changed: nothing sent
ZERO_PAGE = 4  # zero page (save_zero_page); the cache took a zero page if it could

# Indices of the totals array (xbzrle_counters fields, mig_stats page counts, bytes on the wire)
WIRE_BYTES = 0  # ram_transferred_add
NORMAL_PAGES = 1  # mig_stats.normal_pages (misses and overflows)
ZERO_PAGES = 2  # mig_stats.zero_pages
SKIPPED_PAGES = 3  # pages ram_save_target_page returned 0 for
XBZRLE_PAGES = 4  # xbzrle_counters.pages: every hit (encoded, overflowed or skipped)
XBZRLE_BYTES = 5  # xbzrle_counters.bytes
XBZRLE_CACHE_MISS = 6  # xbzrle_counters.cache_miss
XBZRLE_OVERFLOW = 7  # xbzrle_counters.overflow
NTOTALS = 8


@inline
def uleb128_len(n):
    """Bytes ``uleb128_encode_small`` writes for ``n`` (< 2**14): 1 below 128, else 2."""
    return 1 if n < 0x80 else 2


@jit
def encoded_len(changed_bytes: int, offset: int) -> int:
    """What ``xbzrle_encode_buffer`` returns for one page whose bytes
    ``[offset, offset + changed_bytes)`` differ from the cached copy, with
    ``slen = dlen = TARGET_PAGE_SIZE`` as ``save_xbzrle_page`` calls it.

    0: nothing changed (QEMU skips the page). -1: overflow. Otherwise
    ULEB128(offset) + ULEB128(changed_bytes) + the changed bytes; the trailing
    zero run is not encoded ("skip last zero run"), but the encoder's check
    that two more bytes fit (``d + 2 > dlen``) runs before it finds that out,
    so a run not reaching the page end overflows two bytes earlier.
    """
    if changed_bytes == 0:
        return 0
    d = uleb128_len(offset) + uleb128_len(changed_bytes) + changed_bytes
    if d > PAGE_SIZE or (offset + changed_bytes < PAGE_SIZE and d + 2 > PAGE_SIZE):
        return -1
    return d


@inline
def cache_insert(tags, ages, page, age):
    """``cache_insert``: take the page's slot unless another page's entry there is
    younger than ``CACHED_PAGE_LIFETIME`` syncs (an empty slot, tag -1, is free)."""
    slot = page & (tags.shape[0] - 1)
    if tags[slot] >= 0 and tags[slot] != page and ages[slot] + CACHED_PAGE_LIFETIME > age:
        return
    tags[slot] = page
    ages[slot] = age


@inline
def xbzrle_page(p, is_zero, written, changed, offset, last_stage, age, tags, ages, totals):
    """One page of ``ram_save_target_page`` once XBZRLE has started: (code, wire bytes but a new block's idstr).

    A zero page is a zero-page record and ``xbzrle_cache_zero_page`` offers the
    cache a zero page (even in the last stage). Otherwise ``save_xbzrle_page``:
    on a miss (``cache_is_cached``) count it and, unless in the last stage, try
    ``cache_insert``; a normal page. On a hit refresh the entry's age, count the
    page in ``pages`` and encode the change (``changed`` bytes at ``offset`` if
    ``written``): nothing changed -> skipped; overflow -> counted, ``bytes`` += a
    page, a normal page; else an XBZRLE record (header + flag + be16 length +
    encoding), all but its 8-byte offset counted in ``bytes``.
    """
    slot = p & (tags.shape[0] - 1)
    if is_zero:
        cache_insert(tags, ages, p, age)
        totals[ZERO_PAGES] += 1
        return ZERO_PAGE, ZERO_PAGE_BYTES
    if tags[slot] != p:
        totals[XBZRLE_CACHE_MISS] += 1
        if not last_stage:
            cache_insert(tags, ages, p, age)
        totals[NORMAL_PAGES] += 1
        return CACHE_MISS_NORMAL, NORMAL_PAGE_BYTES
    ages[slot] = age  # cache_is_cached refreshes a hit (the content copy needs no model)
    totals[XBZRLE_PAGES] += 1
    n = encoded_len(changed if written else 0, offset)
    if n == 0:
        totals[SKIPPED_PAGES] += 1
        return SKIPPED_UNCHANGED, 0
    if n < 0:
        totals[XBZRLE_OVERFLOW] += 1
        totals[XBZRLE_BYTES] += PAGE_SIZE
        totals[NORMAL_PAGES] += 1
        return OVERFLOW_NORMAL, NORMAL_PAGE_BYTES
    totals[XBZRLE_BYTES] += XBZRLE_RECORD_BYTES + n
    return XBZRLE_SENT, PAGE_HEADER + XBZRLE_RECORD_BYTES + n


@jit
def xbzrle_send_pages(pages, zero, written, changed, offsets, last_stage, age, tags, ages, first_extra,
                      wire, codes, totals):
    """Send ``pages`` (ram_addr page numbers, in QEMU's send order) once XBZRLE has started (``xbzrle_page``).

    ``age`` is ``dirty_sync_count``; ``tags``/``ages`` are the cache (a power of
    two of slots, tag -1 = empty). ``first_extra`` bytes (1 + the block's idstr
    length, ``save_page_header`` after a block change) go on the first record
    sent: a skipped page writes no header. Fills ``wire`` (bytes on the wire)
    and ``codes`` per page, adds to ``totals`` (see the index constants) and
    returns the extra bytes still owed (``first_extra`` if every page was skipped).
    """
    extra = first_extra
    for k in range(pages.shape[0]):
        code, nbytes = xbzrle_page(pages[k], zero[k], written[k], changed[k], offsets[k], last_stage, age, tags,
                                   ages, totals)
        codes[k] = code
        if code == SKIPPED_UNCHANGED:
            wire[k] = 0
            continue
        wire[k] = nbytes + extra
        if code == XBZRLE_SENT:
            totals[XBZRLE_BYTES] += extra  # bytes_xbzrle counts the whole header but its 8-byte offset
        extra = 0
        totals[WIRE_BYTES] += wire[k]
    return extra


def check_cache_size(cache_size: int) -> None:
    """``migrate_params_check``: xbzrle-cache-size is a power of two, at least one target page."""
    if cache_size < PAGE_SIZE or cache_size & (cache_size - 1):
        raise ValueError(f"{XBZRLE_CACHE_SIZE_ERROR} (got {cache_size})")


class SendResult(NamedTuple):
    wire: np.ndarray  # int64 bytes on the wire per page
    codes: np.ndarray  # int8 code per page (CACHE_MISS_NORMAL ... ZERO_PAGE)
    extra_left: int  # header bytes still owed: every page was skipped


class XbzrleCache:
    """The XBZRLE cache and counters of one migration (``xbzrle_init``: an empty cache).

    ``cache_size`` is the xbzrle-cache-size parameter in bytes; ``ram_pages`` the
    size of the ram_addr space in pages (page numbers passed in must lie below it).
    QEMU's cache has ``cache_size / 4 KiB`` slots (``max_num_items``); only the
    first power of two covering ``ram_pages`` of them can ever be used, so the
    arrays stop there (same slot for every page, bounded memory).
    """

    def __init__(self, cache_size: int, ram_pages: int):
        check_cache_size(cache_size)
        if ram_pages < 1:
            raise ValueError(f"ram_pages must be at least 1 (got {ram_pages})")
        self.cache_size = cache_size
        self.ram_pages = ram_pages
        self.max_num_items = cache_size // PAGE_SIZE
        slots = min(self.max_num_items, 1 << (ram_pages - 1).bit_length())
        self.tags = np.full(slots, -1, dtype=np.int64)  # it_addr = -1: no page
        self.ages = np.zeros(slots, dtype=np.int64)
        self.totals = np.zeros(NTOTALS, dtype=np.int64)
        self.cache_miss_rate = 0.0
        self.encoding_rate = 0.0
        self._period_start = self.totals.copy()  # RAMState xbzrle_cache_miss_prev, xbzrle_pages_prev, ...
        self._age = 0

    def send(self, pages, zero, written, changed, *, age: int, last_stage: bool = False, offsets=None,
             first_extra: int = 0) -> SendResult:
        """Check the inputs and run ``xbzrle_send_pages`` on this cache (see there).

        ``age`` is ``dirty_sync_count`` and never decreases; ``offsets``
        defaults to runs starting at byte 0.
        """
        pages = _ints("pages", pages)
        n = pages.shape[0]
        zero, written = _flags("zero", zero, n), _flags("written", written, n)
        changed = _ints("changed", changed, n)
        offsets = np.zeros(n, dtype=np.int64) if offsets is None else _ints("offsets", offsets, n)
        if n and (pages.min() < 0 or pages.max() >= self.ram_pages):
            raise ValueError(f"page numbers must lie in 0 .. {self.ram_pages - 1}")
        if n and (changed.min() < 0 or offsets.min() < 0 or (offsets + changed).max() > PAGE_SIZE):
            raise ValueError(f"each changed run must lie within the page: 0 <= offset, "
                             f"0 <= changed, offset + changed <= {PAGE_SIZE}")
        if age < self._age:
            raise ValueError(f"age (dirty_sync_count) went back from {self._age} to {age}")
        if first_extra < 0:
            raise ValueError(f"first_extra must be >= 0 (got {first_extra})")
        self._age = age
        wire = np.zeros(n, dtype=np.int64)
        codes = np.zeros(n, dtype=np.int8)
        left = xbzrle_send_pages(pages, zero, written, changed, offsets, last_stage, age, self.tags, self.ages,
                                 first_extra, wire, codes, self.totals)
        return SendResult(wire, codes, int(left))

    def update_rates(self, page_count: int) -> None:
        """``migration_update_rates``, XBZRLE part, when a sync closes a > 1 s period.

        ``page_count`` is the period's ``target_page_count`` growth (pages
        ``ram_save_iterate`` sent: skipped pages count 0). With none, QEMU
        returns early: the rates and their period starts stay, so the next
        period's rates cover both. ``encoding-rate`` is 0, not infinite, when
        nothing hit or nothing was encoded.
        """
        if not page_count:
            return
        delta = self.totals - self._period_start
        self.cache_miss_rate = float(delta[XBZRLE_CACHE_MISS] / page_count)
        hits, encoded = delta[XBZRLE_PAGES], delta[XBZRLE_BYTES]
        self.encoding_rate = float(hits * PAGE_SIZE / encoded) if hits and encoded else 0.0
        self._period_start = self.totals.copy()

    def resize(self, new_size: int) -> None:
        """``migrate-set-parameters xbzrle-cache-size`` while the cache exists.

        ``migrate_params_check`` validates the size, then ``migrate_params_apply``
        stores the parameter *before* calling ``xbzrle_cache_resize``, whose
        "nothing to do" test (``new_size == migrate_xbzrle_cache_size()``) then
        always holds. So the running cache keeps its slots and entries; only the
        cache-size that query-migrate reports changes. (Had the resize run, it
        would have replaced the cache by an empty one.)
        """
        check_cache_size(new_size)
        self.cache_size = new_size

    def query(self) -> dict:
        """query-migrate's ``xbzrle-cache`` (``populate_ram_info``)."""
        t = self.totals
        return {"cache-size": self.cache_size, "bytes": int(t[XBZRLE_BYTES]), "pages": int(t[XBZRLE_PAGES]),
                "cache-miss": int(t[XBZRLE_CACHE_MISS]), "cache-miss-rate": self.cache_miss_rate,
                "encoding-rate": self.encoding_rate, "overflow": int(t[XBZRLE_OVERFLOW])}


def _ints(name: str, values, n: int | None = None) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ValueError(f"{name} must be a 1-D array of integers")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, pages has {n}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _flags(name: str, values, n: int) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or (a.dtype != np.bool_ and a.size):
        raise ValueError(f"{name} must be a 1-D array of booleans")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries, pages has {n}")
    return np.ascontiguousarray(a, dtype=np.bool_)


# rows of the CPU cost vector of ``send_pages_xbzrle`` (ns; ``xbzrle_costs`` builds it)
XC_PAGE, XC_ZERO, XC_DATA, XC_SEND, XC_ENCODE, XC_ROWS = range(6)
# out[] of ``send_pages_xbzrle``: send_pages' six, then XBZRLE records, skipped pages and the thread's CPU
OUT_XBZRLE, OUT_SKIPPED, OUT_CPU, OUT_LEN = 6, 7, 8, 9


@jit
def send_pages_xbzrle(bmap, clear_bmap, nonzero, stale, received, page, end, budget, cap, shift, lazy_clear,
                      zero_detect, first_extra, page_base, changed, last_stage, age, tags, ages, totals, xc, t_cap,
                      out):
    """``send_pages`` once XBZRLE has started: each dirty page through ``xbzrle_page``, in address order.

    The same stops as ``send_pages`` (budget, slice bytes, ``t_cap`` ns of the
    thread's CPU, a chunk to clear) and the same oracle updates; a page written
    since it was last sent (its ``stale`` bit) changed ``changed`` bytes, one that
    was not is skipped on a hit. Page by page: the cache decides each page's size.
    ``page_base`` is the block's first ram_addr page (the cache key). CPU per page
    (``xc``): the search, the zero check, the cache (lookup and copy, or encoding
    the old copy against the new page) and the socket write of what goes out.
    out[:OUT_LEN] = next page, normal, zero, bytes, re-sent, unchanged, XBZRLE
    records, skipped pages, CPU ns. Returns a SEND_* code.
    """
    nbytes = normal = zero = resent = unchanged = records = skipped = tm = 0
    extra = first_extra
    while True:
        page, status = next_to_send(bmap, clear_bmap, page, end, shift, lazy_clear,
                                    nbytes > budget or nbytes >= cap or tm >= t_cap)
        if status != SEND_PAGE:
            break
        p = page
        w = p >> 6
        b = np.uint64(1) << np.uint64(p & 63)
        bmap[w] &= ~b
        is_zero = zero_detect and not (nonzero[w] & b)
        code, size = xbzrle_page(page_base + p, is_zero, (stale[w] & b) != 0, changed, 0, last_stage, age, tags,
                                 ages, totals)
        tm += xc[XC_PAGE]
        if code == ZERO_PAGE:
            zero += 1
            tm += xc[XC_ZERO]
        else:
            tm += xc[XC_DATA] + xc[XC_ENCODE] + xc[XC_SEND] * size // NORMAL_PAGE_BYTES
            if code == XBZRLE_SENT:
                records += 1
            elif code == SKIPPED_UNCHANGED:
                skipped += 1
            else:
                normal += 1
        if code != SKIPPED_UNCHANGED:
            if code == XBZRLE_SENT:
                totals[XBZRLE_BYTES] += extra
            nbytes += size + extra
            totals[WIRE_BYTES] += size + extra
            extra = 0
        r, u = deliver_page(stale, received, w, b)
        resent += r
        unchanged += u
        page = p + 1
    out[0], out[1], out[2], out[3], out[4], out[5] = page, normal, zero, nbytes, resent, unchanged
    out[OUT_XBZRLE], out[OUT_SKIPPED], out[OUT_CPU] = records, skipped, tm
    return status


def xbzrle_costs(scenario) -> np.ndarray:
    """The migration thread's CPU per page with XBZRLE (rows ``XC_*``): no zero check with detection ``none``."""
    c, scan = scenario.costs, scenario.migration.zero_page_detection != "none"
    xc = np.zeros(XC_ROWS, dtype=np.int64)
    xc[[XC_PAGE, XC_SEND, XC_ENCODE]] = c.migration_page, c.page_send, c.xbzrle_page
    if scan:
        xc[[XC_ZERO, XC_DATA]] = c.zero_check_zero_page, c.zero_check_data_page
    return xc
