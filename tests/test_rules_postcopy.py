"""Postcopy's rules (``migration/postcopy.py``, ``report/postcopy.py``), each reproduced with its number.

Notation: L = network.latency, R = link bytes/s, c_f / c_p = costs.postcopy_fault / postcopy_place, B = a
page's bytes on the wire. A requested page waits D = c_f + L (the request) + [S/R without preempt: the
socket's queue] + B/R + L + c_p (the page and its placement).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from builders import NO_COSTS, merge, of, scenario, simulate
from dirtysim.dirty import destkernels as D
from dirtysim.dirty.reference import words
from dirtysim.events import schema as ev
from dirtysim.events.log import encode_log
from dirtysim.events.replay import read_log
from dirtysim.migration.postcopy import PACKAGE_OVERHEAD, discard_bytes
from dirtysim.report import tables
from dirtysim.report.postcopy import destination_info, latency_bucket

pytestmark = pytest.mark.rules

LINK = 1_250_000_000  # 10 Gbit/s
L, C_F, C_P = 100_000, 15_000, 15_000
PAGE_BYTES = 4104  # save_normal_page: 8-byte header + 4 KiB
IDSTR = 1 + len("pc.ram")  # the first page on a channel names its block
K = 16  # pages written in the closed-form runs
START = 50_000_000  # the vCPU writes from 50 ms (the switch is over by then)
RATE = 4_096_000  # one 4 KiB write per ms of running time
TOP = (256 << 20) - K * 4096  # the written pages: the top of RAM, far from the background push
PURE = {  # postcopy from the first iteration: every page is discarded, every write faults until pushed
    "machine": {"memory": {"size": "256MiB", "zero_fraction": 0.0},
                "vcpus": [{"count": 1, "start": f"{START}ns",
                           "workload": {"kind": "sequential", "rate": f"{RATE}B/s", "offset": f"{TOP}B",
                                        "working_set": f"{K * 4096}B"}}]},
    "network": {"bandwidth": "10Gbit/s"},
    "migration": {"start_at": "0ns", "timeout": "5s",
                  "capabilities": {"postcopy-ram": True, "postcopy-preempt": True, "postcopy-blocktime": True}},
    "timeline": [{"at": "0ns", "migrate-start-postcopy": {}}],
}


def wire(nbytes: int) -> int:
    return nbytes * 10**9 // LINK


def fault_events(events) -> list[ev.PostcopyFault]:
    return of(events, ev.PostcopyFault)


def waits(events) -> list[int]:
    return [e.t_ns - e.fault_ns for e in fault_events(events)]


@pytest.fixture(scope="module")
def pure():
    return simulate(**PURE)


# --------------------------------------------------------------------------- the request path, closed form


def test_preempt_fault_waits_request_wire_and_placement(pure):
    """T1: each of the K writes faults once and waits D = c_f + 2L + B/R + c_p (the first page also carries the
    block's idstr); fault i comes one write interval after fault i-1 was resolved."""
    faults = fault_events(pure.events)
    d_first = C_F + L + wire(PAGE_BYTES + IDSTR) + L + C_P
    d = C_F + L + wire(PAGE_BYTES) + L + C_P
    assert waits(pure.events) == [d_first] + [d] * (K - 1)
    assert [e.served for e in faults] == ["preempt"] * K
    assert faults[0].fault_ns == START
    for prev, e in zip(faults, faults[1:]):
        assert e.fault_ns == prev.t_ns + 10**6  # 4096 B at 4096000 B/s
    assert all(e.request_ns == e.fault_ns + C_F + L for e in faults)


def test_blocktime_of_one_vcpu_is_the_sum_of_its_waits(pure):
    """P28 with one vCPU: it is the only vCPU, so every wait counts in the total and in its own blocktime;
    postcopy-requests counts each REQ_PAGES; the latency distribution puts D in [128, 256) us."""
    s = tables.summary(pure.events)
    total = sum(waits(pure.events))
    dest = s["destination"]
    assert dest["postcopy-blocktime"] == total // 10**6
    assert dest["postcopy-vcpu-blocktime"] == [total // 10**6]
    assert dest["postcopy-latency"] == total // K == dest["postcopy-vcpu-latency"][0]
    assert latency_bucket(C_F + 2 * L + wire(PAGE_BYTES) + C_P) == 7
    assert dest["postcopy-latency-dist"][7] == K and sum(dest["postcopy-latency-dist"]) == K
    assert s["ram"]["postcopy-requests"] == K


def test_without_preempt_a_request_waits_behind_the_socket_queue():
    """T2: without preempt the requested page queues behind send_buffer bytes of background pages while the
    push runs: the first wait is longer by exactly S/R (and the idstr the preempt channel sends first)."""
    buffer = 3_000_000
    run = simulate(**merge(PURE, {"network": {"send_buffer": f"{buffer}B"},
                                  "migration": {"capabilities": {"postcopy-preempt": False}}}))
    first = fault_events(run.events)[0]
    assert first.served == "urgent" and first.wait_bytes == buffer
    assert first.t_ns - first.fault_ns == C_F + L + wire(buffer) + wire(PAGE_BYTES) + L + C_P


def test_two_vcpus_on_one_page_send_it_once():
    """T3: two vCPUs fault on the same page at the same instant: two REQ_PAGES, one page sent (the second
    request finds the bitmap bit clear: get_queued_page drops it), both woken by the one placement; all
    vCPUs are down for the whole wait, so the total blocktime is the sum of one vCPU's waits."""
    two = merge(PURE, {})
    two["machine"]["vcpus"][0]["count"] = 2
    run = simulate(**two)
    faults = fault_events(run.events)
    assert len(faults) == 2 * K
    assert sorted(e.served for e in faults) == ["in-flight"] * K + ["preempt"] * K
    pairs = {}
    for e in faults:
        pairs.setdefault(e.page, []).append(e)
    assert len(pairs) == K and all(a.t_ns == b.t_ns and a.fault_ns == b.fault_ns for a, b in pairs.values())
    s = tables.summary(run.events)
    one = sum(a.t_ns - a.fault_ns for a, _ in pairs.values())
    assert s["ram"]["postcopy-requests"] == 2 * K
    assert s["destination"]["postcopy-blocktime"] == one // 10**6
    assert s["dirtysim"]["double-placed-pages"] == 0


# --------------------------------------------------------------------------- the blocktime fold


def test_total_blocktime_counts_only_when_every_vcpu_is_down():
    """T4: the 3-vCPU diagram of mark_postcopy_blocktime_end (S1,S2,E1,S3,S1,E2,E3,E1): the total is the
    overlap from the second S1 (last_begin, all three down) to E2."""
    ms = 10**6
    faults = [(0, 1, 0, 20 * ms), (1, 2, 10 * ms, 50 * ms), (2, 3, 30 * ms, 60 * ms), (0, 4, 40 * ms, 70 * ms)]
    info = destination_info(faults, 3)
    assert info["postcopy-blocktime"] == 10
    assert info["postcopy-vcpu-blocktime"] == [50, 40, 30]
    assert info["postcopy-latency"] == 120 * ms // 4
    assert info["postcopy-vcpu-latency"] == [25 * ms, 40 * ms, 30 * ms]
    assert latency_bucket(0) == 0 and latency_bucket(1999) == 0 and latency_bucket(2000) == 1
    assert latency_bucket(10**12) == 23


def test_a_vcpu_woken_when_another_blocks_is_not_down_with_it():
    """Half-open intervals: an end and a begin at the same instant never make every vCPU down at once."""
    faults = [(0, 1, 0, 10), (1, 2, 10, 20)]
    assert destination_info(faults, 2)["postcopy-blocktime"] == 0


# --------------------------------------------------------------------------- the switch


def test_discard_message_sizes():
    """P11: 12 ranges per CMD_POSTCOPY_RAM_DISCARD; each command: 5-byte header, 3 bytes, the idstr, 16 per range."""
    assert discard_bytes("pc.ram", 25) == (3, 3 * (5 + 3 + 6) + 16 * 25)
    assert discard_bytes("pc.ram", 12) == (1, 14 + 192)  # "~200 bytes" in postcopy-ram.c
    assert discard_bytes("pc.ram", 0) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=64, max_size=640))
