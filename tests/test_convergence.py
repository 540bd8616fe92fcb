"""Convergence controls (issue 10): auto-converge, dirty-limit, migrate-set-parameters, migrate-cancel, max_syncs.

Facts 4, 5, 12 and 14 of the reference with their numbers, the rules around
them, and the shipped non-converging scenario and its three rescues end to end.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from builders import of
from dirtysim.events import schema as ev
from dirtysim.migration.cpu_throttle import next_throttle, next_tick_ns, period_is_high, throttle_sleep_ns
from dirtysim.migration.dirtylimit import (RingFullTime, dirtylimit_done, need_linear_adjustment, set_throttle,
                                         vcpu_dirty_rates)
from dirtysim.scenario.load import ScenarioError, load_scenario
from dirtysim.scenario.schema import MigrationParameters
from dirtysim.sim import run
from dirtysim.sweep import load_variants

ROOT = Path(__file__).resolve().parents[1]
NO_CONVERGENCE = ROOT / "scenarios" / "no-convergence.yaml"
VARIANTS = load_variants(ROOT / "scenarios" / "variants" / "no-convergence.yaml")
DEFAULTS = MigrationParameters()
S, MS = 10**9, 10**6

pytestmark = pytest.mark.rules


@pytest.fixture(scope="session", autouse=True)
def _fresh_runs():
    """Each pytest session simulates anew: mutmut runs sessions in processes forked after a clean one."""
    _run.cache_clear()


@functools.lru_cache(maxsize=None)
def _run(*overrides: str):
    result = run(load_scenario(NO_CONVERGENCE, list(overrides)), progress=False)
    assert result.error is None, result.error
    return result


def _variant(name: str, *more: str):
    return _run(*VARIANTS[name], *more)


# -- fact 4: when auto-converge acts, and by how much -------------------------------------------------------
def test_fact4_default_throttle_sequence():
    """20 %, then +10 % per action, capped at 99 (``mig_throttle_guest_down``, ``cpu_throttle_set``)."""
    pct, seen = 0, []
    for _ in range(11):
        pct = next_throttle(pct, DEFAULTS, 2, 1)
        seen.append(pct)
    assert seen == [20, 30, 40, 50, 60, 70, 80, 90, 99, 99, 99]


def test_fact4_a_period_is_high_above_half_of_the_bytes_sent():
    """``bytes_dirty_period > bytes_xfer_period * 50 / 100`` (integer threshold), strictly."""
    assert period_is_high(1001, 501, 50) == (True, 500)
    assert period_is_high(1001, 500, 50) == (False, 500)
    assert period_is_high(0, 1, 50) == (True, 0)


def test_tailslow_steps_toward_the_ideal_throttle():
    """tailslow: ``cpu_ideal = cpu_now * threshold / dirty`` truncated; the step is at most the increment."""
    slow = DEFAULTS.model_copy(update={"cpu_throttle_tailslow": True})
    assert next_throttle(50, slow, 1000, 900) == 55  # cpu_now 50, ideal 45: step 5 < 10
    assert next_throttle(50, slow, 1000, 100) == 60  # ideal 5: step 45 capped at 10
    assert next_throttle(95, DEFAULTS.model_copy(update={"max_cpu_throttle": 97}), 2, 1) == 97


def test_fact4_auto_converge_acts_on_every_second_high_period_and_only_on_long_periods():
    """In the rescued run: only syncs closing a > 1 s period are evaluated; an action every 2nd high period."""
    events = _variant("auto-converge").events
    stream = [e for e in events if isinstance(e, (ev.BitmapSync, ev.CpuThrottle))]
    high, acting, actions = 0, None, []
    for e in stream:
        if isinstance(e, ev.CpuThrottle):
            if e.reason == "auto-converge":  # decided inside the sync, logged before it
                acting = e
                actions.append(e.percentage)
            continue
        if not e.period_closed:
            assert e.bytes_dirty_period == 0 and e.dirty_rate_high_cnt == high, "a short period is never evaluated"
        else:
            high += e.bytes_dirty_period > e.bytes_xfer_period * 50 // 100
            assert (high == 2) == (acting is not None and acting.t_ns == e.t_ns), e
            high %= 2
            assert e.dirty_rate_high_cnt == high
        acting = None
    assert actions[:5] == [20, 30, 40, 50, 60]
    assert len(actions) >= 5


def _migration(pcts_by_period: list[tuple[int, int]]):
    """The migration's trigger over given periods (bytes sent, bytes dirtied); the throttle it sets each time."""
    from dirtysim.migration.precopy import PrecopyMigration

    set_to = []
    mig = SimpleNamespace(params=DEFAULTS, rs=SimpleNamespace(dirty_rate_high_cnt=0), dirtylimit=None,
                          throttle=SimpleNamespace(percentage=0, set=lambda pct, **_: set_to.append(pct)))
    out = []
    for xfer, dirty in pcts_by_period:
        before = len(set_to)
        PrecopyMigration.trigger_throttle(mig, xfer, dirty)
        if len(set_to) > before:
            mig.throttle.percentage = set_to[-1]
        out.append(set_to[-1] if len(set_to) > before else None)
    return out


