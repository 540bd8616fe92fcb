"""The convergence controls in the projections: rounds, vcpus, guest.csv, the summary and the plot series.

Each expected number is worked out by hand from the hand-built events below
(never through the fold under test), then one real run checks that replay
reproduces guest.csv byte for byte.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from matplotlib.figure import Figure

import dirtysim
from builders import simulate
from dirtysim.events import schema as ev
from dirtysim.events.replay import read_log
from dirtysim.report import plots, tables
from dirtysim.report.files import write_replay, write_run

MS = 10**6
PAGE = 4096
MIB = 1 << 20


def _log(*events: tuple) -> list[ev.Event]:
    """Events from (class, t_ms, fields) with seq numbered from 0."""
    return [cls(seq=i, t_ns=int(t * MS), **fields) for i, (cls, t, fields) in enumerate(events)]


def _started(auto_converge=False, dirty_limit=False):
    scenario = {"network": {"latency": 0}, "migration": {"downtime_limit": 300 * MS, "capabilities": {
        "auto_converge": auto_converge, "dirty_limit": dirty_limit}}}
    return (ev.RunStarted, 0, dict(name="conv", seed=1, version="0", schema_version=2, ram_bytes=8 * MIB,
                                   page_size=PAGE, scenario=scenario))


def _sample(t, interval_ms, ran_ms, writes, throttle_ms=(0, 0), dirtylimit_ms=(0, 0)):
    return (ev.GuestSample, t, dict(interval_ns=interval_ms * MS, ran_ns=[r * MS for r in ran_ms], writes=list(writes),
                                    throttle_ns=[x * MS for x in throttle_ms],
                                    dirtylimit_ns=[x * MS for x in dirtylimit_ms]))


def _vcpu(t, vcpu, throttle_ms=0, dirtylimit_ns=0):
    return (ev.VcpuStats, t, dict(vcpu=vcpu, writes=0, faults=0, fault_ns=0, throttle_ns=throttle_ms * MS,
                                  dirtylimit_ns=dirtylimit_ns))


def _sync(t, count, reason, dirty_period=0, high=0):
    return (ev.BitmapSync, t, dict(dirty_sync_count=count, reason=reason, pending_before=0, threshold_size=0,
                                   new_dirty_pages=0, migration_dirty_pages=0, period_closed=False,
                                   dirty_pages_rate=0, cost_ns=0, bytes_dirty_period=dirty_period,
                                   dirty_rate_high_cnt=high))


def _throttle(t, pct):
    return (ev.CpuThrottle, t, dict(percentage=pct, reason="auto-converge" if pct else "stop"))


def _auto_converge_log() -> list[ev.Event]:
    """auto-converge: 20 % then 30 %, stopped at completion; migrate at 200 ms; five guest samples."""
    return _log(
        _started(auto_converge=True),
        _sample(100, 100, (100, 100), (2560, 1280)),  # before: 3840 pages = 15 MiB in 0.1 s
        (ev.MigrateSetParameters, 150, dict(parameters={"max-bandwidth": 1 << 20})),  # before migrate
        (ev.MigrationStatus, 200, dict(status="setup")),
        _sample(250, 100, (90, 90), (100, 100)),  # starts at 150 ms: straddles migrate, in neither
        _vcpu(260, 0), _vcpu(260, 1),
        _sync(260, 1, "setup"),
        _sample(350, 100, (80, 60), (1280, 640), throttle_ms=(20, 40)),
        _throttle(400, 20),  # migration_trigger_throttle, inside the sync that follows
        _vcpu(400, 0, throttle_ms=5), _vcpu(400, 1, throttle_ms=7),
        _sync(400, 2, "exact", dirty_period=123_456, high=2),
        _sample(450, 100, (50, 50), (0, 2560), throttle_ms=(50, 50)),
        _throttle(500, 30),
        (ev.MigrateSetParameters, 550, dict(parameters={"downtime-limit": 500 * MS})),
        (ev.VcpusStopped, 600, {}),
        _sample(600, 150, (75, 75), (0, 0)),  # taken at the stop: still during
        _vcpu(610, 0, throttle_ms=11), _vcpu(610, 1, throttle_ms=13),
        _sync(610, 3, "final"),
        (ev.MigrationStatus, 650, dict(status="completed")),
        _throttle(650, 0),
        _sample(650, 1, (0, 0), (0, 0)),  # after the stop: in neither
        (ev.RunFinished, 655, dict(stop_reason="completed")),
    )


def test_rounds_carry_the_throttle_in_force_and_the_trigger_inputs():
    rows = tables.rounds(_auto_converge_log())
    assert [r["cpu-throttle-percentage"] for r in rows] == [0, 20, 30]  # 20 set inside sync 2
    assert [r["vcpu-throttle-ms"] for r in rows] == [0, 12.0, 24.0]  # 5 + 7, 11 + 13 ms since the previous sync
    assert [r["vcpu-dirtylimit-ms"] for r in rows] == [0, 0, 0]
    assert [r["bytes-dirty-period"] for r in rows] == [0, 123_456, 0]
    assert [r["dirty-rate-high-cnt"] for r in rows] == [0, 2, 0]
    assert [r["dirty-limit-throttle-time-per-round"] for r in rows] == [0, 0, 0]
    assert tables.ROUND_FIELDS[-16:-9] == ["cpu-throttle-percentage", "dirty-limit-throttle-time-per-round",
                                        "dirty-limit-ring-full-time", "vcpu-throttle-ms", "vcpu-dirtylimit-ms",
                                        "bytes-dirty-period", "dirty-rate-high-cnt"]  # appended after the old ones
    assert tables.ROUND_FIELDS[:3] == ["time", "dirty-sync-count", "reason"]


def test_vcpu_rows_carry_the_sleeps():
    rows = tables.vcpu_rounds(_auto_converge_log())
    assert [(r["dirty-sync-count"], r["vcpu"], r["throttle-ms"]) for r in rows] == [
        (1, 0, 0.0), (1, 1, 0.0), (2, 0, 5.0), (2, 1, 7.0), (3, 0, 11.0), (3, 1, 13.0)]
    assert tables.VCPU_FIELDS[-4:-2] == ["throttle-ms", "dirtylimit-ms"]


def test_guest_rows_from_first_principles():
    rows = tables.guest_rows(_auto_converge_log())
    assert len(rows) == 6 * 2
    # ms since migrate (200 ms) when taken, negative before it
    assert [r["time-ms"] for r in rows[::2]] == [-100.0, 50.0, 150.0, 250.0, 400.0, 450.0]
    assert rows[5] == {"time-ms": 150.0, "vcpu": 1, "interval-ms": 100.0, "run-fraction": 0.6, "writes": 640,
                       "write-mib-s": 25.0,  # 640 pages = 2.5 MiB in 0.1 s
                       "throttle-ms": 40.0, "dirtylimit-ms": 0.0, "cpu-throttle-percentage": 0}
    assert [r["cpu-throttle-percentage"] for r in rows[::2]] == [0, 0, 0, 20, 30, 0]  # in force when taken
    assert rows[-1]["interval-ms"] == 1.0 and rows[-1]["run-fraction"] == 0.0
    header = tables.csv_bytes(rows, tables.GUEST_FIELDS).splitlines()[0].decode()
    assert header == ("time-ms,vcpu,interval-ms,run-fraction,writes,write-mib-s,throttle-ms,dirtylimit-ms,"
                      "cpu-throttle-percentage")


def test_summary_of_an_auto_converge_run():
    out = tables.summary(_auto_converge_log())
    assert "cpu-throttle-percentage" not in out  # stopped at completion: cpu_throttle_active() is false
    assert "dirty-limit-throttle-time-per-round" not in out and "dirty-limit-ring-full-time" not in out
    running = tables.summary(_auto_converge_log()[:-6] + [ev.RunFinished(seq=99, t_ns=10**9, stop_reason="x")])
    assert running["cpu-throttle-percentage"] == 30
    assert list(running)[list(running).index("ram") + 1] == "cpu-throttle-percentage"
    d = out["dirtysim"]
    assert d["max-cpu-throttle-percentage"] == 30
    assert (d["vcpu-throttle-ms"], d["vcpu-dirtylimit-ms"]) == (36.0, 0.0)
    assert d["parameter-changes"] == [{"time-ms": -50.0, "parameters": {"max-bandwidth": 1 << 20}},
                                      {"time-ms": 350.0, "parameters": {"downtime-limit": 500 * MS}}]
    # during: the samples at 350, 450 and 600 ms (not the straddling one, not the one after the stop)
    ran, span = (80 + 60) + (50 + 50) + (75 + 75), (100 + 100 + 150) * 2
    written_mib = (1280 + 640 + 2560) * PAGE / MIB  # 17.5 MiB in 0.35 s
    assert d["guest-slowdown"] == {"run-fraction": round(ran / span, 6), "write-rate-mib-s": written_mib / 0.35,
                                   "before-write-rate-mib-s": 150.0}
    assert d["guest-slowdown"]["run-fraction"] == 0.557143


def test_throttle_fields_absent_without_the_capabilities():
    """Neither capability (and a schema-1 scenario without ``capabilities``): no throttle field in query-migrate."""
    events = _auto_converge_log()
    events[0] = ev.RunStarted(seq=0, t_ns=0, name="old", seed=1, version="0", schema_version=1, ram_bytes=8 * MIB,
                              page_size=PAGE, scenario={"network": {"latency": 0},
                                                        "migration": {"downtime_limit": 300 * MS}})
    out = tables.summary(events)
    assert "cpu-throttle-percentage" not in out and "dirty-limit-ring-full-time" not in out
    assert out["dirtysim"]["max-cpu-throttle-percentage"] == 30  # what happened is still reported


def _dirty_limit_log() -> list[ev.Event]:
    return _log(
        _started(dirty_limit=True),
        (ev.MigrationStatus, 100, dict(status="setup")),
        _sync(110, 1, "setup"),
        (ev.DirtyLimit, 200, dict(reason="set", quota=1)),
        _sync(210, 2, "exact"),
        (ev.DirtyLimit, 300, dict(reason="round", quota=1, period_ms=1000, rates=[60, 20],
                                  throttle_us_per_full=[5000, 3000], throttle_time_per_round=5000,
                                  ring_full_time=266_666)),
        _vcpu(310, 0, dirtylimit_ns=5_000_000), _vcpu(310, 1, dirtylimit_ns=2_500_000),
        _sync(310, 3, "exact"),
        _sync(410, 4, "exact"),
        (ev.RunFinished, 500, dict(stop_reason="timeout")),
    )


def test_dirty_limit_in_rounds_and_summary():
    rows = tables.rounds(_dirty_limit_log())
    assert [r["dirty-limit-throttle-time-per-round"] for r in rows] == [0, 0, 5000, 5000]  # the last round holds
    assert [r["dirty-limit-ring-full-time"] for r in rows] == [0, 0, 266_666, 266_666]
    assert [r["vcpu-dirtylimit-ms"] for r in rows] == [0, 0, 7.5, 0]
    assert [r["cpu-throttle-percentage"] for r in rows] == [0, 0, 0, 0]
    in_service = tables.summary(_dirty_limit_log())
    assert (in_service["dirty-limit-throttle-time-per-round"], in_service["dirty-limit-ring-full-time"]) == \
        (5000, 266_666)
    assert "cpu-throttle-percentage" not in in_service  # auto-converge is off
    assert in_service["dirtysim"]["vcpu-dirtylimit-ms"] == 7.5
    before = tables.summary(_dirty_limit_log()[:3] + [ev.RunFinished(seq=3, t_ns=150 * MS, stop_reason="x")])
    assert "dirty-limit-throttle-time-per-round" not in before  # dirtylimit_in_service() is false until the set
    just_set = tables.summary(_dirty_limit_log()[:5] + [ev.RunFinished(seq=5, t_ns=250 * MS, stop_reason="x")])
    assert (just_set["dirty-limit-throttle-time-per-round"], just_set["dirty-limit-ring-full-time"]) == (0, 0)


def test_guest_slowdown_without_a_migration_is_all_before():
    events = _log(_started(), _sample(100, 100, (100, 50), (256, 0)), _sample(300, 200, (200, 200), (0, 256)),
                  (ev.RunFinished, 300, dict(stop_reason="timeout")))
    slow = tables.summary(events)["dirtysim"]["guest-slowdown"]
    assert slow == {"run-fraction": None, "write-rate-mib-s": None, "before-write-rate-mib-s": round(2 / 0.3, 3)}


def test_series_and_plots_draw_what_they_return():
    events = _auto_converge_log()
    fig = Figure()
    ax = fig.subplots()
    guest = plots.plot_guest(plots.guest_series(tables.guest_rows(events)), ax)
    assert guest.ax is ax
    assert np.allclose(guest["time-s"], [-0.1, 0.05, 0.15, 0.25, 0.4, 0.45])
    assert np.allclose(guest["run-fraction"], [1.0, 0.9, 0.7, 0.5, 0.5, 0.0])  # mean of the two vCPUs
    assert np.allclose(guest["write-mib-s"], [75.0, 3.906, 37.5, 50.0, 0.0, 0.0])  # of guest.csv's 3 decimals
    assert np.array_equal(ax.lines[0].get_ydata(), guest["run-fraction"])
    throttle = plots.plot_throttle(plots.throttle_series(events), ax=None)
    assert isinstance(throttle.ax.figure, Figure) and throttle.ax is not ax
    assert np.allclose(throttle["time-s"], [0, 0.2, 0.3, 0.45, 0.455])  # from migrate to the last event
    assert throttle["cpu-throttle-percentage"].tolist() == [0, 20, 30, 0, 0]
    assert len(throttle["dirty-limit-ms"]) == 0
    rates = plots.plot_rates(plots.rate_series(events), fig.subplots())
    assert np.allclose(rates["sync-time-s"], [0.06, 0.2, 0.41])


def test_guest_series_reads_guest_csv_back():
    events = _auto_converge_log()
    rows = tables.guest_rows(events)
    text = tables.csv_bytes(rows, tables.GUEST_FIELDS).decode()
    from_csv = plots.guest_series(list(csv.DictReader(io.StringIO(text))))
    for key, values in plots.guest_series(rows).items():
        assert np.allclose(from_csv[key], values), key


def test_dirty_limit_series_steps_at_each_round():
    s = plots.throttle_series(_dirty_limit_log())
    assert np.allclose(s["dirty-limit-time-s"], [0.1, 0.2, 0.4])  # set, round, end of log
    assert s["dirty-limit-ms"].tolist() == [0.0, 5.0, 5.0]


def test_overlay_runs_share_the_right_axis():
    events = _auto_converge_log()
    ax = Figure().subplots()
    series = plots.guest_series(tables.guest_rows(events))
    plots.plot_guest(series, ax, label="a", color="C0")
    plots.plot_guest(series, ax, label="b", color="C1")
    assert len(ax.figure.axes) == 2  # the axes and one twin, not one twin per run
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_convergence_figure_is_titled_with_the_run():
    events = _auto_converge_log()
    assert plots.convergence_figure(events).axes[0].get_title() == "conv: completed, 3 syncs"
    titled = plots.convergence_figure(events, title="conv / variant-x")
    assert titled.axes[0].get_title().startswith("conv / variant-x:")
    assert len([a for a in titled.axes if a.get_ylabel()]) >= 4 + 1  # four panels and the throttle's twin axis


@pytest.fixture(scope="module")
def throttled_run():
    """A small auto-converge run whose guest is throttled before the timeout."""
    return simulate(machine={"memory": {"size": "64MiB"}, "vcpus": [
        {"count": 2, "workload": {"kind": "hotset", "rate": "8MiB/s", "hot": "32MiB", "hot_share": 1.0}}]},
        migration={"max_bandwidth": "16MiB/s", "timeout": "5s", "capabilities": {"auto-converge": True}})


def test_replay_reproduces_guest_csv(tmp_path, throttled_run):
    write_run(throttled_run, tmp_path / "run", plots=False)
    _, events = read_log(tmp_path / "run" / "events.jsonl")
    write_replay(events, tmp_path / "re", plots=False)
    original = (tmp_path / "run" / "guest.csv").read_bytes()
    assert original == (tmp_path / "re" / "guest.csv").read_bytes()
    rows = list(csv.DictReader(io.StringIO(original.decode())))
    assert len(rows) == 2 * sum(isinstance(e, ev.GuestSample) for e in events)
    assert max(float(r["throttle-ms"]) for r in rows) > 0 and {r["cpu-throttle-percentage"] for r in rows} >= {"0", "20"}
    guest = dirtysim.load(tmp_path / "run").guest
    assert list(guest.columns) == tables.GUEST_FIELDS and len(guest) == len(rows)
    (tmp_path / "run" / "guest.csv").unlink()  # a directory written before guest.csv existed
    assert list(dirtysim.load(tmp_path / "run").guest.columns) == tables.GUEST_FIELDS
