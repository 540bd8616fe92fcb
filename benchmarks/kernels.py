"""Bitmap, ring and guest-write kernels against plain memory streams with the same data flow, in one run.

Protocol: the bitmaps of one guest (1 TiB: 2^28 pages, 32 MiB per bitmap);
every kernel and its reference take turns, RUNS timed calls after WARMUPS,
each call on restored inputs after a 128 MiB scratch array is streamed, so the
bitmaps come from DRAM. Reported: the median.

The reference of a bitmap kernel is an in-place read-modify-write stream over
the same bytes with the same access pattern (``stream``): every word of each
array the kernel writes is read and written back, every word of each array it
only reads is read, one array after the other. A kernel at 100 % runs as fast
as that stream; it can exceed it a little (noise, or its interleaved streams
prefetch differently). The ring harvest is compared with random read-modify-writes per
entry (``random_rmw``), and the guest write kernel is reported in ns per write.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from common import median_time, table
from dirtysim.dirty import kernels as k
from dirtysim.dirty import sendcost

TIB_WORDS = 1 << 22  # 1 TiB guest = 2^28 pages = 2^22 uint64 words
SCRATCH_WORDS = (128 << 20) // 8
DENSITY_BITS = 12  # densities are rounded to multiples of 1/4096
NUMPY_BLOCK = 1 << 15  # words per block: 256 KiB, so a block's arrays stay in L2
GIB_PAGES = (1 << 30) // 4096


@numba.njit(nogil=True)
def stream(rows, nrw):
    """Rows [0, nrw) read and written back (+1, a dependent RMW), rows [nrw, ...) only read."""
    x = np.uint64(0)
    for r in range(rows.shape[0]):
        a = rows[r]
        if r < nrw:
            for w in range(a.shape[0]):
                a[w] += np.uint64(1)
        else:
            for w in range(a.shape[0]):
                x ^= a[w]
    return x


@numba.njit(nogil=True)
def random_rmw(pages, rows):
    """Per entry, set the page's bit in each row: one random read-modify-write per row."""
    for i in range(pages.shape[0]):
        r = pages[i]
        b = np.uint64(1) << np.uint64(r & 63)
        for j in range(rows.shape[0]):
            rows[j, r >> 6] |= b


@numba.njit(nogil=True)
def scan_dirty(bmap, end):
    """Walk every dirty page with ``find_next_bit``, as the sender's search does; returns the count."""
    n = 0
    p = k.find_next_bit(bmap, 0, end)
    while p < end:
        n += 1
        p = k.find_next_bit(bmap, p + 1, end)
    return n


_tmp = np.empty(NUMPY_BLOCK, dtype=np.uint64)
_counts = np.empty(NUMPY_BLOCK, dtype=np.uint8)


def numpy_sync(src, dst):
    """``sync_xchg`` in plain numpy: new = popcount(src & ~dst); dst |= src; src[:] = 0 (blocked, no temporaries)."""
    new = 0
    for w in range(0, src.shape[0], NUMPY_BLOCK):
        s, d = src[w:w + NUMPY_BLOCK], dst[w:w + NUMPY_BLOCK]
        t, c = _tmp[:s.shape[0]], _counts[:s.shape[0]]
        np.invert(d, out=t)
        np.bitwise_and(t, s, out=t)
        np.bitwise_count(t, out=c)
        new += int(c.sum(dtype=np.uint32))
        np.bitwise_or(d, s, out=d)
        s.fill(0)
    return new


def random_bitmap(rng: np.random.Generator, words: int, density: float) -> np.ndarray:
    """Bits set independently with probability k/2^DENSITY_BITS ~= density.

    Built from the binary digits of the probability, least significant first: AND
    with a fresh random word maps p to p/2, OR maps p to (1+p)/2.
    """
    kk = round(density * (1 << DENSITY_BITS))
    x = np.zeros(words, dtype=np.uint64)
    for i in range(DENSITY_BITS):
        r = rng.bit_generator.random_raw(words)
        (np.bitwise_or if (kk >> i) & 1 else np.bitwise_and)(x, r, out=x)
    return x


