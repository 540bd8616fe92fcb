"""``dirtysim trace``: Chrome trace JSON with what Perfetto's JSON importer needs, derived from the log."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from builders import simulate
from dirtysim.cli import main
from dirtysim.report.files import write_run
from dirtysim.report.tables import summary

ROOT = Path(__file__).resolve().parent.parent
VHOST_NET = {"kind": "vhost-user-net", "queues": 1, "rx": "1Gbit/s", "packet": 1500, "buffers": "16MiB"}
CASES = {
    "manual-protect, completed": {},
    "ring 1024 + vhost, completed": {"dirty_tracking": {"mode": "ring", "ring_size": 1024},
                                     "machine": {"devices": [VHOST_NET]}},
    "timeout": {"migration": {"max_bandwidth": "32MiB/s", "timeout": "2s"}},
    "postcopy": {"machine": {"memory": {"size": "256MiB"}},
                 "migration": {"max_bandwidth": "64MiB/s", "x-postcopy-after-syncs": 2,
                               "capabilities": {"postcopy-ram": True}}},
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def traced(request, tmp_path_factory):
    """(events, summary, trace JSON) of a small run, traced through the CLI."""
    result = simulate(**CASES[request.param])
    out = tmp_path_factory.mktemp("t")
    write_run(result, out, plots=False)
    res = CliRunner().invoke(main, ["trace", str(out / "events.jsonl"), "-o", str(out / "trace.json")])
    assert res.exit_code == 0, res.output
    return result.events, summary(result.events), json.loads((out / "trace.json").read_text())


def _by_track(trace: dict) -> dict[tuple, list[dict]]:
    tracks = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] != "M":
            tracks[(e["pid"], e["tid"])].append(e)
    return tracks


def _thread_names(trace: dict) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


def test_every_event_has_the_fields_perfetto_needs(traced):
    _, _, trace = traced
    assert isinstance(trace["traceEvents"], list) and trace["traceEvents"]
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "C", "i", "M"), e
        assert isinstance(e["name"], str) and e["name"], e
        assert all(isinstance(e[k], int) for k in ("pid", "tid")), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        elif e["ph"] == "C":
            assert e["args"] and all(isinstance(v, (int, float)) for v in e["args"].values()), e
        elif e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "thread_sort_index") and e["args"], e
        elif e["ph"] == "i":
            assert e["s"] == "t", e
    used = {tid for _, tid in _by_track(trace) if tid}
    assert used == set(_thread_names(trace)), "every track with events is named, and only those"


def test_timestamps_monotonic_and_slices_disjoint_per_track(traced):
    _, _, trace = traced
    for track, events in _by_track(trace).items():
        ts = [e["ts"] for e in events]
        assert ts == sorted(ts), track
        end = 0.0
        for e in (e for e in events if e["ph"] == "X"):
            assert e["ts"] >= end - 1e-6, (track, e)
            end = e["ts"] + e["dur"]


def test_vcpu_tracks_tile_the_run(traced):
    """running, stall and stopped slices cover each vCPU's time from 0 to the end of the run, without gaps."""
    events, _, trace = traced
    names, tracks = _thread_names(trace), _by_track(trace)
    vcpus = [tid for tid, name in names.items() if name.startswith("vCPU ")]
    assert len(vcpus) == 2
    for tid in vcpus:
        slices = [e for e in tracks[(1, tid)] if e["ph"] == "X"]
        assert slices[0]["ts"] == 0
        for a, b in zip(slices, slices[1:]):
            assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=1e-6)
        assert slices[-1]["ts"] + slices[-1]["dur"] == pytest.approx(events[-1].t_ns / 1000)
        stats = [e for e in tracks[(1, tid)] if e["name"] == "vcpu-stats"]
        assert sum(e["args"]["writes"] for e in stats) > 0


