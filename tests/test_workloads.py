"""The workload kinds' statistics against their definitions: zipf, sequential, database, and start/stop times."""

from __future__ import annotations

import numpy as np
import pytest

from builders import NO_COSTS, of, scenario
from dirtysim.dirty import kernels as K
from dirtysim.dirtyrate.config import DirtyRateConfig
from dirtysim.events import schema as ev
from dirtysim.sim import run_dirtyrate

pytestmark = pytest.mark.rules
MIB = 1 << 20


def _tables(kind: int, pages: int, **extra):
    """One vCPU's ``vi``/``vf`` columns as ``Guest`` builds them, for ``other_page``."""
    vi = np.zeros((K.VI_ROWS, 1), dtype=np.int64)
    vf = np.zeros((K.VF_ROWS, 1))
    vi[K.VI_KIND], vi[K.VI_FIRST], vi[K.VI_PAGES], vi[K.VI_LOG_PAGES] = kind, 1000, pages, 1
    for name, value in extra.items():
        (vf if name.startswith("VF_") else vi)[getattr(K, name)] = value
    return vi, vf


def _pages(vi, vf, u):
    return np.array([K.other_page(x, 0, vi, vf) for x in u])


@pytest.mark.parametrize("s", [0.8, 1.0, 1.5])
def test_zipf_ranks_follow_the_power_law(s):
    """P(rank k) = ((k+1)^(1-s) - k^(1-s)) / ((N+1)^(1-s) - 1) (s = 1: ln((k+1)/k) / ln(N+1)), ranks scattered."""
    n = 4096
    vi, vf = _tables(K.KIND_ZIPF, n, VF_ZIPF_S=s)
    u = np.random.default_rng(1).random(200_000)
    pages = _pages(vi, vf, u) - 1000
    assert pages.min() >= 0 and pages.max() < n
    for k in (1, 2, 3, 10):
        page = (k - 1) * 2654435761 % n
        p = np.log((k + 1) / k) / np.log(n + 1) if s == 1.0 else ((k + 1) ** (1 - s) - k ** (1 - s)) / (
            (n + 1) ** (1 - s) - 1)
        got = np.count_nonzero(pages == page)
        assert abs(got - p * len(u)) <= 5 * (p * len(u)) ** 0.5 + 1, (k, got, p * len(u))
    top = [(k - 1) * 2654435761 % n for k in (1, 2)]
    assert abs(top[1] - top[0]) > 64  # neighbouring ranks are not neighbouring pages


def test_sequential_sweeps_its_working_set_and_wraps():
    vi, vf = _tables(K.KIND_SEQUENTIAL, 5)
    pages = _pages(vi, vf, np.random.default_rng(2).random(12))
    assert pages.tolist() == [1000, 1001, 1002, 1003, 1004] * 2 + [1000, 1001]


def test_database_appends_its_log_share_sequentially_and_spreads_the_rest():
    vi, vf = _tables(K.KIND_DATABASE, 4096, VI_LOG_FIRST=1000 + 2048, VI_LOG_PAGES=64, VF_LOG_SHARE=0.25,
                     VI_HOT_FIRST=1000, VI_HOT_PAGES=256, VF_HOT_SHARE=0.5)
    u = np.random.default_rng(3).random(40_000)
    pages = _pages(vi, vf, u)
    log = u < 0.25
    assert np.array_equal(pages[log], 3048 + np.arange(log.sum()) % 64)  # appends in order, wrapping
    rest = pages[~log]
    hot = np.count_nonzero((rest >= 1000) & (rest < 1256))
    assert abs(hot / len(rest) - 0.5) < 0.02  # the hot/cold mixture on the other writes


def _run(groups, size="1GiB"):
    sc = scenario(costs=NO_COSTS, machine={"memory": {"size": size, "zero_fraction": 0.0}, "vcpus": groups})
    result = run_dirtyrate(sc, DirtyRateConfig.from_qmp(1), 10**8)  # window 100 ms .. 1100 ms
    assert result.error is None, result.error
    return of(result.events, ev.DirtyRateMeasured)[0]


