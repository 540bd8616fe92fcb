"""``dirtysim.calibrate``: its kernels against obvious references, and the block it prints.

No test times anything against an absolute number: only the zero check's
zero-page/data-page ratio is asserted, a property of the algorithm (a full
read against three sampled bytes) that holds by a large factor on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dirtysim import calibrate as C
from dirtysim.scenario.schema import Costs
from dirtysim.scenario.units import parse_duration

PAGE = C.PAGE_SIZE


def _page(nonzero: dict[int, int]) -> np.ndarray:
    page = np.zeros(PAGE, dtype=np.uint8)
    for at, value in nonzero.items():
        page[at] = value
    return page


# --------------------------------------------------------------------------- kernels


def test_zero_page_is_zero_and_random_page_is_not():
    assert C._is_zero(_page({}))
    assert not C._is_zero(np.random.default_rng(3).integers(1, 256, PAGE, dtype=np.uint8))


# the three samples, the first and last word and 64-byte block, a word's last byte, the block after the samples
@pytest.mark.parametrize("at", [0, PAGE // 2, PAGE - 1, 1, 7, 8, 63, 64, PAGE // 2 - 1, PAGE // 2 + 1, 1000,
                                PAGE - 64, PAGE - 8, PAGE - 2])
@pytest.mark.parametrize("value", [1, 0x80, 0xFF])
def test_one_nonzero_byte_anywhere_is_found(at, value):
    assert not C._is_zero(_page({at: value}))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(0, PAGE - 1), st.integers(0, 255), max_size=4))
def test_is_zero_agrees_with_numpy(nonzero):
    page = _page(nonzero)
    assert C._is_zero(page) == (not page.any())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, PAGE - 1), st.integers(1, 255), max_size=2), min_size=1,
                max_size=6), st.data())
def test_zero_check_pages_counts_the_zero_pages_it_visits(contents, data):
    pages = np.stack([_page(c) for c in contents])
    order = np.array(data.draw(st.lists(st.integers(0, len(contents) - 1), max_size=12)), dtype=np.int64)
    assert C._zero_check_pages(pages, order) == sum(not pages[i].any() for i in order)


def test_copy_page_copies_exactly():
    rng = np.random.default_rng(4)
    src, dst = rng.integers(0, 256, (2, PAGE), dtype=np.uint8)
    before = src.copy()
    C._copy_page(dst, src)
    assert np.array_equal(dst, before) and np.array_equal(src, before)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=9), st.integers(1, 3))
def test_copy_pages_fills_the_ring_in_order(order, ring_pages):
    pages = np.random.default_rng(5).integers(0, 256, (5, PAGE), dtype=np.uint8)
    ring = np.zeros((ring_pages, PAGE), dtype=np.uint8)
    expected = ring.copy()
    for i, p in enumerate(order):
        expected[i % ring_pages] = pages[p]
    C._copy_pages(ring, pages, np.array(order, dtype=np.int64))
    assert np.array_equal(ring, expected)


def test_compression_ratio_follows_the_content():
    """Zero pages shrink a hundredfold, random ones not at all: the ratio counts every byte the stream emits."""
    content = {"zero": np.zeros((C.PACKET_PAGES + 3, PAGE), dtype=np.uint8),
               "random": np.random.default_rng(6).integers(0, 256, (8, PAGE), dtype=np.uint8)}
    got = C._compression("zlib", C._zlib_stream, content, repetitions=1)
    assert got.ratio["zero"] > 100
    assert 0.99 < got.ratio["random"] <= 1.0
    assert all(ns > 0 for ns in got.ns.values())


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 5e8))
def test_printed_costs_read_back_within_rounding(ns):
    printed = C._ns(ns)
    assert abs(parse_duration(printed) - ns) <= max(0.5, 0.005 * ns)


def test_measure_refuses_settings_it_cannot_measure():
    with pytest.raises(ValueError, match="whole number of 4 KiB pages"):
        C.measure(C.Settings(buffer=PAGE * 100 + 1, repetitions=1, send_seconds=0.01, compress_pages=1))
    with pytest.raises(ValueError, match="must be positive"):
        C.measure(C.Settings(buffer=C.QUICK.buffer, repetitions=0, send_seconds=0.01, compress_pages=1))


def test_a_measured_zstd_is_printed_with_its_module():
    comp = C.Compression("zstandard", {"text": 14_000.0, "random": 1_340.0}, {"text": 3.7, "random": 1.0})
    cal = C.Calibration(C.QUICK, 700.0, 60.0, 600.0, 2_000.0, comp, comp)
    block = yaml.safe_load(C.costs_yaml(cal))
    assert Costs.model_validate(block["costs"]).zstd_page == 7_670
    assert "zstandard level 1 stream" in C.costs_yaml(cal)
