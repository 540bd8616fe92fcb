"""``dirtysim calibrate``: measure this machine's per-page costs of QEMU's sending side.

The ``costs:`` defaults of the sending side are assumptions or numbers from
other machines; a user who wants a run to predict *their* migration pastes the
block printed here into the scenario instead. Each cost is timed the way QEMU
pays it:

- the zero check (``buffer_is_zero``, util/bufferiszero.c) and a 4 KiB copy
  read pages from DRAM, as guest RAM is: the buffer is much larger than the
  last-level cache, written before it is read (untouched anonymous memory
  would all be the kernel's one shared zero page, always cached), and its pages
  are visited in a random order so no prefetcher guesses the next one;
- ``page_send``: real writev calls over loopback TCP, laid out as QEMUFile
  lays them out (migration/qemu-file.c ``add_to_iovec``): each page's 8-byte
  header (``save_page_header``) and the page are two iovecs, MAX_IOV_SIZE = 64
  iovecs per flush, so 32 pages per writev;
- ``zlib_page``/``zstd_page``: one compression stream per channel fed page by
  page and flushed once per multifd packet (``zlib_send_prepare``,
  ``zstd_send_prepare``), on pages of text and of random bytes.

Every number is the median of several repetitions, in nanoseconds per page.
``migration_page`` and ``multifd_packet`` are QEMU bookkeeping that has no
stand-alone equivalent here: their defaults are printed and marked so.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import statistics
import sysconfig
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .dirty.kernels import PAGE_HEADER, PAGE_SIZE, inline, jit
from .dirty.sendcost import MULTIFD_PAGES as PACKET_PAGES  # the compressors flush once per multifd packet
from .scenario.schema import Costs
from .scenario.units import DURATION_UNITS, format_duration

LINE_WORDS = 8  # buffer_is_zero_int_ge256 ORs one 64-byte block of words per test
IOV_PAGES = 32  # MAX_IOV_SIZE (64) iovecs per writev, two per page: header and page
COPY_RING = 64  # pages of the copy's destination: stays in cache, like a socket buffer being refilled


# a compression stream's maker: () -> (compress(page) -> bytes, flush() -> bytes)
Stream = Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]]


class CalibrationError(RuntimeError):
    """A measurement this machine cannot make; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Settings:
    """How much to measure: ``buffer`` bytes of pages, ``repetitions`` timed runs of each cost, ``send_seconds``
    of writev per ``page_send`` run, ``compress_pages`` pages of each kind of content per compression run."""

    buffer: int
    repetitions: int
    send_seconds: float
    compress_pages: int


FULL = Settings(buffer=256 << 20, repetitions=7, send_seconds=0.2, compress_pages=512)
QUICK = Settings(buffer=64 << 20, repetitions=3, send_seconds=0.05, compress_pages=PACKET_PAGES)


@dataclass(frozen=True)
class Compression:
    """One compressor at level 1: ns per page and the ratio (bytes in / bytes out) for each kind of content."""

    module: str
    ns: dict[str, float]
    ratio: dict[str, float]

    @property
    def page_ns(self) -> float:
        """The cost of a page of the mix: the kinds in equal shares."""
        return statistics.fmean(self.ns.values())

    @property
    def detail(self) -> str:
        """Each kind's cost and ratio, e.g. ``text 54.4us ratio 3.34, random 130us ratio 1.00``."""
        return ", ".join(f"{kind} {_ns(ns)} ratio {self.ratio[kind]:.2f}" for kind, ns in self.ns.items())

    @property
    def mix_ratio(self) -> float:
        """The mix's ratio: all bytes in over all bytes out."""
        return len(self.ratio) / sum(1 / r for r in self.ratio.values())


@dataclass(frozen=True)
class Calibration:
    """What ``measure`` found, in nanoseconds per 4 KiB page."""

    settings: Settings
    zero_check_zero_page: float
    zero_check_data_page: float
    page_copy: float
    page_send: float
    zlib: Compression
    zstd: Optional[Compression]  # None: no zstd module in this Python