def test_a_group_writes_only_between_its_start_and_stop():
    """64 MiB/s from 300 to 700 ms: 0.4 s x 16384 pages/s inside a 100..1100 ms window, nothing else."""
    m = _run([{"count": 1, "start": "300ms", "stop": "700ms", "workload": {"kind": "uniform", "rate": "64MiB/s"}}])
    assert m.guest_writes == 16384 * 4 // 10


def test_every_kind_runs_in_a_guest_with_the_rates_it_was_given():
    groups = [{"count": 1, "workload": {"kind": "zipf", "rate": "32MiB/s", "exponent": 1.1}},
              {"count": 1, "workload": {"kind": "sequential", "rate": "32MiB/s", "offset": "256MiB",
                                        "working_set": "64MiB"}},
              {"count": 1, "workload": {"kind": "database", "rate": "32MiB/s", "hot": "16MiB", "hot_share": 0.9,
                                        "log": "4MiB", "log_share": 0.5, "offset": "512MiB", "working_set": "128MiB"}}]
    m = _run(groups)
    assert m.guest_writes == 3 * 8192
    # sequential: every write a new page (8192 < 16384 pages of its set); zipf and the log repeat pages
    assert 8192 < m.written_pages < 3 * 8192


@pytest.mark.parametrize("group,message", [
    ("workload: {kind: zipf, rate: 1MiB/s, exponent: 0}",
     "machine.vcpus.0.workload.exponent: out of range (got 0; allowed: > 0.0 and <= 4.0)"),
    ("workload: {kind: database, rate: 1MiB/s, hot: 1MiB, hot_share: 0.5, log: 2GiB, log_share: 0.1}",
     "machine.vcpus.0.workload.log: the log does not fit in the working set (got 2GiB; allowed: 4KiB <= log, "
     "log_offset + log <= 1GiB)"),
    ("workload: {kind: database, rate: 1MiB/s, hot: 1MiB, hot_share: 0.5, log: 6KiB, log_share: 0.1}",
     "machine.vcpus.0.workload.log: not a whole number of 4KiB pages"),
    ("start: 2s, stop: 1s, workload: {kind: uniform, rate: 1MiB/s}",
     "stop must come after start (got 1s; allowed: after start = 2s)"),
])
def test_bad_workloads_are_named_by_key(tmp_path, group, message):
    from dirtysim.scenario.load import ScenarioError, load_scenario

    path = tmp_path / "w.yaml"
    path.write_text("machine:\n  memory: {size: 1GiB}\n  vcpus:\n    - {count: 1, " + group + "}\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert message in str(exc.value)


def test_phases_set_the_rate_of_the_quanta_that_start_in_them():
    """Idle 200 ms, 64 MiB/s 300 ms, repeated: in 100..1100 ms the bursts 200..500 and 700..1000 write 0.6 s."""
    m = _run([{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"},
               "phases": [{"duration": "200ms", "rate": "0B/s"}, {"duration": "300ms", "rate": "64MiB/s"}]}])
    assert m.guest_writes in (9830, 9831)  # 16384 pages/s x 0.6 s, the carry from before the window decides


def test_a_migration_of_a_phased_guest_loses_nothing():
    from builders import simulate

    result = simulate(costs=NO_COSTS, machine={"memory": {"size": "256MiB", "zero_fraction": 0.0}, "vcpus": [
        {"count": 2, "workload": {"kind": "hotset", "rate": "1MiB/s", "hot": "32MiB", "hot_share": 0.9},
         "phases": [{"duration": "1s", "rate": "8MiB/s"}, {"duration": "500ms", "rate": "128MiB/s"}]}]},
        migration={"start_at": "200ms", "max_bandwidth": "256MiB/s", "timeout": "20s"})
    check = of(result.events, ev.OracleCheck)[-1]
    assert result.stop_reason in ("completed", "timeout") and check.lost_pages == 0
    # the Python send path ran (a schedule keeps the fused loop out): every slice is its own Transfer event
    assert len([t for t in of(result.events, ev.Transfer) if t.kind == "pages"]) > 100


def test_visible_rate_inverts_the_working_set_curve():
    """uniform: N (1 - exp(-r / N)) = D per second, solved for r; hotset: the sum over its two regions."""
    from dirtysim.scenario.visible import distinct_pages, write_rate

    n = 262144
    r = write_rate(16384, [(n, 1.0)])
    assert r == pytest.approx(-n * np.log1p(-16384 / n), rel=1e-6)
    regions = [(32768, 0.9), (n - 32768, 0.1)]
    r = write_rate(20000, regions)
    assert distinct_pages(r, regions) == pytest.approx(20000, rel=1e-6)
    with pytest.raises(ValueError, match="hold only 262144"):
        write_rate(n, [(n, 1.0)])


def test_a_group_given_by_its_visible_rate_shows_that_rate_to_a_measurement():
    """Two vCPUs sharing 1 GiB, asked to show 64 MiB/s of distinct pages: dirty-bitmap measures about that."""
    sc = scenario(costs=NO_COSTS, machine={"memory": {"size": "1GiB", "zero_fraction": 0.0}, "vcpus": [
        {"count": 2, "workload": {"kind": "uniform", "visible_rate": "64MiB/s"}}]})
    assert sc.machine.vcpus[0].workload.rate > 32 * MIB  # each vCPU writes more than half: repeats are invisible
    result = run_dirtyrate(sc, DirtyRateConfig.from_qmp(1, mode="dirty-bitmap"), 10**8)
    (m,) = of(result.events, ev.DirtyRateMeasured)
    assert abs(m.written_pages - 16384) < 0.01 * 16384


def test_a_phase_boundary_inside_a_quantum_takes_effect_at_the_next_quantum():
    """Phases of 1.5, 1 and 0.5 ms (cycle 3 ms) with 1 ms quanta: only quanta starting at 2 ms (mod 3) burst."""
    m = _run([{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"},
               "phases": [{"duration": "1500us", "rate": "0B/s"}, {"duration": "1ms", "rate": "64MiB/s"},
                          {"duration": "500us", "rate": "0B/s"}]}])
    bursts = sum(1 for t in range(100, 1100) if t % 3 == 2)  # quanta starting in the window, by start time (ms)
    assert abs(m.guest_writes - bursts * 16384 / 1000) <= 1


def test_a_data_only_workload_never_writes_free_memory():
    """Half the RAM is zero at boot (2 MiB runs); a data-only writer leaves every zero page zero."""
    from dirtysim.machine import Machine
    from dirtysim.events.log import Recorder
    import simpy

    sc = scenario(costs=NO_COSTS, seed=4, machine={"memory": {"size": "256MiB", "zero_fraction": 0.5}, "vcpus": [
        {"count": 2, "workload": {"kind": "hotset", "rate": "256MiB/s", "hot": "16MiB", "hot_share": 0.5,
                                  "data_only": True}}]})
    env = simpy.Environment()
    m = Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(sc.seed))
    before = m.ram_list.nonzero.copy()
    m.start()
    m.guest.advance(2 * 10**9, False)  # quanta starting in the first 2 s: 256 MiB/s x 2 vCPUs would touch every page of a 256 MiB guest
    assert m.guest.total("writes") == 2 * 2 * 65536
    assert np.array_equal(m.ram_list.nonzero, before)  # no zero page was written: free memory stays zero
    data_pages = int(np.bitwise_count(before).sum())
    assert 0.3 < data_pages / 65536 < 0.7
    assert int(np.bitwise_count(m.ram_list.stale & before).sum()) == data_pages  # stale only where data is