def test_fact4_a_low_period_between_two_high_ones_does_not_reset_the_count():
    high, low = (100, 60), (100, 40)
    assert _migration([high, low, high, low, low, high, high]) == [None, None, 20, None, None, None, 30]


# -- fact 5: the duty cycle ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pct, sleep_ns, period_ns", [(20, 2_500_001, 12_500_000), (50, 10_000_001, 20_000_000),
                                                      (90, 90_000_001, 100_000_000), (99, 990_000_000, 1_000_000_000)])
def test_fact5_sleep_and_period(pct, sleep_ns, period_ns):
    """In double arithmetic as QEMU: at 99 % the ratio is 98.99999999999991, so the +1 ns still truncates to 990 ms."""
    assert throttle_sleep_ns(pct) == sleep_ns
    assert abs(next_tick_ns(7 * S, pct) - 7 * S - period_ns) <= 1  # a double, truncated, as timer_mod gets it


def test_fact5_throttled_vcpus_run_and_write_one_minus_p_of_the_time():
    result = _variant("auto-converge")
    throttle = [e for e in result.events if isinstance(e, ev.CpuThrottle)]
    samples = of(result.events, ev.GuestSample)
    checked = 0
    for t0, t1, pct in zip([e.t_ns for e in throttle], [e.t_ns for e in throttle[1:]], [e.percentage for e in throttle]):
        inside = [s for s in samples if t0 + 200 * MS < s.t_ns <= t1 and pct]
        if len(inside) < 5:
            continue
        ran = sum(sum(s.ran_ns) for s in inside) / sum(s.interval_ns * len(s.ran_ns) for s in inside)
        slept = sum(sum(s.throttle_ns) for s in inside) / sum(s.interval_ns * len(s.ran_ns) for s in inside)
        assert abs(slept - pct / 100) < 0.02, (pct, slept)
        assert ran == pytest.approx(1 - pct / 100, abs=0.03), (pct, ran)  # less the write faults' share
        checked += 1
    assert checked >= 3
    before = [s for s in samples if s.t_ns <= throttle[0].t_ns]
    during = [s for s in samples if throttle[-2].t_ns < s.t_ns <= throttle[-1].t_ns and throttle[-2].percentage]
    per_s = lambda ss: sum(sum(s.writes) for s in ss) / sum(s.interval_ns for s in ss)  # noqa: E731
    assert per_s(during) < per_s(before) * (1 - throttle[-2].percentage / 100) * 1.2