def _bitmap_cases(rows: np.ndarray, words: int) -> dict:
    """name -> (kernel, rows it uses, rows it writes). Its reference streams ``rows[:used]``, the first ``written`` RMW.

    Rows: 0 src / KVM bitmap / vhost log / ``bmap``, 1 dst / mask / ``stale``,
    2 ``received``, 3 ``nonzero`` (the sender's oracle words).
    """
    u8 = np.zeros(1, dtype=np.uint8)
    out6 = np.zeros(6, dtype=np.int64)
    free = np.zeros(sendcost.CV_ROWS, dtype=np.int64)  # wire time only: the bitmap walk is what is measured
    free[sendcost.CV_CHANNELS] = 1
    seen = np.zeros(0, dtype=np.uint64)
    end = words * 64
    return {
        "sync_xchg": (lambda: k.sync_xchg(rows[0], rows[1], 0, words), 2, 2),
        "numpy sync (blocked)": (lambda: numpy_sync(rows[0], rows[1]), 2, 2),
        "xchg_into": (lambda: k.xchg_into(rows[0], rows[1], 0, words), 2, 2),
        "or_into": (lambda: k.or_into(rows[1], rows[0], 0, words), 2, 1),
        "clear_by_mask": (lambda: k.clear_by_mask(rows[0], rows[1], 0, words), 2, 2),
        "harvest_log (exchange)": (lambda: k.harvest_log(rows[0], rows[1], 0, words, 0, True, seen), 2, 2),
        "find_next_bit scan": (lambda: scan_dirty(rows[0], end), 1, 0),
        "send_pages (whole block)": (lambda: k.send_pages(rows[0], u8, rows[3], rows[1], rows[2], 0, end, 1 << 62,
                                                          1 << 62, 18, False, True, 0, k.NORMAL_PAGE_BYTES,
                                                          k.ZERO_PAGE_BYTES, free, 1 << 62, out6), 4, 3),
    }


def bench_bitmaps(words: int, densities: tuple[float, ...], runs: int, warmups: int) -> list[dict]:
    """Every per-sync bitmap kernel and its ``stream`` reference, taking turns, on restored inputs from DRAM."""
    rng = np.random.default_rng(2026)
    scratch = np.ones((1, SCRATCH_WORDS), dtype=np.uint64)
    result = []
    for density in densities:
        inputs = np.stack([random_bitmap(rng, words, d) for d in (density, density, 0.5, 0.5)])
        rows = inputs.copy()
        a, b = inputs[:2].copy(), inputs[:2].copy()
        new = int(k.sync_xchg(a[0], a[1], 0, words))
        assert numpy_sync(b[0], b[1]) == new and np.array_equal(a, b), "numpy != numba sync"
        cases = _bitmap_cases(rows, words)
        calls = {name: fn for name, (fn, _, _) in cases.items()}
        refs = {name: f"stream {written} RMW + {used - written} read" for name, (_, used, written) in cases.items()}
        for name, (_, used, written) in cases.items():
            calls.setdefault(refs[name], lambda used=used, written=written: stream(rows[:used], written))
        times = {name: [] for name in calls}
        for i in range(warmups + runs):  # all take turns: a change of background load hits them alike
            for name, fn in calls.items():
                np.copyto(rows, inputs)
                stream(scratch, 0)  # evict the bitmaps from the caches
                t0 = time.perf_counter()
                fn()
                if i >= warmups:
                    times[name].append(time.perf_counter() - t0)
        med = {name: float(np.median(ts)) for name, ts in times.items()}
        kern = {name: {"median_ms": med[name] * 1e3, "reference": refs[name], "reference_ms": med[refs[name]] * 1e3,
                       "pct_of_reference": 100 * med[refs[name]] / med[name],
                       "spread": (max(times[name]) - min(times[name])) / med[name],
                       "times_ms": [t * 1e3 for t in times[name]]} for name in cases}
        result.append({"density": density,
                       "effective_density": round(density * (1 << DENSITY_BITS)) / (1 << DENSITY_BITS),
                       "words": words, "new_dirty_pages": new, "kernels": kern,
                       "numba_speedup_over_numpy": med["numpy sync (blocked)"] / med["sync_xchg"]})
    return result