@inline
def _is_zero(page):
    """``buffer_is_zero`` on one page: the first, middle and last byte (``buffer_is_zero_sample3``), then
    64-byte blocks of words until one is non-zero (``buffer_is_zero_int_ge256``).

    QEMU on x86 runs the AVX2 form (256-byte blocks of vectors); this integer form is what numba can write. It
    may read a zero page slower than QEMU does: from DRAM, a vectorised read of the whole page without early
    exits took about two thirds of its time on the development machine.
    """
    if page[0] | page[page.size // 2] | page[page.size - 1]:
        return False
    words = page.view(np.uint64)
    for b in range(0, words.size, LINE_WORDS):
        t = np.uint64(0)
        for w in range(b, b + LINE_WORDS):
            t |= words[w]
        if t:
            return False
    return True


@jit
def _zero_check_pages(pages, order):
    """``_is_zero`` on ``pages[order[i]]`` for every i; returns how many were zero (so the work is kept)."""
    n = 0
    for i in order:
        n += _is_zero(pages[i])
    return n


@inline
def _copy_page(dst, src):
    """One 4 KiB copy, word by word."""
    d, s = dst.view(np.uint64), src.view(np.uint64)
    for w in range(s.size):
        d[w] = s[w]


@jit
def _copy_pages(ring, pages, order):
    """``pages[order[i]]`` into ``ring[i % len(ring)]`` for every i: pages from DRAM into a cache-resident ring."""
    for i in range(order.size):
        _copy_page(ring[i % ring.shape[0]], pages[order[i]])


def measure(settings: Settings = FULL) -> Calibration:
    """Measure every cost under ``settings`` (FULL: about 5 s, QUICK: about 2 s on 2 cores)."""
    if settings.buffer < IOV_PAGES * PAGE_SIZE or settings.buffer % PAGE_SIZE:
        raise ValueError(f"buffer: a whole number of 4 KiB pages, at least {IOV_PAGES} (got {settings.buffer} bytes)")
    if settings.repetitions < 1 or settings.compress_pages < 1 or settings.send_seconds <= 0:
        raise ValueError(f"repetitions, compress_pages and send_seconds must be positive (got {settings})")
    rng = np.random.default_rng(1)
    pages = np.empty((settings.buffer // PAGE_SIZE, PAGE_SIZE), dtype=np.uint8)
    order = rng.permutation(pages.shape[0])
    reps = settings.repetitions
    pages.fill(0)  # written, so each page is real memory (see the module docstring)
    zero = _median_ns(lambda: _zero_check(pages, order, zeros=order.size), reps)
    _fill_nonzero(pages, rng)
    data = _median_ns(lambda: _zero_check(pages, order, zeros=0), reps)
    ring = np.empty((COPY_RING, PAGE_SIZE), dtype=np.uint8)

    def copy() -> int:
        _copy_pages(ring, pages, order)
        return order.size

    copy_ns = _median_ns(copy, reps)
    send = _page_send_ns(pages, order, settings)
    content = _content(settings.compress_pages, rng)
    zstd = _zstd_stream()
    return Calibration(settings, zero, data, copy_ns, send, _compression("zlib", _zlib_stream, content, reps),
                       None if zstd is None else _compression(*zstd, content, reps))


def _zero_check(pages: np.ndarray, order: np.ndarray, zeros: int) -> int:
    """One run of the zero check over every page; fails unless it found ``zeros`` zero pages (the timed work is
    the work claimed). Returns the pages checked."""
    found = _zero_check_pages(pages, order)
    if found != zeros:
        raise AssertionError(f"the zero check found {found} zero pages of {order.size}, expected {zeros}")
    return order.size


def _median_ns(run: Callable[[], float], repetitions: int) -> float:
    """Median over ``repetitions`` timed calls of ``run`` (after one untimed warm-up) of ns per page it reports."""
    run()
    per_page = []
    for _ in range(repetitions):
        t0 = time.perf_counter_ns()
        pages = run()
        per_page.append((time.perf_counter_ns() - t0) / pages)
    return statistics.median(per_page)


def _fill_nonzero(pages: np.ndarray, rng: np.random.Generator) -> None:
    """Random bytes, none of them zero, in slices (no temporary as large as the buffer)."""
    words = pages.reshape(-1).view(np.uint64)
    for part in np.array_split(words, max(1, words.size >> 21)):
        part[:] = rng.integers(0, 1 << 64, part.size, dtype=np.uint64, endpoint=False)
        part |= np.uint64(0x0101010101010101)


def _page_send_ns(pages: np.ndarray, order: np.ndarray, settings: Settings) -> float:
    """ns per page of writev over loopback TCP; a thread drains the other end (its copy shares this machine)."""
    headers = memoryview(bytearray(PAGE_HEADER * IOV_PAGES))
    slots = [headers[k * PAGE_HEADER:(k + 1) * PAGE_HEADER] for k in range(IOV_PAGES)]
    views = [memoryview(pages[p]) for p in order]
    batches = [[v for k in range(IOV_PAGES) for v in (slots[k], views[b + k])]
               for b in range(0, len(views) - IOV_PAGES + 1, IOV_PAGES)]
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as tx:
        rx, _ = server.accept()
        drain = threading.Thread(target=_drain, args=(rx,), daemon=True)
        drain.start()
        try:
            return _median_ns(lambda: _send_for(tx, batches, settings.send_seconds), settings.repetitions)
        finally:
            tx.shutdown(socket.SHUT_WR)
            drain.join()
            rx.close()


def _send_for(tx: socket.socket, batches: list[list[memoryview]], seconds: float) -> float:
    """writev batch after batch for ``seconds``; returns the pages sent (bytes sent count, so a short write too)."""
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    sent = i = 0
    while time.perf_counter_ns() < deadline:
        sent += tx.sendmsg(batches[i])
        i = (i + 1) % len(batches)
    return sent / (PAGE_HEADER + PAGE_SIZE)


def _drain(rx: socket.socket) -> None:
    """The destination's side: read until the sender shuts its end."""
    buf = bytearray(1 << 20)
    while rx.recv_into(buf):
        pass


def _content(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` pages of each kind of guest data: text (Python's own library sources, as in a page cache) and random
    bytes (encrypted or already-compressed data, which no compressor shrinks)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        if size >= n * PAGE_SIZE:
            break
        text.append(path.read_bytes())
        size += len(text[-1])
    if size < n * PAGE_SIZE:
        raise CalibrationError(f"{stdlib}: {size} bytes of Python sources, {n * PAGE_SIZE} needed for the text pages")
    return {"text": np.frombuffer(b"".join(text)[:n * PAGE_SIZE], dtype=np.uint8).reshape(n, PAGE_SIZE),
            "random": rng.integers(0, 256, (n, PAGE_SIZE), dtype=np.uint8)}


def _zlib_stream():
    """multifd zlib's stream (``zlib_send_setup``: deflateInit, level 1); flushed with Z_SYNC_FLUSH."""
    c = zlib.compressobj(1)
    return c.compress, lambda: c.flush(zlib.Z_SYNC_FLUSH)


def _zstd_stream() -> Optional[tuple[str, Stream]]:
    """multifd zstd's stream (level 1, flushed with ZSTD_e_flush) from Python 3.14's ``compression.zstd`` or the
    ``zstandard`` package; None when neither is importable."""
    try:
        from compression import zstd

        def stream():
            c = zstd.ZstdCompressor(level=1)
            return c.compress, lambda: c.flush(zstd.ZstdCompressor.FLUSH_BLOCK)

        return "compression.zstd", stream
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError:
        return None

    def stream():
        c = zstandard.ZstdCompressor(level=1).compressobj()
        return c.compress, lambda: c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    return "zstandard", stream


def _compression(module: str, new_stream: Stream, content: dict[str, np.ndarray], repetitions: int) -> Compression:
    """Each kind of content through a fresh stream per run: a stream that saw the pages before would find them in
    its window."""
    ns, ratio = {}, {}
    for kind, pages in content.items():
        views = [memoryview(p) for p in pages]

        def run(views=views) -> int:
            _compress_pass(new_stream, views)
            return len(views)

        ns[kind] = _median_ns(run, repetitions)
        ratio[kind] = pages.size / _compress_pass(new_stream, views)
    return Compression(module, ns, ratio)


def _compress_pass(new_stream: Stream, views: list[memoryview]) -> int:
    """The pages through a fresh stream, flushed after every packet; returns the bytes out."""
    compress, flush = new_stream()
    out = 0
    for i, page in enumerate(views, 1):
        out += len(compress(page))
        if i % PACKET_PAGES == 0:
            out += len(flush())
    return out + len(flush())


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def costs_yaml(cal: Calibration, date: Optional[datetime.date] = None) -> str:
    """The ``costs:`` block to paste into a scenario, each value commented with what it is and how it was measured."""
    s = cal.settings

    def default(key: str, why: str) -> tuple[str, str, str]:
        return key, format_duration(Costs.model_fields[key].default), f"default, not measured: {why}"

    rows = [
        ("zero_check_zero_page", _ns(cal.zero_check_zero_page),
         f"buffer_is_zero over a zero page (3 samples, then all 4 KiB read), median of {s.repetitions}, from DRAM"),
        ("zero_check_data_page", _ns(cal.zero_check_data_page),
         "buffer_is_zero over a random data page: the 3-byte sample exits, from DRAM"),
        ("page_send", _ns(cal.page_send),
         f"writev of {IOV_PAGES} x (8 B header + 4 KiB page) on loopback TCP: includes the receiver's copy on this "
         "machine"),
        *((key, _ns(c.page_ns), f"{c.module} level 1 stream, half text half random pages ({c.detail})") if c else
          default(key, "no zstd module") for key, c in (("zlib_page", cal.zlib), ("zstd_page", cal.zstd))),
        default("migration_page", "the migration thread's bookkeeping per page"),
        default("multifd_packet", "a multifd sender thread's work per packet"),
    ]
    width = max(len(k) + len(v) for k, v, _ in rows) + 4
    ratios = ", ".join(f"{c.module} {c.mix_ratio:.2f}" for c in (cal.zlib, cal.zstd) if c)
    return "\n".join([
        f"# dirtysim calibrate, {(date or datetime.date.today()).isoformat()}, {cpu_model()} ({os.cpu_count()} CPUs), "
        f"Python {platform.python_version()}",
        f"# method: {s.buffer >> 20} MiB of pages visited in random order, median of {s.repetitions} runs per cost",
        "costs:",
        *(f"  {f'{k}: {v}':<{width}}# {why}" for k, v, why in rows),
        f"# also measured: a 4 KiB copy from DRAM takes {_ns(cal.page_copy)} (the copy inside page_send)",
        f"# compression ratio of the half text half random pages: {ratios} (memory.zlib_ratio, memory.zstd_ratio)",
    ]) + "\n"


def _ns(value: float) -> str:
    """A measured cost as a schema duration to 3 significant digits (runs differ by more): 847ns, 2.23us, 92.1us."""
    n = max(1, round(float(f"{value:.3g}")))
    unit, scale = next((u, DURATION_UNITS[u]) for u in ("s", "ms", "us", "ns") if n >= DURATION_UNITS[u])
    return f"{n / scale:g}{unit}"