# -- fact 12: the 5 s forced sync ---------------------------------------------------------------------------
def test_fact12_the_timer_syncs_after_every_quiet_5_s_and_never_in_the_first_pass():
    """A tick syncs when dirty-sync-count >= 2 has not moved since the previous tick, whose count it read after
    its own sync: with nothing else syncing, the timer syncs every 5 s (``cpu_throttle_dirty_sync_timer_tick``)."""
    result = _variant("auto-converge")
    syncs = of(result.events, ev.BitmapSync)
    start = 500 * MS
    count_at = lambda t: sum(1 for s in syncs if s.t_ns <= t)  # noqa: E731
    expected, prev, tick = [], 0, start + 5 * S
    while tick < syncs[-1].t_ns - 100 * MS:
        count = count_at(tick)
        forced = count > 1 and count == prev
        if forced:
            expected.append(tick)
        prev = count + forced  # the timer's own sync runs at the thread's next turn, before the next tick
        tick += 5 * S
    timer = [s for s in syncs if s.reason == "throttle-timer"]
    assert len(timer) == len(expected) >= 2
    for s, tick in zip(timer, expected):
        assert tick <= s.t_ns - s.cost_ns <= tick + 100 * MS, "at the migration thread's next turn"
    assert all(s.dirty_sync_count > 2 for s in timer), "never while dirty-sync-count <= 1"
    assert not [s for s in of(_variant("baseline").events, ev.BitmapSync) if s.reason == "throttle-timer"]


# -- fact 14: dirty-limit's adjustment ----------------------------------------------------------------------
def test_fact14_linear_step():
    full = RingFullTime(4096)
    assert full.ring_size_mib == 16 and full(100) == 160_000
    assert set_throttle(0, 10, 100, full) == 1_440_000
    us = 0
    for _ in range(20):
        us = set_throttle(us, 10, 100, full)
    assert us == 15_840_000, "clamped to 99 x the ring-full time"


def test_dirtylimit_tolerance_fine_steps_and_the_static_maximum():
    full = RingFullTime(4096)
    assert dirtylimit_done(100, 125) and not dirtylimit_done(100, 126)
    assert not need_linear_adjustment(60, 100) and need_linear_adjustment(49, 100)
    assert set_throttle(0, 60, 100, full) == 16_000  # fine: a tenth of 160,000 us
    assert set_throttle(50_000, 100, 60, full) == 50_000 - 16_000  # below quota: down (the max rate stays 100)
    assert set_throttle(10_000, 100, 10, full) == 0  # linear down, clamped at 0
    assert set_throttle(10_000, 100, 0, full) == 0  # no dirtying: no sleep


def test_dirty_limit_paces_the_vcpus_through_their_own_ring_full_exits():
    events = _variant("dirty-limit").events
    on = next(e for e in events if isinstance(e, ev.DirtyLimit) and e.reason == "set")
    assert on.quota == 1  # vcpu-dirty-limit's default
    after = [e for e in events if e.seq > on.seq]
    reaps = of(after, ev.DirtyRingReap)
    assert not [r for r in reaps if r.reason == "reaper"], "the 1 s reaper skips while the limit is in service"
    rounds = [e for e in after if isinstance(e, ev.DirtyLimit) and e.reason == "round"]
    assert rounds and all(r.period_ms == 1000 for r in rounds)
    first = rounds[0]
    assert first.throttle_us_per_full == [set_throttle(0, 1, r, RingFullTime(4096)) if abs(r - 1) > 25 else 0
                                          for r in first.rates] or first.rates[0] <= 26
    slept = sum(e.dirtylimit_ns for e in of(after, ev.VcpuStats))
    assert slept > 0
    assert max(rounds[-1].rates) < max(first.rates), "the limited vCPUs dirty less"