def test_count_runs_matches_its_twin(pages):
    """``count_runs`` against the obvious count of 0->1 edges over the unpacked pages."""
    n = -(-len(pages) // 64) * 64
    b = np.zeros(n, dtype=bool)
    b[:len(pages)] = pages
    expected = int(b[0]) + int(np.count_nonzero(b[1:] & ~b[:-1]))
    assert D.count_runs(words(b), 0, n // 64) == expected


def test_downtime_is_the_discard_and_the_package_on_the_wire():
    """P7/T5: with no costs the downtime is the discard sync (free) plus the discard commands and the
    package (ping, CMD_PACKAGED, LISTEN, device state, ping, RUN) on the wire."""
    run = simulate(**merge(PURE, {"costs": NO_COSTS}))
    (discard,) = of(run.events, ev.PostcopyDiscard)
    assert discard.ranges == 1 and discard.pages == 1 << 16  # everything is dirty at the first iteration
    package = PACKAGE_OVERHEAD + run.scenario.machine.switchover_state()
    s = tables.summary(run.events)
    assert s["dirtysim"]["downtime-ns"] == wire(discard.bytes) + wire(package)
    running = of(run.events, ev.PostcopyRunning)[0]
    stopped = of(run.events, ev.VcpusStopped)[0]
    assert running.t_ns - stopped.t_ns == s["dirtysim"]["downtime-ns"] + L  # loadvm_postcopy_handle_run_bh


# --------------------------------------------------------------------------- the end state, the oracle


@pytest.fixture(scope="module")
def hot():
    """A guest that rewrites a hot set through precopy, then postcopy after 2 syncs."""
    return simulate(**{"machine": {"memory": {"size": "256MiB"},
                                   "vcpus": [{"count": 2, "workload": {"kind": "hotset", "rate": "40MiB/s",
                                                                       "hot": "64MiB", "hot_share": 0.9}}]},
                       "migration": {"max_bandwidth": "64MiB/s", "x-postcopy-after-syncs": 2,
                                     "capabilities": {"postcopy-ram": True, "postcopy-blocktime": True}}})


def test_every_page_arrives_exactly_once_after_the_switch(hot):
    """T6: the pages sent after the switch are exactly those dirty at the discard sync, none placed twice,
    nothing lost; dirty-sync-count is the syncs before the switch plus the discard sync."""
    events = hot.events
    sync = next(e for e in of(events, ev.BitmapSync) if e.reason == "postcopy-discard")
    assert sync.dirty_sync_count == 3
    switch = of(events, ev.PostcopyStart)[0]
    assert (switch.trigger, switch.dirty_sync_count) == ("after-syncs", 2)
    after = [e for e in of(events, ev.Transfer) if e.kind == "pages" and e.seq > switch.seq]
    assert sum(e.normal + e.zero for e in after) == sync.migration_dirty_pages
    (end,) = [e for e in of(events, ev.OracleCheck) if e.at == "postcopy-complete"]
    assert (end.lost_pages, end.stale_pages, end.double_placed, end.clobbered) == (0, 0, 0, 0)
    (at_switch,) = [e for e in of(events, ev.OracleCheck) if e.at == "postcopy-switch"]
    assert at_switch.lost_pages == 0 and at_switch.stale_pages > 0  # stale, but every one in the bitmap
    s = tables.summary(events)
    assert s["status"] == "completed" and s["dirtysim"]["lost-pages"] == 0
    assert s["ram"]["dirty-sync-count"] == 3
    eos = [e for e in of(events, ev.Transfer) if e.kind == "eos" and e.seq > switch.seq]
    assert len(eos) >= 2  # one per ram_save_iterate, one from ram_save_complete
    # ram_transferred_add in postcopy: the pages and ram_save_iterate's EOS, not ram_save_complete's
    assert s["ram"]["postcopy-bytes"] == sum(e.bytes for e in after) + 8 * (len(eos) - 1)
    assert [e.ram_bytes for e in eos][-1] == 0
    assert len(fault_events(events)) > 0


def test_skipping_the_discard_is_seen_by_the_oracle(hot):
    """T7: without the discard the destination keeps stale copies of re-dirtied pages: the switch check counts
    them lost, and their fresh copies meet pages the destination holds (UFFDIO_COPY fails, EEXIST): lost."""
    bad = simulate(**merge(hot.scenario.to_file(),
                           {"what_if": {"postcopy_skip_discard": True}}))
    (at_switch,) = [e for e in of(bad.events, ev.OracleCheck) if e.at == "postcopy-switch"]
    assert at_switch.lost_pages > 0
    s = tables.summary(bad.events)
    assert s["dirtysim"]["first-lost-at"] == "postcopy-switch"
    assert s["dirtysim"]["double-placed-pages"] > 0
    assert s["dirtysim"]["lost-pages"] == s["dirtysim"]["double-placed-pages"]  # each kept a stale copy
    assert s["dirtysim"]["clobbered-pages"] > 0  # and the guest wrote on some of them


def test_same_seed_same_log_and_the_replay_agrees(hot, tmp_path):
    """T8: a postcopy run is a pure function of its scenario, and the saved log folds to the same summary."""
    again = simulate(**hot.scenario.to_file())
    assert again.fingerprint == hot.fingerprint
    path = tmp_path / "events.jsonl"
    path.write_bytes(encode_log(hot.events))
    _, events = read_log(path)
    assert tables.summary(events) == tables.summary(hot.events)


# --------------------------------------------------------------------------- QEMU's refusals


@pytest.mark.parametrize("caps,extra,message", [
    ({"postcopy-preempt": True}, {}, "Postcopy preempt requires postcopy-ram"),
    ({"postcopy-ram": True, "multifd": True}, {}, "Postcopy is not yet compatible with multifd"),
    ({}, {"x-postcopy-after-syncs": 3}, "Enable postcopy with migrate_set_capability"),
    ({"postcopy-ram": True, "xbzrle": True}, {}, "xbzrle is not modelled yet with postcopy-ram"),
])
def test_capability_checks(caps, extra, message):
    with pytest.raises(ValidationError, match=message):
        scenario(migration={"capabilities": caps, **extra})


def test_unbuilt_combinations_are_refused():
    with pytest.raises(ValidationError, match="not modelled yet with postcopy-ram"):
        scenario(machine={"vcpus": [{"count": 1, "phases": [{"duration": "1s", "rate": "1MiB/s"}],
                                     "workload": {"kind": "uniform", "rate": "1MiB/s"}}]},
                 migration={"capabilities": {"postcopy-ram": True}})


def test_timeline_answers_as_qemu():
    """qmp_migrate_start_postcopy without the capability; qmp_migrate_cancel once in postcopy."""
    run = simulate(timeline=[{"at": "100ms", "migrate-start-postcopy": {}}])
    (act,) = of(run.events, ev.TimelineAction)
    assert act.result == "refused: Enable postcopy with migrate_set_capability before the start of migration"
    run = simulate(**merge(PURE, {"timeline": [{"at": "0ns", "migrate-start-postcopy": {}},
                                               {"at": "60ms", "migrate-cancel": {}}]}))
    cancel = [e for e in of(run.events, ev.TimelineAction) if e.action == "migrate_cancel"]
    assert cancel[0].result == "refused: Postcopy migration in progress, cannot cancel."
    assert tables.summary(run.events)["status"] == "completed"


def test_a_migration_that_converges_completes_before_postcopy_starts():
    """migration_iteration_run tests completion before start_postcopy: an idle guest completes in precopy."""
    run = simulate(machine={"vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "0B/s"}}]},
                   migration={"capabilities": {"postcopy-ram": True}, "x-postcopy-after-syncs": 2})
    assert not of(run.events, ev.PostcopyStart)
    assert tables.summary(run.events)["status"] == "completed"


# --------------------------------------------------------------------------- the destination kernel


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_run_vcpus_dest_matches_its_twin(data):
    """``destkernels.run_vcpus_dest`` against ``reference.run_vcpus_dest``: the same writes, faults (at most one
    per vCPU, which then blocks), page retried after a fault, rate remainders, start gates and refills."""
    from dirtysim.dirty import kernels as K
    from dirtysim.dirty import reference as R

    nv, pages = data.draw(st.integers(1, 3)), 256
    vi = np.zeros((K.VI_ROWS, nv), dtype=np.int64)
    vf = np.zeros((K.VF_ROWS, nv))
    for v in range(nv):
        vi[K.VI_KIND, v] = data.draw(st.sampled_from([K.KIND_HOTSET, K.KIND_SEQUENTIAL]))
        vi[K.VI_FIRST, v], vi[K.VI_PAGES, v] = 0, data.draw(st.integers(1, pages + 64))  # some past the end of RAM
        vi[K.VI_HOT_PAGES, v] = data.draw(st.integers(0, int(vi[K.VI_PAGES, v]) - 1))  # a cold page is left
        vf[K.VF_HOT_SHARE, v] = data.draw(st.sampled_from([0.0, 0.5, 0.9])) if vi[K.VI_HOT_PAGES, v] else 0.0
        vi[K.VI_RATE, v] = data.draw(st.sampled_from([0, 4096 * 1000, 3_000_000, 40 << 20]))
        vi[K.VI_START, v] = data.draw(st.sampled_from([0, 2_000_000]))
        vi[K.VI_STOP, v] = data.draw(st.sampled_from([1 << 62, 5_000_000]))
        vi[K.VI_ULEN, v] = data.draw(st.integers(0, 40))
    ubuf = np.array(data.draw(st.lists(st.floats(0, 0.999999), min_size=40 * nv, max_size=40 * nv))).reshape(nv, 40)
    present = np.array(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4)), dtype=np.uint64)
    gmap = np.array([[0], [pages], [0]], dtype=np.int64)
    dv = np.zeros((D.DV_ROWS, nv), dtype=np.int64)
    dv[D.DV_PEND] = -1
    h = data.draw(st.integers(0, 10_000_000))
    state = [(vi.copy(), dv.copy(), np.zeros(4, dtype=np.uint64), np.zeros((3, nv), dtype=np.int64),
              np.zeros(2, dtype=np.int64)) for _ in range(2)]
    codes = []
    for fn, (vi_, dv_, written, faults, io) in zip((D.run_vcpus_dest, R.run_vcpus_dest), state):
        codes.append(fn(h, vi_, vf, np.zeros(1, dtype=np.int64), ubuf, gmap, present, written, dv_, faults, io))
    assert codes[0] == codes[1]
    for a, b in zip(*state):
        np.testing.assert_array_equal(a, b)


def test_place_counts_doubles_and_clobbers():
    """``place``: a page placed where the destination has one is a double (EEXIST); if its guest wrote it, a
    clobber."""
    present = np.array([0b0110], dtype=np.uint64)
    written = np.array([0b0100], dtype=np.uint64)
    out = np.zeros(3, dtype=np.int64)
    D.place(present, written, 0, np.array([0b1111], dtype=np.uint64), out)
    assert out.tolist() == [4, 2, 1] and present[0] == 0b1111


def test_a_timeout_in_postcopy_cannot_cancel():
    """P2: once in postcopy the migration cannot be cancelled; at migration.timeout the run ends with the status
    postcopy-active, the unsent pages pending (remaining > 0), none lost."""
    run = simulate(**merge(PURE, {"migration": {"timeout": "100ms"}}))
    s = tables.summary(run.events)
    assert (s["status"], s["dirtysim"]["stop-reason"]) == ("postcopy-active", "timeout")
    assert s["ram"]["remaining"] > 0 and s["dirtysim"]["lost-pages"] == 0
    assert [e.at for e in of(run.events, ev.OracleCheck)] == ["postcopy-switch", "timeout"]
    assert "downtime" in s  # shown as soon as the migration is in postcopy (populate_time_info)


def test_latency_table_is_written_with_the_run_and_removed_with_it(pure, tmp_path):
    """postcopy-latency.csv (and its png) join a postcopy run's outputs, whole; a later run without postcopy
    in the same directory takes them away (they are the run's files, not left over)."""
    from dirtysim.report.files import write_run

    write_run(pure, tmp_path, plots=True)
    rows = (tmp_path / "postcopy-latency.csv").read_text().splitlines()
    assert rows[0] == "bucket,from-us,to-us,faults" and len(rows) == 1 + 24
    assert rows[1 + 7] == f"7,128,256,{K}"
    assert (tmp_path / "postcopy-latency.png").read_bytes().startswith(b"\x89PNG")
    write_run(simulate(), tmp_path, plots=False)
    assert not (tmp_path / "postcopy-latency.csv").exists() and not (tmp_path / "postcopy-latency.png").exists()


def test_without_preempt_the_push_continues_after_the_requested_page():
    """P18: get_queued_page moves the scan to the requested page, so the background sends the pages after it
    next: a sequential writer faults on its first page only (or on a page already on its way), where with
    preempt (the scan does not move) every page faults."""
    run = simulate(**merge(PURE, {"network": {"send_buffer": "0B"},
                                  "migration": {"capabilities": {"postcopy-preempt": False}}}))
    served = [e.served for e in fault_events(run.events)]
    assert served[0] == "urgent" and len(served) < K // 2
    assert all(x == "in-flight" for x in served[1:])


@pytest.fixture(scope="module")
def idle():
    """PURE with a guest that never writes: nothing is requested."""
    over = merge(PURE, {})
    over["machine"]["vcpus"][0]["workload"]["rate"] = "0B/s"
    return simulate(**over)


def completed_ns(run) -> int:
    return next(e.t_ns for e in of(run.events, ev.MigrationStatus) if e.status == "completed")


def test_completion_waits_for_the_last_page_and_the_shut(idle):
    """P26: with nothing requested, the last background slice lands one latency and a placement after it went
    out, and the source completes once the destination's SHUT is back, one more latency later."""
    last = [e for e in of(idle.events, ev.Transfer) if e.kind == "pages"][-1]
    assert not fault_events(idle.events)
    assert completed_ns(idle) == last.t_ns + L + C_P + L


def test_requested_pages_share_the_link_with_the_push(pure, idle):
    """A requested page's wire time is taken from the background push (one link): K preempt pages move the
    end of the push by nothing but rounding (and the 7 idstr bytes), not K x 3.3 us earlier."""
    assert abs(completed_ns(pure) - completed_ns(idle)) < 100


def test_max_syncs_does_not_cancel_a_switch_in_progress(hot):
    """guestperf's max_iters equal to post_copy_iters: the discard sync exceeds it, but the switch has begun and
    the cancel is refused (qmp_migrate_cancel: "Postcopy migration in progress, cannot cancel.")."""
    run = simulate(**merge(hot.scenario.to_file(), {"migration": {"max_syncs": 2}}))
    assert not [e for e in of(run.events, ev.MigrationStatus) if e.status == "cancelling"]
    assert tables.summary(run.events)["status"] == "completed"


# --------------------------------------------------------------------------- the switch's messages, one by one


def test_the_switch_and_the_end_in_order_on_the_wire():
    """postcopy_start -> migration_completion_postcopy on the stream, with no costs in the way: status device
    (migration_switchover_start) then postcopy-active; the discard commands (one 12-range command for the single
    run of 2^16 dirty pages: 5 + 3 + 6 + 16 = 30 bytes), the package, ping 4 (9 bytes); each ram_save_iterate
    ends with its EOS and section framing (section-part); then EOS and the SECTION_END + EOF (6 bytes)."""
    pure = simulate(**PURE)  # its own run: mutmut maps a module fixture's run to its first test only
    statuses = [e.status for e in of(pure.events, ev.MigrationStatus)]
    assert statuses == ["setup", "active", "device", "postcopy-active", "completed"]
    (start,) = of(pure.events, ev.PostcopyStart)
    assert (start.trigger, start.must_precopy, start.can_postcopy) == ("migrate-start-postcopy", 0, 256 << 20)
    kinds = [(e.kind, e.bytes) for e in of(pure.events, ev.Transfer) if e.kind != "pages"]
    assert kinds[:4] == [("setup", kinds[0][1]), ("postcopy-discard", 30),
                         ("postcopy-package", PACKAGE_OVERHEAD + pure.scenario.machine.switchover_state()),
                         ("postcopy-ping", 9)]
    rest = kinds[4:]
    assert wire((1 << 16) * PAGE_BYTES) == 215_167_795
    assert rest[-2:] == [("eos", 8), ("postcopy-end", 6)]
    # ram_save_iterate returns once 50 ms (MAX_WAIT) have passed: 2^16 pages x 3.28 us = 215 ms of push (in
    # slices of about 1 ms, so windows of 51-52 ms) is 5 calls, each ending with its EOS and section framing
    assert rest[:-2] == [("eos", 8), ("section-part", rest[1][1])] * 5
    (act,) = [e for e in of(pure.events, ev.TimelineAction) if e.action == "migrate_start_postcopy"]
    assert act.result == "done"
    s = tables.summary(pure.events)
    assert (s["status"], s["dirtysim"]["stop-reason"]) == ("completed", "completed")


def test_every_page_is_stale_at_a_switch_before_any_page_was_sent():
    """Postcopy from the first iteration: the destination holds no page, so all 2^16 are stale at the switch,
    every one of them in the bitmap (none lost); at the end none is stale, none lost."""
    pure = simulate(**PURE)  # its own run: mutmut maps a module fixture's run to its first test only
    (at_switch,) = [e for e in of(pure.events, ev.OracleCheck) if e.at == "postcopy-switch"]
    assert (at_switch.stale_pages, at_switch.lost_pages) == (1 << 16, 0)
    (end,) = [e for e in of(pure.events, ev.OracleCheck) if e.at == "postcopy-complete"]
    assert (end.stale_pages, end.lost_pages) == (0, 0)


def test_no_lazy_clear_after_the_switch():
    """ram.c skips the lazy clear in postcopy as in the last stage (QEMU 10.1): the discard sync sets the
    clear_bmap bit of the chunks it found dirty, yet the push clears none (no log_clear, no CLEAR_DIRTY_LOG)."""
    pure = simulate(**PURE)  # its own run: mutmut maps a module fixture's run to its first test only
    switch = of(pure.events, ev.PostcopyStart)[0]
    after = [e for e in pure.events if isinstance(e, (ev.LazyClear, ev.KvmClearDirtyLog)) and e.seq > switch.seq]
    assert after == []


def test_pages_after_the_switch_carry_their_block_and_each_channel_names_it_once():
    """Every page once, 4104 bytes (no zero page here), the idstr once on the main channel (the push) and once on
    the preempt channel (the first request); no multifd packet; no request queued behind the socket (preempt)."""
    pure = simulate(**PURE)  # its own run: mutmut maps a module fixture's run to its first test only
    pages = [e for e in of(pure.events, ev.Transfer) if e.kind == "pages"]
    assert {e.block for e in pages} == {"pc.ram"} and sum(e.packets for e in pages) == 0
    assert sum(e.normal for e in pages) == 1 << 16 and sum(e.zero for e in pages) == 0
    assert sum(e.bytes for e in pages) == (1 << 16) * PAGE_BYTES + 2 * IDSTR
    assert tables.summary(pure.events)["ram"]["postcopy-bytes"] == sum(e.bytes for e in pages) + 8 * (
        len([e for e in of(pure.events, ev.Transfer) if e.kind == "eos"]) - 1)
    assert all(e.wait_bytes == 0 for e in fault_events(pure.events))


def test_without_preempt_one_channel_names_the_block_once():
    """Without preempt the requested pages and the push share the main channel: the idstr goes out once, with the
    first page after the switch (rs.reset forgot last_sent_block), and never again for this one block."""
    run = simulate(**merge(PURE, {"network": {"send_buffer": "3000000B"},
                                  "migration": {"capabilities": {"postcopy-preempt": False}}}))
    pages = [e for e in of(run.events, ev.Transfer) if e.kind == "pages"]
    assert sum(e.bytes for e in pages) == (1 << 16) * PAGE_BYTES + IDSTR
    served = [e.served for e in fault_events(run.events)]
    assert "urgent" in served


@pytest.mark.parametrize("latency,zero_fraction,link", [(0, 0.0, LINK), (L, 1.0, LINK // 1000)])
def test_fault_wait_closed_form_on_a_lan_and_for_zero_pages(latency, zero_fraction, link):
    """T1 again with network.latency 0 (the lookahead is then min(c_f, c_p) > 0: scenario/postcopy.py), and with
    a zero guest on a 10 Mbit/s link (slow enough that the push of 2^16 zero pages, 9 bytes each, is still far
    from the written pages): a requested zero page is save_zero_page's 9 bytes (8-byte header + 1), not 4104."""
    nbytes = PAGE_BYTES if zero_fraction == 0.0 else 9
    run = simulate(**merge(PURE, {"network": {"latency": f"{latency}ns", "bandwidth": f"{link * 8}bit/s"},
                                  "machine": {"memory": {"zero_fraction": zero_fraction}}}))
    d_first = C_F + latency + (nbytes + IDSTR) * 10**9 // link + latency + C_P
    d = C_F + latency + nbytes * 10**9 // link + latency + C_P
    assert waits(run.events) == [d_first] + [d] * (K - 1)
    pages = [e for e in of(run.events, ev.Transfer) if e.kind == "pages"]
    assert sum(e.zero for e in pages) == (1 << 16 if zero_fraction else 0)


def test_two_vcpus_fault_at_once_on_neighbouring_words():
    """Two vCPUs fault at the same instant on pages 64 apart (words w and w - 1): both requests reach the source
    in the same wait, and the push ends no earlier than without them: both pages' wire time is taken from it
    (link_debt_ns accumulates). The second request's page (no idstr: the first named the block) lands first, in
    word w - 1, while the other vCPU still waits on word w: that placement wakes only its own vCPU."""
    two = merge(PURE, {})
    base = ((1 << 16) - 128) * 4096  # page 65408: word 1022, and page 65344 in word 1021
    two["machine"]["vcpus"] = [
        {"count": 1, "start": f"{START}ns", "workload": {"kind": "sequential", "rate": f"{RATE}B/s",
                                                         "offset": f"{base + off * 4096}B",
                                                         "working_set": f"{K * 4096}B"}} for off in (0, -64)]
    run = simulate(**two)
    faults = fault_events(run.events)
    assert len(faults) == 2 * K and {e.served for e in faults} == {"preempt"}
    assert sorted({e.page for e in faults if e.fault_ns == START}) == [65408 - 64, 65408]
    idle = merge(two, {})
    for group in idle["machine"]["vcpus"]:
        group["workload"]["rate"] = "0B/s"  # the same two vCPUs (vm_stop_per_vcpu), idle
    # the push moves 2^16 pages either way; the 2K requested pages (and one idstr) only move their wire time
    assert abs(completed_ns(run) - completed_ns(simulate(**idle))) < 100


def test_a_request_for_page_zero_finds_its_block():
    """A vCPU that writes page 0 as soon as the destination runs: page 0 went out in the push's first slice, so
    its request finds the bit clear (in flight) and the vCPU waits for that placement."""
    first = merge(PURE, {})
    first["machine"]["vcpus"][0].update(start="0ns", workload={"kind": "sequential", "rate": f"{RATE}B/s",
                                                               "offset": "0B", "working_set": "4096B"})
    run = simulate(**first)
    faults = fault_events(run.events)
    assert faults[0].page == 0 and faults[0].served == "in-flight" and faults[0].wait_bytes == 0
    assert tables.summary(run.events)["dirtysim"]["lost-pages"] == 0


def test_discard_of_several_blocks_is_one_write():
    """With a VGA (vga.vram, 1 MiB, and vga.rom, 64 pages = one bitmap word) every block sends its own discard:
    one run each; the stream carries them in one write of the sum; the push crosses both block boundaries."""
    run = simulate(**merge(PURE, {"machine": {"devices": [{"kind": "VGA", "vgamem_mb": 1}]}}))
    discards = {e.block: (e.pages, e.ranges, e.bytes) for e in of(run.events, ev.PostcopyDiscard)}
    assert discards == {"pc.ram": (1 << 16, 1, discard_bytes("pc.ram", 1)[1]),
                        "vga.vram": (256, 1, discard_bytes("vga.vram", 1)[1]),
                        "vga.rom": (64, 1, discard_bytes("vga.rom", 1)[1])}
    (write,) = [e for e in of(run.events, ev.Transfer) if e.kind == "postcopy-discard"]
    assert write.bytes == sum(b for _, _, b in discards.values()) == 30 + 32 + 31
    pages = [e for e in of(run.events, ev.Transfer) if e.kind == "pages"]
    assert {b: sum(e.normal + e.zero for e in pages if e.block == b) for b in discards} == {
        b: p for b, (p, _, _) in discards.items()}
    (end,) = [e for e in of(run.events, ev.OracleCheck) if e.at == "postcopy-complete"]
    assert (end.lost_pages, end.double_placed) == (0, 0)


def test_start_postcopy_before_migrate_is_refused_and_precopy_can_still_be_cancelled():
    """qmp_migrate_start_postcopy before migrate: QEMU's error; the migration then runs as precopy, and
    migrate-cancel is accepted (the VM was never stopped for a switch)."""
    run = simulate(**{"machine": {"memory": {"size": "64MiB"},
                                  "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "0B/s"}}]},
                      "migration": {"max_bandwidth": "16MiB/s", "start_at": "10ms", "timeout": "1s",
                                    "capabilities": {"postcopy-ram": True}},
                      "timeline": [{"at": "0ns", "migrate-start-postcopy": {}}, {"at": "50ms", "migrate-cancel": {}}]})
    results = [(e.action, e.result) for e in of(run.events, ev.TimelineAction)]
    assert results == [("migrate_start_postcopy",
                        "refused: Postcopy must be started after migration has been started"),
                       ("migrate_cancel", "done")]
    assert not of(run.events, ev.PostcopyStart)
    assert tables.summary(run.events)["status"] == "cancelled"


def test_without_preempt_the_scan_resumes_after_the_requested_page_not_before():
    """P18, the other side: ram_save_queue_pages moves the scan to the page after the requested one. A page just
    below it stays unsent until the scan wraps, so a vCPU that writes it 2 ms later still faults and requests it
    (urgent); the scan would have sent it within those 2 ms had it resumed at or before it."""
    x = (1 << 16) - 64  # page 65472, far above the push for the whole run
    pair = merge(PURE, {"network": {"send_buffer": "0B"}, "migration": {"capabilities": {"postcopy-preempt": False}}})
    pair["machine"]["vcpus"] = [
        {"count": 1, "start": f"{start}ns", "workload": {"kind": "sequential", "rate": f"{RATE}B/s",
                                                         "offset": f"{page * 4096}B", "working_set": "4096B"}}
        for page, start in ((x + 1, START), (x, START + 2_000_000))]
    run = simulate(**pair)
    first = {e.page: e for e in reversed(fault_events(run.events))}
    assert first[x + 1].fault_ns == START and first[x + 1].served == "urgent"
    assert first[x].fault_ns == START + 2_000_000 and first[x].served == "urgent"
