"""XBZRLE in a migration: started at the first wrap, each page through the cache, the oracle unchanged."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from builders import NO_COSTS, of, scenario, simulate
from dirtysim.events import schema as ev
from dirtysim.report.tables import summary

pytestmark = pytest.mark.rules

RECORD = 8 + 1 + 2 + 1 + 1 + 64  # header, ENCODING_FLAG_XBZRLE, be16 length, uleb(0 zero run), uleb(64), the 64 bytes


def hot(bytes_per_write="64B", cache="64MiB", **workload):
    """A 256 MiB guest writing 64 pages (256 KiB) over and over at 1 Gbit/s: after the first lap only they are sent."""
    return simulate(machine={"memory": {"size": "256MiB", "zero_fraction": 0.0},
                             "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "16MiB/s",
                                                                 "working_set": "256KiB",
                                                                 "bytes_per_write": bytes_per_write, **workload}}]},
                    network={"bandwidth": "1Gbit/s"}, costs=NO_COSTS,
                    migration={"max_bandwidth": "0B/s", "start_at": "0ns", "capabilities": {"xbzrle": True},
                               "xbzrle_cache_size": cache, "downtime_limit": "1ms"})


def pages(events) -> list[ev.Transfer]:
    return [e for e in events if isinstance(e, ev.Transfer) and e.kind == "pages"]


def wrap_index(events, n: int) -> int:
    return [i for i, e in enumerate(events) if isinstance(e, ev.ScanWrap)][n - 1]


def after_lap(events, n: int) -> list[ev.Transfer]:
    """The slices after the one that ended lap ``n`` (that one also carries the lap's last pages)."""
    return pages(events[wrap_index(events, n):])[1:]


def test_cached_pages_go_out_as_their_delta():
    """Lap 2 finds the hot pages missing from the cache (QEMU fills it only once XBZRLE started) and inserts
    them; from lap 3 on each is a hit: 64 changed bytes, one record of 77 bytes."""
    res = hot()
    s = summary(res.events)
    assert s["dirtysim"]["lost-pages"] == 0
    lap2 = pages(res.events[wrap_index(res.events, 1):wrap_index(res.events, 2)])[1:]
    assert sum(e.normal for e in lap2) > 0 and not any(e.xbzrle for e in lap2)
    later = after_lap(res.events, 2)
    assert sum(e.xbzrle for e in later) > 0
    for e in later:
        assert (e.normal, e.bytes) == (0, e.xbzrle * RECORD)
    assert s["xbzrle-cache"]["cache-miss"] == sum(e.normal for e in lap2) + sum(
        e.normal for e in pages(res.events[wrap_index(res.events, 2):])[:1])
    assert s["xbzrle-cache"]["overflow"] == 0


def test_no_xbzrle_before_the_first_lap():
    res = hot()
    wrap = wrap_index(res.events, 1)
    first_lap = pages(res.events[:wrap]) + pages(res.events[wrap:])[:1]
    assert sum(e.normal for e in first_lap) == (256 << 20) // 4096
    assert not any(e.xbzrle or e.skipped for e in first_lap)


def test_whole_page_writes_overflow_and_go_out_whole():
    """The default write changes a whole page: the delta would exceed a page, so QEMU sends it normally."""
    res = hot(bytes_per_write="4KiB")
    later = after_lap(res.events, 2)
    assert not any(e.xbzrle for e in later) and sum(e.normal for e in later) > 0
    s = summary(res.events)
    assert s["xbzrle-cache"]["overflow"] == sum(e.normal for e in later)
    assert s["dirtysim"]["lost-pages"] == 0


def test_a_one_page_cache_sends_almost_every_page_whole():
    """4 KiB holds one page: the 64 hot pages evict one another (once old enough), so they miss."""
    res = hot(cache="4KiB")
    later = after_lap(res.events, 1)
    s = summary(res.events)["xbzrle-cache"]
    assert s["cache-size"] == 4096
    assert sum(e.xbzrle for e in later) <= s["pages"] < sum(e.normal for e in later) / 10


def test_unchanged_rewrites_are_skipped():
    """identical_rewrites: a page written with its own content is not stale; a cache hit encodes nothing."""
    res = hot(identical_rewrites=1.0)
    later = after_lap(res.events, 2)
    assert sum(e.skipped for e in later) > 0 and not any(e.xbzrle for e in later)
    assert all(e.bytes == 0 for e in later if e.skipped and not e.normal)
    assert summary(res.events)["dirtysim"]["lost-pages"] == 0


@pytest.mark.parametrize("migration,message", [
    ({"capabilities": {"xbzrle": True, "multifd": True}}, "Multifd is not compatible with xbzrle"),
    ({"xbzrle_cache_size": "0B"}, "Option xbzrle_cache_size expects a power of two no less than the target page size"),
    ({"xbzrle_cache_size": "96MiB"}, "Option xbzrle_cache_size expects a power of two"),
])
def test_qemu_refuses(migration, message):
    with pytest.raises(ValidationError, match=message):
        scenario(migration=migration)