def test_dirty_limit_requires_the_ring_and_excludes_auto_converge():
    with pytest.raises(ScenarioError, match="dirty-limit requires KVM with accelerator property 'dirty-ring-size' set"):
        load_scenario(NO_CONVERGENCE, ["migration.capabilities.dirty-limit=true"])
    with pytest.raises(ScenarioError, match="dirty-limit conflicts with auto-converge"):
        load_scenario(NO_CONVERGENCE, ["migration.capabilities.dirty-limit=true", "dirty_tracking.mode=ring",
                                       "migration.capabilities.auto-converge=true"])


@pytest.mark.parametrize("key, value, allowed", [("throttle-trigger-threshold", 0, "1"),
                                                 ("cpu-throttle-initial", 100, "99"), ("vcpu-dirty-limit", 0, "1"),
                                                 ("x-vcpu-dirty-limit-period", 1001, "1000ms")])
def test_parameter_ranges(key, value, allowed):
    with pytest.raises(ScenarioError, match=f"--set migration.{key}: .*{allowed}"):
        load_scenario(NO_CONVERGENCE, [f"migration.{key}={value}"])


def test_max_cpu_throttle_below_the_initial_is_refused():
    with pytest.raises(ScenarioError, match="max-cpu-throttle expects an integer in the range of cpu-throttle-initial"):
        load_scenario(NO_CONVERGENCE, ["migration.cpu-throttle-initial=50", "migration.max-cpu-throttle=40"])


def test_a_parameter_change_is_checked_against_the_parameters_in_force():
    """``migrate_params_test_apply``: the request is applied onto the current values, in time order, then checked."""
    sets = ("timeline=[{at: 2s, migrate-set-parameters: {max-cpu-throttle: 30}}, "
            "{at: 1s, migrate-set-parameters: {cpu-throttle-initial: %d}}]")
    with pytest.raises(ScenarioError, match=r"timeline\.0\.migrate-set-parameters\.max-cpu-throttle: .*got 30; allowed: 50 \.\. 99"):
        load_scenario(NO_CONVERGENCE, [sets % 50])
    assert load_scenario(NO_CONVERGENCE, [sets % 25]).timeline[0].set.max_cpu_throttle == 30


# -- live changes, cancel, max_syncs ------------------------------------------------------------------------
def test_downtime_limit_set_mid_migration_takes_effect_at_the_next_window():
    result = _variant("downtime-limit")
    change = of(result.events, ev.MigrateSetParameters)[0]
    assert change.t_ns == 40 * S and change.parameters == {"downtime-limit": 8 * S}
    windows = of(result.events, ev.RateWindow)
    before = [w for w in windows if w.t_ns < change.t_ns][-1]
    after = next(w for w in windows if w.t_ns >= change.t_ns)
    assert before.threshold_size == int(before.bandwidth * 300)
    assert after.threshold_size == int(after.bandwidth * 8000)
    assert after.t_ns - change.t_ns <= after.time_spent_ms * MS, "within the window that was open"


def test_max_bandwidth_set_mid_migration_limits_the_next_window():
    result = _run("migration.timeout=6s", "timeline=[{at: 3s, migrate-set-parameters: {max-bandwidth: 32MiB/s}}]")
    windows = of(result.events, ev.RateWindow)
    late = [w for w in windows if w.t_ns > 3 * S + 100 * MS]
    assert late and max(w.transferred for w in late) <= (32 << 20) // 10 + 64 * 4105
    assert max(w.transferred for w in windows if w.t_ns < 3 * S) > (128 << 20) // 10


def test_migrate_cancel_stops_the_migration_and_leaves_the_source_consistent():
    result = _run("timeline=[{at: 20s, migrate-cancel: {}}]")
    assert result.stop_reason == "cancelled"
    statuses = [(e.t_ns, e.status) for e in of(result.events, ev.MigrationStatus)]
    cancelling = next(t for t, s in statuses if s == "cancelling")
    cancelled = next(t for t, s in statuses if s == "cancelled")
    assert cancelling == 20 * S and 0 <= cancelled - cancelling <= 100 * MS
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.at == "cancelled" and check.lost_pages == 0 and check.stale_pages > 0
    stops = [e for e in of(result.events, ev.ListenerCall) if e.hook == "log_stop" and e.new_mask == 0]
    assert stops and stops[-1].t_ns == cancelled, "dirty logging for migration stops (ram_save_cleanup)"
    assert of(result.events, ev.RunFinished)[-1].stop_reason == "cancelled"