def bench_ring(words: int, vcpus: int, ring_size: int, runs: int, warmups: int) -> dict:
    """``reap_rings`` over full rings of random pages, per entry, against ``random_rmw`` on one and on two bitmaps.

    ``reap_rings`` sets each entry's bit in the KVM slot bitmap and in the
    write-protection map: two random read-modify-writes per entry.
    """
    rng = np.random.default_rng(7)
    rings = rng.integers(0, words * 64, size=(vcpus, ring_size), dtype=np.int64)
    dirty_index = np.full(vcpus, ring_size, dtype=np.int64)
    reset_index = np.zeros(vcpus, dtype=np.int64)
    bitmaps = np.zeros((2, words), dtype=np.uint64)
    reaped = np.zeros(vcpus, dtype=np.int64)
    pages = rings.ravel()
    scratch = np.ones((1, SCRATCH_WORDS), dtype=np.uint64)
    calls = {"reap_rings": lambda: k.reap_rings(rings, dirty_index, reset_index, bitmaps[0], bitmaps[1], reaped),
             "random RMW x1": lambda: random_rmw(pages, bitmaps[:1]),
             "random RMW x2": lambda: random_rmw(pages, bitmaps)}
    times = {name: [] for name in calls}
    for i in range(warmups + runs):
        for name, fn in calls.items():
            bitmaps.fill(0)
            reset_index.fill(0)
            stream(scratch, 0)
            t0 = time.perf_counter()
            fn()
            if i >= warmups:
                times[name].append(time.perf_counter() - t0)
    ns = {name: float(np.median(ts)) * 1e9 / pages.shape[0] for name, ts in times.items()}
    return {"entries": int(pages.shape[0]), "guest_pages": words * 64, "ns_per_entry": ns,
            "ratio_to_one_rmw": ns["reap_rings"] / ns["random RMW x1"],
            "ratio_to_two_rmw": ns["reap_rings"] / ns["random RMW x2"]}