def test_migration_thread_and_counters_agree_with_the_summary(traced):
    _, s, trace = traced
    names, tracks = _thread_names(trace), _by_track(trace)
    thread = tracks[(1, next(t for t, n in names.items() if n == "migration thread"))]
    syncs = [e for e in thread if e["name"].startswith("migration_bitmap_sync #")]
    assert len(syncs) == s["ram"]["dirty-sync-count"]
    sent = sum(e["args"]["bytes"] for e in thread if e["ph"] == "X" and "bytes" in e["args"])
    assert sent == s["ram"]["transferred"]
    normal = sum(e["args"]["normal"] for e in thread if e["name"] == "send pages")
    assert normal == s["ram"]["normal"]
    counters = defaultdict(list)
    for e in trace["traceEvents"]:
        if e["ph"] == "C":
            counters[e["name"]].append(e["args"])
    assert counters["remaining"][-1]["bytes"] == s["ram"]["remaining"]
    assert counters["transferred"][-1]["bytes"] == s["ram"]["transferred"]
    assert counters["bandwidth"] and all(c["MiB/s"] >= 0 for c in counters["bandwidth"])
    status = [e["name"] for e in tracks[(1, next(t for t, n in names.items() if n == "migration status"))]
              if e["ph"] == "X"]
    assert status[:2] == ["setup", "active"]
    last = "postcopy-active" if "postcopy-faults" in s["dirtysim"] else "device (vCPUs stopped)"
    assert (status[-1] == last) == (s["status"] == "completed")


def test_ring_and_vhost_tracks(traced):
    events, _, trace = traced
    names = set(_thread_names(trace).values())
    ring = events[0].scenario["dirty_tracking"]["mode"] == "ring"
    assert ("kvm-reaper" in names) == ring
    assert any(n.startswith("vhost ") for n in names) == bool(events[0].scenario["machine"]["devices"])
    if ring:
        exits = [e for e in trace["traceEvents"] if e["name"] == "KVM_EXIT_DIRTY_RING_FULL"]
        assert len(exits) == summary(events)["dirtysim"]["ring-full-exits"] > 0


def test_memslot_inhibit_holds_every_vcpu(tmp_path):
    """memory-map.yaml toggles PAM: KVM's atomic memslot update holds every vCPU out (a slice on each)."""
    from dirtysim.scenario.load import load_scenario
    from dirtysim.sim import run

    result = run(load_scenario(ROOT / "scenarios" / "memory-map.yaml"), progress=False)
    write_run(result, tmp_path, plots=False)
    res = CliRunner().invoke(main, ["trace", str(tmp_path / "events.jsonl")])
    assert res.exit_code == 0, res.output
    trace = json.loads((tmp_path / "trace.json").read_text())
    held = defaultdict(int)
    for e in trace["traceEvents"]:
        if e["name"] == "memslot update (inhibited)":
            held[e["tid"]] += 1
    assert len(held) == 2 and len(set(held.values())) == 1 and min(held.values()) > 0


def test_a_bad_log_is_refused(tmp_path):
    (tmp_path / "events.jsonl").write_bytes(b"")
    res = CliRunner().invoke(main, ["trace", str(tmp_path / "events.jsonl")])
    assert (res.exit_code, res.stderr) == (2, f"{tmp_path / 'events.jsonl'}:1: empty file: no dirtysim-log header\n")
    assert not (tmp_path / "trace.json").exists()


@pytest.mark.parametrize("traced", ["postcopy"], indirect=True)
def test_postcopy_userfaults_on_the_vcpu_tracks(traced):
    """After the switch each vCPU's track shows its userfaults (fault to placement) between destination runs."""
    events, s, trace = traced
    faults = [e for e in trace["traceEvents"] if e["name"] == "userfault"]
    assert len(faults) == s["dirtysim"]["postcopy-faults"] > 0
    assert sum(e["dur"] for e in faults) == pytest.approx(s["dirtysim"]["postcopy-wait-ms"] * 1000, abs=1)
    assert any(e["name"] == "running (destination)" for e in trace["traceEvents"])