def test_migrate_cancel_before_the_migration_is_ignored():
    result = _run("migration.timeout=2s", "timeline=[{at: 100ms, migrate-cancel: {}}]")
    action = of(result.events, ev.TimelineAction)[0]
    assert action.result.startswith("ignored") and result.stop_reason == "timeout"


def test_max_syncs_cancels_after_that_many_syncs():
    result = _run("migration.max_syncs=3")
    assert result.stop_reason == "max-syncs"
    assert [s.dirty_sync_count for s in of(result.events, ev.BitmapSync)][-1] == 4
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0


# -- the scenario and its rescues ---------------------------------------------------------------------------
def test_the_baseline_does_not_converge_over_several_passes():
    result = _variant("baseline")
    syncs = of(result.events, ev.BitmapSync)
    assert result.stop_reason == "timeout" and len(syncs) >= 8
    assert min(s.migration_dirty_pages for s in syncs[2:]) * 4096 > 20 * max(s.threshold_size for s in syncs)


@pytest.mark.parametrize("name", ["auto-converge", "dirty-limit", "downtime-limit"])
def test_every_rescue_completes_and_loses_nothing(name):
    result = _variant(name)
    assert result.stop_reason == "completed"
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.at == "switchover" and check.lost_pages == 0
    assert of(result.events, ev.BitmapSync)[-1].t_ns < 120 * S


def test_parameters_set_before_migrate_apply_from_its_start():
    """migrate-set-parameters before 'migrate' is stored; the migration starts under it (migration_rate_set)."""
    result = _run("migration.timeout=3s", "timeline=[{at: 100ms, migrate-set-parameters: {max-bandwidth: 32MiB/s, "
                                          "downtime-limit: 100}}]")
    windows = of(result.events, ev.RateWindow)
    assert max(w.transferred for w in windows) <= (32 << 20) // 10 + 64 * 4105
    assert all(w.threshold_size == int(w.bandwidth * 100) for w in windows)


def test_a_capability_not_modelled_is_named_as_such():
    with pytest.raises(ScenarioError, match="capabilities.release-ram: a QEMU capability dirtysim does not model yet"):
        load_scenario(NO_CONVERGENCE, ["migration.capabilities={release-ram: true}"])


@pytest.mark.parametrize("name", ["auto-converge", "dirty-limit"])
def test_guest_samples_count_sleeps_as_served(name):
    """A sleep longer than a sample spreads over the samples it lasts: nothing exceeds its interval."""
    samples = of(_variant(name).events, ev.GuestSample)
    slept = 0
    for s in samples:
        for ran, th, dl in zip(s.ran_ns, s.throttle_ns, s.dirtylimit_ns):
            assert 0 <= th and 0 <= dl and ran + th + dl <= s.interval_ns, s
            slept += th + dl
    assert slept > 10 * S


def test_dirtylimit_integer_arithmetic_at_its_boundaries():
    """QEMU computes in uint64: the percentages truncate, the steps are whole microseconds."""
    assert not need_linear_adjustment(100, 50) and not need_linear_adjustment(101, 50)  # 50 % is not above 50 %
    assert not need_linear_adjustment(99, 200) and need_linear_adjustment(98, 200)
    fast = RingFullTime(4096)
    up = set_throttle(0, 100, 300, fast)  # sleep_pct = 200 * 100 // 300 = 66; ring-full 16e6 // 300 = 53,333 us
    assert up == int(53_333 * 66 / 34.0) == 103_528
    assert set_throttle(0, 200, 300, fast) == 5_333 and type(set_throttle(0, 200, 300, fast)) is int  # fine: a tenth
    assert set_throttle(50_000, 100, 100, RingFullTime(4096)) == 50_000 - 16_000  # quota < current is false: down
    down = set_throttle(1_000_000, 300, 100, RingFullTime(4096))  # below quota: (300 - 100) * 100 // 300 = 66
    assert down == 1_000_000 - int(160_000 * 66 / 34.0)


