"""``dirtysim calibrate``: its kernels against obvious references, and the block it prints.

No test times anything against an absolute number: only the zero check's
zero-page/data-page ratio is asserted, a property of the algorithm (a full
read against three sampled bytes) that holds by a large factor on any machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from dirtysim import calibrate as C
from dirtysim.cli import main
from dirtysim.scenario.schema import Costs
from dirtysim.scenario.units import parse_duration

PAGE = C.PAGE_SIZE
MEASURED = ("zero_check_zero_page", "zero_check_data_page", "page_send", "zlib_page")
NOT_MEASURED = ("migration_page", "multifd_packet")


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


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``dirtysim calibrate --quick -o FILE``: its result, its stdout parsed, and the file."""
    out = tmp_path_factory.mktemp("calibrate") / "costs.yaml"
    res = CliRunner().invoke(main, ["calibrate", "--quick", "-o", str(out)])
    return res, yaml.safe_load(res.stdout), out


def test_quick_block_is_a_valid_costs_block(quick):
    res, block, out = quick
    assert res.exit_code == 0, res.output
    assert out.read_text() == res.stdout
    costs = Costs.model_validate(block["costs"])  # every key a Costs field, every value a duration
    defaults = Costs()
    assert all(getattr(costs, key) > 0 for key in MEASURED)
    assert all(getattr(costs, key) == getattr(defaults, key) for key in NOT_MEASURED)
    for key in NOT_MEASURED:
        assert "default, not measured" in next(line for line in res.stdout.splitlines() if f" {key}:" in line)
    assert "loopback TCP: includes the receiver's copy" in res.stdout


def test_zero_check_reads_a_zero_page_whole_and_a_data_page_hardly(quick):
    costs = Costs.model_validate(quick[1]["costs"])
    assert costs.zero_check_zero_page > 2 * costs.zero_check_data_page


def test_zstd_without_a_module_keeps_its_default(quick):
    line = next(line for line in quick[0].stdout.splitlines() if " zstd_page:" in line)
    if C._zstd_stream() is None:
        assert Costs.model_validate(quick[1]["costs"]).zstd_page == Costs().zstd_page
        assert "not measured: no zstd module" in line
    else:
        assert "level 1 stream" in line


def test_a_measured_zstd_is_printed_with_its_module():
    comp = C.Compression("zstandard", {"text": 14_000.0, "random": 1_340.0}, {"text": 3.7, "random": 1.0})
    cal = C.Calibration(C.QUICK, 700.0, 60.0, 600.0, 2_000.0, comp, comp)
    block = yaml.safe_load(C.costs_yaml(cal))
    assert Costs.model_validate(block["costs"]).zstd_page == 7_670
    assert "zstandard level 1 stream" in C.costs_yaml(cal)


def test_output_into_a_missing_directory_is_refused_before_measuring(tmp_path):
    res = CliRunner().invoke(main, ["calibrate", "--quick", "-o", str(tmp_path / "nowhere" / "costs.yaml")])
    assert res.exit_code == 2
    assert res.stderr == f"--output: directory {tmp_path / 'nowhere'} does not exist\n"


def test_ctrl_c_while_measuring_exits_130(monkeypatch, tmp_path):
    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "measure", interrupted)
    out = tmp_path / "costs.yaml"
    res = CliRunner().invoke(main, ["calibrate", "-o", str(out)])
    assert res.exit_code == 130
    assert "interrupted" in res.stderr and not out.exists()


def test_an_empty_output_path_is_refused_before_measuring():
    res = CliRunner().invoke(main, ["calibrate", "--quick", "-o", ""])
    assert (res.exit_code, res.stderr) == (2, "--output: an empty path (allowed: a file name, e.g. costs.yaml)\n")