def test_data_only_needs_whole_runs(tmp_path):
    from dirtysim.scenario.load import ScenarioError, load_scenario

    path = tmp_path / "d.yaml"
    path.write_text("machine:\n  memory: {size: 1GiB, zero_fraction: 0.5}\n  vcpus:\n    - count: 1\n"
                    "      workload: {kind: uniform, rate: 1MiB/s, offset: 1MiB, data_only: true}\n")
    with pytest.raises(ScenarioError, match="a data-only working set is whole 2MiB runs"):
        load_scenario(path)


def _machine(groups, zero_fraction=0.5, size="256MiB", seed=4):
    from dirtysim.machine import Machine
    from dirtysim.events.log import Recorder
    import simpy

    sc = scenario(costs=NO_COSTS, seed=seed, machine={"memory": {"size": size, "zero_fraction": zero_fraction},
                                                      "vcpus": groups})
    env = simpy.Environment()
    return Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(sc.seed))


def test_data_only_vcpus_get_their_runs_and_clipped_regions():
    """Two data-only vCPUs: each its own runs in one table; a hot region or log past the data is clipped."""
    m = _machine([
        {"count": 1, "workload": {"kind": "hotset", "rate": "1MiB/s", "hot": "64MiB", "hot_offset": "64MiB",
                                  "hot_share": 0.9, "working_set": "128MiB", "data_only": True}},
        {"count": 1, "workload": {"kind": "database", "rate": "1MiB/s", "hot": "8MiB", "hot_share": 0.5,
                                  "log": "100MiB", "log_offset": "16MiB", "log_share": 0.3, "offset": "128MiB",
                                  "working_set": "128MiB", "data_only": True}}])
    g, vi, vf = m.guest, m.guest.vi, m.guest.vf
    runs0, runs1 = m._runs(m.scenario.machine.vcpus[0]), m._runs(m.scenario.machine.vcpus[1])
    assert g.runs.tolist() == [0, *runs0.tolist(), *runs1.tolist()]
    assert vi[K.VI_RUNS_OFF].tolist() == [1, 1 + len(runs0)] and vi[K.VI_RUNS_N].tolist() == [len(runs0), len(runs1)]
    pages = [len(runs0) * 512, len(runs1) * 512]
    assert vi[K.VI_PAGES].tolist() == pages and all(0 < p < 32768 for p in pages)  # about half of 128 MiB is data
    # vCPU 0: the hot region starts at data page 16384, past the ~16384 data pages: clipped, hot share gone if empty
    assert vi[K.VI_HOT_PAGES, 0] == max(0, min(16384, pages[0] - 16384))
    assert (vf[K.VF_HOT_SHARE, 0] == 0.0) == (vi[K.VI_HOT_PAGES, 0] == 0)
    # vCPU 1: the log starts at data page 4096 and is clipped to the data that follows it
    first1 = 128 * MIB // 4096
    assert vi[K.VI_LOG_FIRST, 1] == first1 + 4096 and vi[K.VI_LOG_PAGES, 1] == min(25600, pages[1] - 4096)
    assert vf[K.VF_LOG_SHARE, 1] == 0.3


def test_a_data_only_region_with_no_data_left_stops_using_it():
    m = _machine([{"count": 1, "workload": {"kind": "database", "rate": "1MiB/s", "hot": "4MiB", "hot_offset": "60MiB",
                                            "hot_share": 0.5, "log": "2MiB", "log_offset": "62MiB", "log_share": 0.3,
                                            "working_set": "64MiB", "data_only": True}}], zero_fraction=0.9, seed=7)
    vi, vf = m.guest.vi, m.guest.vf
    assert vi[K.VI_PAGES, 0] < 60 * 256  # far fewer than 60 MiB of data pages: both regions lie past them
    assert vi[K.VI_HOT_PAGES, 0] == 0 and vf[K.VF_HOT_SHARE, 0] == 0.0
    assert vi[K.VI_LOG_PAGES, 0] == 1 and vf[K.VF_LOG_SHARE, 0] == 0.0


def test_a_data_only_working_set_with_no_data_is_an_error():
    with pytest.raises(RuntimeError, match="vCPU 0: data_only, but its working set holds no data at boot"):
        _machine([{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s", "working_set": "2MiB",
                                            "data_only": True}}], zero_fraction=0.999999, seed=1)