def test_vcpu_rates_and_the_reported_ring_full_time():
    assert vcpu_dirty_rates(np.array([1_000_000, 0]), 700) == [5580, 0]  # (10**9 >> 8) // 700
    assert vcpu_dirty_rates(np.array([256]), 1) == [1000]
    full = RingFullTime(4096)
    assert full.peek(3) == 5_333_333 and full.peek(0) == 0 and full.max_dirtyrate == 0, "peeking raises nothing"
    full(200)
    assert full.peek(100) == 80_000 and full.max_dirtyrate == 200


def test_auto_converge_stops_the_throttle_once_at_the_end():
    events = _variant("auto-converge").events
    stops = [e for e in of(events, ev.CpuThrottle) if e.reason == "stop"]
    assert [(s.percentage, s.bytes_dirty_period) for s in stops] == [(0, 0)]
    assert stops[0].t_ns == of(events, ev.MigrationStatus)[-1].t_ns, "migration_iteration_finish"


def test_each_dirty_limit_round_reports_what_query_migrate_would():
    """``dirtylimit_throttle_time_per_round`` is the largest sleep; ``dirtylimit_ring_full_time`` the ring-full time
    at the vCPUs' mean rate, against a maximum at least that mean (16 MiB ring: 16e6 us per MB/s)."""
    rounds = [e for e in of(_variant("dirty-limit").events, ev.DirtyLimit) if e.reason == "round"]
    assert rounds
    for r in rounds:
        assert r.quota == 1 and r.throttle_time_per_round == max(r.throttle_us_per_full) > 0
        mean = sum(r.rates) // len(r.rates)
        assert (r.ring_full_time == 0) if mean == 0 else (0 < r.ring_full_time <= 16_000_000 // mean)
    assert rounds[0].ring_full_time == 16_000_000 // max(rounds[0].rates)


def test_the_throttle_timer_on_a_tiny_guest():
    """50 %: a sleep of 10,000,001 ns per vCPU at 0, 20, 40, ... ms (ticks every 20 ms, the first at the set);
    a stop emits percentage 0 once and the next tick does not re-arm."""
    import simpy

    from builders import scenario
    from dirtysim.events.log import Recorder
    from dirtysim.machine import Machine
    from dirtysim.migration.cpu_throttle import CpuThrottle

    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    m = Machine(env, scenario(), rec, np.random.SeedSequence(1))
    m.start()
    throttle = CpuThrottle(env, m, rec)
    throttle.set(50, bytes_dirty_period=2, bytes_dirty_threshold=1)
    assert throttle.active() and m.guest.totals("throttle_ns").tolist() == [10_000_001] * 2
    env.run(until=99 * MS)
    assert m.guest.totals("throttle_ns").tolist() == [5 * 10_000_001] * 2  # ticks at 0, 20, 40, 60, 80 ms
    throttle.stop()
    throttle.stop()
    env.run(until=200 * MS)
    assert m.guest.totals("throttle_ns").tolist() == [5 * 10_000_001] * 2
    events = of(rec.events, ev.CpuThrottle)
    assert [(e.percentage, e.reason, e.bytes_dirty_period, e.bytes_dirty_threshold) for e in events] == \
        [(50, "auto-converge", 2, 1), (0, "stop", 0, 0)]
    assert not throttle.active() and throttle.max_percentage == 50
    ran = 99 * MS - int(m.guest.out_of_guest_ns()[0])
    assert 0.45 < ran / (99 * MS) < 0.55
