"""The sending side: per-page CPU of the migration thread and the multifd senders (``migration/sending.py``).

The closed forms: a slice of pages takes the slowest of the wire, the migration
thread and the senders spread over the channels, so one thread's throughput is
min(link, max-bandwidth, CPU) and channels lift the CPU ceiling until the
migration thread, which still finds and queues every page, is the limit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from builders import NO_COSTS, merge, of, simulate
from dirtysim.dirty import sendcost
from dirtysim.events import schema as ev
from dirtysim.migration.sending import SENDING_COSTS, send_costs
from dirtysim.report.tables import summary
from dirtysim.scenario.load import load_scenario
from dirtysim.scenario.schema import Scenario
from golden import golden

pytestmark = pytest.mark.rules

PAGES = 1 << 18  # 1 GiB
IDLE = {"machine": {"memory": {"size": "1GiB", "zero_fraction": 0.95},
                    "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "0B/s"}}]},
        "network": {"bandwidth": "400Gbit/s"},
        "migration": {"max_bandwidth": "0B/s", "start_at": "0ns"}}
# a zero page and a data page cost the same 2 us wherever they are checked and sent: the closed forms are exact
EVEN = {**NO_COSTS, "migration_page": "100ns", "zero_check_zero_page": "2000ns", "zero_check_data_page": "0ns",
        "page_send": "2000ns"}


def send_time_ns(events) -> int:
    """From 'active' to the last page out: the page work of the whole migration (nothing else costs here)."""
    active = next(e.t_ns for e in events if isinstance(e, ev.MigrationStatus) and e.status == "active")
    return max(e.t_ns for e in of(events, ev.Transfer) if e.kind == "pages") - active


def run_idle(**migration):
    return simulate(**merge(IDLE, {"costs": EVEN, "migration": migration}))


# --------------------------------------------------------------------------- additive


@pytest.mark.parametrize("name,path,overrides", list(golden.runs()), ids=[r[0] for r in golden.runs()])
def test_costs_at_zero_leave_every_shipped_scenario_unchanged(name, path, overrides):
    """With the sending costs at zero and multifd off, every summary figure is what it was before they existed
    (tests/golden/summaries-no-sending-costs.json, recorded at 4824fc7; the multifd scenarios came later;
    re-recorded on purpose when precopy-/downtime-bytes became ram_transferred_add's bytes alone and the stream's
    framing and vmdesc joined transferred, issue 12 item 5)."""
    expected = json.loads(golden.SUMMARIES.read_text())[name]
    actual = golden.summary_without_sending_costs(path, overrides)
    if not load_scenario(path, overrides).migration.capabilities.multifd:
        # fields added with the sending side are zero without its costs and without multifd
        assert actual["ram"]["multifd-bytes"] == 0
        assert actual["dirtysim"]["migration-thread-busy"] == actual["dirtysim"]["multifd-busy"] == 0.0
        breakdown = actual["dirtysim"]["downtime-breakdown-ms"] or {}
        assert not any(breakdown.get(k) for k in ("vm-stop", "vhost-stop", "block-drain"))
    for part in ("ram", "dirtysim"):
        for key in set(actual[part]) - set(expected[part]):
            actual[part].pop(key)
    assert actual == expected


def test_sending_costs_are_the_schema_costs():
    fields = Scenario.model_fields["costs"].annotation.model_fields
    assert set(SENDING_COSTS) <= set(fields)


# --------------------------------------------------------------------------- one thread


def test_one_thread_is_cpu_bound_on_a_fast_link():
    """400 Gbit/s moves a data page in 82 ns; the thread needs 2.1 us for any page: CPU sets the pace."""
    res = run_idle()
    s = summary(res.events)
    assert s["ram"]["normal"] + s["ram"]["duplicate"] == PAGES
    expected = PAGES * (100 + 2000)
    assert send_time_ns(res.events) == pytest.approx(expected, rel=1e-3)
    assert s["dirtysim"]["migration-thread-busy"] == pytest.approx(1.0, abs=0.01)
    assert s["dirtysim"]["multifd-busy"] == 0.0 and s["ram"]["multifd-bytes"] == 0


def test_one_thread_on_a_slow_link_is_wire_bound_and_mostly_idle():
    """At 10 Gbit/s a data page takes 3.3 us of wire against 2.6 us of CPU; zero pages cost CPU only."""
    res = simulate(**merge(IDLE, {"costs": NO_COSTS | {"migration_page": "100ns", "page_send": "2500ns",
                                                        "zero_check_data_page": "10ns", "zero_check_zero_page": "200ns"},
                                  "network": {"bandwidth": "10Gbit/s"},
                                  "machine": {"memory": {"zero_fraction": 0.0}}}))
    wire = 4104 * 10**9 // 1_250_000_000
    assert send_time_ns(res.events) == pytest.approx(PAGES * wire, rel=1e-3)
    assert summary(res.events)["dirtysim"]["migration-thread-busy"] == pytest.approx(2610 / wire, abs=0.01)


# --------------------------------------------------------------------------- multifd


@pytest.mark.parametrize("channels", [1, 2, 4, 8, 16, 32])
def test_channels_lift_the_cpu_ceiling_until_the_migration_thread_saturates(channels):
    """multifd: the senders share 2 us per page over the channels; the migration thread keeps 100 ns per page."""
    res = run_idle(capabilities={"multifd": True}, multifd_channels=channels)
    expected = PAGES * max(100, 2000 / channels)
    assert send_time_ns(res.events) == pytest.approx(expected, rel=2e-3)
    s = summary(res.events)["dirtysim"]
    assert s["multifd-busy"] == pytest.approx(min(1.0, 20 / channels), abs=0.01)
    assert s["migration-thread-busy"] == pytest.approx(min(1.0, channels / 20), abs=0.01)


def test_multifd_bytes_are_packets_and_data_pages():
    """MultiFDPacket_t with 128 offset slots (1344 bytes) per packet; data pages whole; zero pages only an offset."""
    res = run_idle(capabilities={"multifd": True}, multifd_channels=4)
    s = summary(res.events)["ram"]
    transfers = [e for e in of(res.events, ev.Transfer) if e.kind == "pages"]
    packets = sum(e.packets for e in transfers)
    assert s["multifd-bytes"] == packets * 1344 + s["normal"] * 4096
    # every page in a full packet, the rest at each flush; one SYNC packet per channel per flush (2: a wrap, the end)
    assert packets == PAGES // 128 + 2 * 4 + (1 if PAGES % 128 else 0) * 2
    assert sendcost.MULTIFD_PACKET_HEADER == 1344


def test_legacy_zero_detection_stays_on_the_main_stream():
    """zero-page-detection legacy with multifd: the migration thread checks, a zero page is header + 1 byte."""
    res = run_idle(capabilities={"multifd": True}, multifd_channels=4, zero_page_detection="legacy")
    s = summary(res.events)
    zero = s["ram"]["duplicate"]
    assert zero > 0
    transfers = [e for e in of(res.events, ev.Transfer) if e.kind == "pages"]
    main_bytes = sum(e.bytes - e.multifd_bytes for e in transfers)
    flushes = 2 * 8  # RAM_SAVE_FLAG_MULTIFD_FLUSH after each sync
    assert main_bytes == zero * 9 + flushes
    # the thread now scans zero pages itself: 2.1 us each; the senders only see data pages
    assert s["dirtysim"]["migration-thread-busy"] == pytest.approx(1.0, abs=0.01)


def test_compression_shrinks_data_pages_and_costs_sender_cpu():
    base = Scenario.model_validate(merge(merge({"name": "c"}, IDLE), {"migration": {"capabilities": {"multifd": True},
                                                                                  "multifd_compression": "zstd"}}))
    sc = send_costs(base)
    assert sc.normal_bytes == round(4096 / 2.2) and sc.zero_bytes == 0
    c = base.costs
    assert sc.cv[sendcost.CV_CHAN_NORMAL] == c.zstd_page + c.zero_check_data_page + c.page_send * sc.normal_bytes // 4096
    plain = send_costs(base.model_copy(update={"migration": base.migration.model_copy(
        update={"multifd_compression": "none"})}))
    assert plain.normal_bytes == 4096


def test_queue_and_flush_count_packets():
    cv = np.zeros(sendcost.CV_ROWS, dtype=np.int64)
    cv[[sendcost.CV_MULTIFD, sendcost.CV_CHANNELS, sendcost.CV_ZERO_IN_PACKETS]] = (1, 3, 1)
    state = np.zeros(1, dtype=np.int64)
    assert sendcost.queue_pages(cv, state, 100, 27) == 0 and state[0] == 127
    assert sendcost.queue_pages(cv, state, 1, 0) == 1 and state[0] == 0
    assert sendcost.queue_pages(cv, state, 300, 0) == 2 and state[0] == 44
    assert sendcost.flush_and_sync(cv, state) == 1 + 3 and state[0] == 0
    assert sendcost.flush_and_sync(cv, state) == 3  # nothing partial: the SYNC packets only
    cv[sendcost.CV_ZERO_IN_PACKETS] = 0  # legacy detection: zero pages never enter a packet
    assert sendcost.queue_pages(cv, state, 0, 500) == 0 and state[0] == 0
    cv[sendcost.CV_MULTIFD] = 0
    assert sendcost.queue_pages(cv, state, 1000, 0) == 0 and sendcost.flush_and_sync(cv, state) == 0


def test_slice_time_is_the_slowest_stage():
    cv = np.zeros(sendcost.CV_ROWS, dtype=np.int64)
    cv[[sendcost.CV_MAIN_PAGE, sendcost.CV_CHAN_NORMAL, sendcost.CV_CHAN_PACKET, sendcost.CV_CHANNELS]] = (
        100, 1000, 5000, 4)
    link = 10**9  # 1 byte per ns
    assert sendcost.slice_ns(cv, link, 50_000, 10, 0, 1) == 50_000  # wire
    assert sendcost.slice_ns(cv, link, 0, 1000, 0, 0) == 250_000  # senders: 1000 x 1 us over 4
    cv[sendcost.CV_MAIN_PAGE] = 2000
    assert sendcost.slice_ns(cv, link, 0, 1000, 0, 8) == 2_000_000  # the migration thread
    assert sendcost.slice_ns(cv, link, 0, 0, 0, 3) == 3750  # SYNC packets: ceil(15000 / 4)


def test_a_long_run_of_zero_pages_is_cut_into_slices_of_cpu_time():
    """A slice ends after one send quantum of CPU, not only of wire: the vCPUs and timers run between slices."""
    res = run_idle()
    ends = sorted(e.t_ns for e in of(res.events, ev.Transfer) if e.kind == "pages")
    assert max(np.diff(ends)) <= 1_000_000 + 2100  # one quantum, overshot by less than one page


# --------------------------------------------------------------------------- what each setting charges

SMALL = 1 << 16  # pages of a 256 MiB guest


def run_small(costs: dict, **over):
    return simulate(**merge(IDLE, merge({"machine": {"memory": {"size": "256MiB", "zero_fraction": 0.0}},
                                         "costs": NO_COSTS | costs}, over)))


@pytest.mark.parametrize("detect,per_page", [("none", 100 + 2000), ("legacy", 100 + 500 + 2000)])
def test_without_multifd_only_a_scan_pays_the_zero_check(detect, per_page):
    """Without multifd, zero-page-detection none skips buffer_is_zero: a data page costs the thread
    migration_page + page_send; legacy (and multifd, which falls back to it) adds zero_check_data_page.
    All data pages, 400 Gbit/s (82 ns of wire a page): the thread sets the pace."""
    costs = {"migration_page": "100ns", "zero_check_zero_page": "3000ns", "zero_check_data_page": "500ns",
             "page_send": "2000ns"}
    res = run_small(costs, migration={"zero_page_detection": detect})
    s = summary(res.events)
    assert (s["ram"]["normal"], s["ram"]["duplicate"]) == (SMALL, 0)
    assert send_time_ns(res.events) == pytest.approx(SMALL * per_page, rel=1e-3)
    assert sendcost.main_ns(send_costs(res.scenario).cv, 1, 0) == per_page  # to the ns
    # one stream, no sender threads: the channel stage is empty whatever channel count the cost vector holds
    assert s["dirtysim"]["multifd-busy"] == 0.0 and s["ram"]["multifd-bytes"] == 0


def test_detection_none_sends_zero_pages_whole():
    """zero-page-detection none: a zero page is not recognised, it goes out as a normal page (4104 bytes)."""
    res = run_small({"page_send": "10ns"}, machine={"memory": {"zero_fraction": 1.0}},
                    migration={"zero_page_detection": "none"})
    s = summary(res.events)
    assert (s["ram"]["normal"], s["ram"]["duplicate"]) == (SMALL, 0)
    assert sum(e.bytes for e in of(res.events, ev.Transfer) if e.kind == "pages") >= SMALL * 4104


@pytest.mark.parametrize("method,ratio,cost,nbytes", [("none", 3.0, 0, 4096), ("zlib", 4.0, 3000, 1024),
                                                      ("zstd", 3.0, 1000, 1365)])
def test_compressed_page_size_and_sender_cost(method, ratio, cost, nbytes):
    """multifd-compression: a data page is round(4 KiB / <method>_ratio) on the wire (none: 4 KiB whatever the
    ratios say); a sender spends <method>_page on it plus page_send scaled to the compressed size, and the
    zero check (zero-page-detection multifd); the migration thread only queues it."""
    sc = send_costs(Scenario.model_validate(merge(merge({"name": "c"}, IDLE), {
        "machine": {"memory": {"zlib_ratio": ratio if method == "zlib" else 1.5,
                               "zstd_ratio": ratio if method == "zstd" else 1.5}},
        "costs": {"migration_page": "100ns", "zero_check_data_page": "50ns", "zero_check_zero_page": "70ns",
                  "page_send": "2000ns", "zlib_page": "3000ns", "zstd_page": "1000ns", "multifd_packet": "0ns"},
        "migration": {"capabilities": {"multifd": True}, "multifd_compression": method}})))
    assert (sc.normal_bytes, sc.zero_bytes) == (nbytes, 0)
    assert sendcost.channel_ns(sc.cv, 1, 0, 0) == cost + 50 + 2000 * nbytes // 4096
    assert sendcost.channel_ns(sc.cv, 0, 1, 0) == 70
    assert sendcost.main_ns(sc.cv, 1, 1) == 2 * 100


@pytest.mark.parametrize("method,ratio,per_page", [("zlib", 4.0, 3000 + 2000 // 4), ("zstd", 2.0, 1000 + 2000 // 2)])
def test_one_compressing_channel_sets_the_pace(method, ratio, per_page):
    """One channel compresses every data page: zlib_page / zstd_page plus the write of 4 KiB / ratio; the
    migration thread (100 ns a page) and the wire wait for it. multifd-bytes: packets and compressed pages."""
    res = run_small({"migration_page": "100ns", "page_send": "2000ns", "zlib_page": "3000ns", "zstd_page": "1000ns"},
                    machine={"memory": {f"{method}_ratio": ratio}},
                    migration={"capabilities": {"multifd": True}, "multifd_channels": 1,
                               "multifd_compression": method})
    s = summary(res.events)
    assert s["ram"]["normal"] == SMALL
    assert send_time_ns(res.events) == pytest.approx(SMALL * per_page, rel=2e-3)
    packets = sum(e.packets for e in of(res.events, ev.Transfer) if e.kind == "pages")
    assert s["ram"]["multifd-bytes"] == packets * 1344 + SMALL * int(4096 / ratio)