@numba.njit(nogil=True)
def drive_apply_writes(pages, per_vcpu, gmap, slot_gpa, slot_pages, slot_ram, slot_logging, kvm_dirty, nonzero,
                       stale, win, faults):
    """Call ``apply_writes`` once per quantum's batch (``per_vcpu`` writes for each vCPU), as ``run_vcpus`` does."""
    nv = faults.shape[0]
    seg_end = np.arange(1, nv + 1) * per_vcpu
    batch = nv * per_vcpu
    unassigned = 0
    for b in range(pages.shape[0] // batch):
        unassigned += k.apply_writes(pages[b * batch:(b + 1) * batch], seg_end, gmap, slot_gpa, slot_pages, slot_ram,
                                     slot_logging, kvm_dirty, nonzero, stale, win, faults)
    return unassigned


def bench_apply_writes(guest_gib: int, writes: int, vcpus: int, per_vcpu: int, runs: int, warmups: int) -> dict:
    """ns per guest write of ``apply_writes`` for uniformly random pages of one memslot with dirty logging."""
    pages = guest_gib * GIB_PAGES
    words = pages // 64
    rng = np.random.default_rng(3)
    gpa = rng.integers(0, pages, size=writes, dtype=np.int64)
    slot = (np.zeros(1, dtype=np.int64), np.array([pages], dtype=np.int64), np.zeros(1, dtype=np.int64),
            np.ones(1, dtype=np.bool_))
    gmap = np.stack(slot[:3])
    bitmaps = np.zeros((3, words), dtype=np.uint64)  # KVM dirty, oracle nonzero, oracle stale
    faults = np.zeros(vcpus, dtype=np.int64)
    closed = np.zeros((2, 0), dtype=np.uint64)  # the oracle's write window: no dirty-rate measurement running
    times = median_time(lambda: drive_apply_writes(gpa, per_vcpu, gmap, *slot, *bitmaps, closed, faults), runs, warmups,
                        setup=lambda: bitmaps.fill(0))
    done = (writes // (vcpus * per_vcpu)) * vcpus * per_vcpu
    return {"guest_gib": guest_gib, "writes": done, "vcpus": vcpus, "writes_per_vcpu_per_call": per_vcpu,
            "ns_per_write": float(np.median(times)) * 1e9 / done}


def run(quick: bool) -> dict:
    """The kernels section: bitmaps of a 1 TiB guest (1/16 of it with ``quick``), the ring and the guest writes."""
    runs, warmups = (3, 1) if quick else (11, 2)
    words = TIB_WORDS // 16 if quick else TIB_WORDS
    return {
        "protocol": {"runs": runs, "warmups": warmups, "words": words, "guest_pages": words * 64,
                     "scratch_bytes": SCRATCH_WORDS * 8, "numpy_block_words": NUMPY_BLOCK},
        "bitmaps": bench_bitmaps(words, (0.01, 0.30), runs, warmups),
        "ring": bench_ring(words, 16, 4096 if quick else 65536, runs, warmups),
        "apply_writes": [bench_apply_writes(gib, 1 << (18 if quick else 21), 64, 8, runs, warmups)
                         for gib in (16, 64 if quick else 1024)],
    }


def markdown(res: dict) -> str:
    p = res["protocol"]
    out = [f"### Kernels (median of {p['runs']} runs from DRAM, a {p['guest_pages'] * 4096 >> 30} GiB guest's bitmaps)",
           "", "Each kernel as % of an in-place read-modify-write stream over the same bytes (same run):", ""]
    rows = []
    for name in res["bitmaps"][0]["kernels"]:
        cells = [name, res["bitmaps"][0]["kernels"][name]["reference"]]
        for b in res["bitmaps"]:
            x = b["kernels"][name]
            cells += [f"{x['median_ms']:.2f}", f"{x['reference_ms']:.2f}", f"{x['pct_of_reference']:.0f} %"]
        rows.append(cells)
    header = ["kernel", "reference"]
    for b in res["bitmaps"]:
        d = f"{b['density']:.0%}"
        header += [f"ms ({d})", f"ref ms ({d})", f"% of ref ({d})"]
    out.append(table(header, rows))
    out += ["", "numba `sync_xchg` speed-up over blocked numpy: "
            + ", ".join(f"{b['numba_speedup_over_numpy']:.1f}x at {b['density']:.0%}" for b in res["bitmaps"])]
    r = res["ring"]
    out += ["", f"Dirty-ring harvest, {r['entries']} entries over {r['guest_pages'] * 4096 >> 30} GiB:", "",
            table(["kernel", "ns per entry"], [[n, f"{v:.1f}"] for n, v in r["ns_per_entry"].items()]),
            "", f"`reap_rings` / one random RMW per entry: {r['ratio_to_one_rmw']:.2f}x (target <= 1.5x); "
            f"/ two (its own two bitmaps): {r['ratio_to_two_rmw']:.2f}x"]
    out += ["", table(["`apply_writes`", "writes", "ns per write"],
                      [[f"{a['guest_gib']} GiB guest, {a['vcpus']} vCPUs x {a['writes_per_vcpu_per_call']} per call",
                        a["writes"], f"{a['ns_per_write']:.1f}"] for a in res["apply_writes"]])]
    return "\n".join(out)
