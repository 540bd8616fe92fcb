"""Workloads write where and how often the scenario says."""

from __future__ import annotations

import numpy as np

import simpy

from builders import scenario
from dirtysim.dirty import kernels
from dirtysim.events.log import Recorder
from dirtysim.guest.workload import make_workload
from dirtysim.machine import Machine


def _pages(workload, n, seed=0):
    u = np.random.default_rng(seed).random(n)
    out = np.zeros(n, dtype=np.int64)
    params = [np.array([x], dtype=np.int64) for x in (workload.first_page, workload.pages, workload.hot_first,
                                                      workload.hot_pages)]
    kernels.map_writes(u, np.array([n], dtype=np.int64), *params, np.array([workload.hot_share]), out)
    return out


def test_hotset_share_and_bounds():
    sc = scenario(machine={"vcpus": [{"count": 1, "workload": {
        "kind": "hotset", "rate": "1MiB/s", "hot": "64MiB", "hot_share": 0.8, "hot_offset": "128MiB",
        "offset": "256MiB", "working_set": "512MiB"}}]})
    w = make_workload(sc, sc.machine.vcpus[0])
    pages = _pages(w, 200_000)
    lo, hi = (256 + 128) * 256, (256 + 128 + 64) * 256
    in_hot = (pages >= lo) & (pages < hi)
    assert abs(in_hot.mean() - 0.8) < 0.01
    assert pages.min() >= 256 * 256 and pages.max() < (256 + 512) * 256
    cold = pages[~in_hot]  # the rest spreads evenly over the working set outside the hot region
    assert abs((cold < lo).mean() - 128 / (512 - 64)) < 0.01


def test_uniform_covers_the_working_set_evenly():
    sc = scenario(machine={"vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"}}]})
    pages = _pages(make_workload(sc, sc.machine.vcpus[0]), 262_144)
    counts = np.bincount(pages // 4096, minlength=64)  # 64 buckets of 16 MiB over 1 GiB
    assert counts.min() > 0.9 * counts.mean() and counts.max() < 1.1 * counts.mean()


def _guest(rate: str):
    sc = scenario(machine={"memory": {"size": "16MiB"}, "vcpus": [{"count": 1, "workload": {
        "kind": "uniform", "rate": rate}}]})
    env = simpy.Environment()
    return Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(1)).guest


def test_write_count_follows_rate_and_owed_fault_time():
    guest = _guest("4096000B/s")  # 1000 page writes per second, 1 ms quanta
    guest.start()  # the quantum at t=0
    guest.advance(999_000_000, True)  # ... and the 999 after it: 1 s
    assert guest.take_stats()[0]["writes"] == 1000  # exact over 1 s, remainders carried
    guest.debt[0] = 500_000_000  # half a second of faults owed
    guest.advance(1_999_000_000, True)
    assert guest.take_stats()[0]["writes"] == 500
    assert guest.next_t == 2_000_000_000


def test_lazy_guest_quanta_at_the_wake_time():
    """A quantum starting exactly when someone wakes runs before them only if requested (SimPy's order)."""
    guest = _guest("40960000B/s")  # 10 writes per quantum
    guest.start()  # the quantum at 0 ms
    guest.advance(5_000_000, False)  # quanta 1..4 ms; the one at 5 ms not yet
    assert guest.take_stats()[0]["writes"] == 50 and guest.next_t == 5_000_000
    guest.advance(5_000_000, True)
    assert guest.take_stats()[0]["writes"] == 10 and guest.next_t == 6_000_000
    guest.stop()
    guest.advance(10_000_000, True)  # a stopped VM makes no writes
    assert guest.take_stats()[0]["writes"] == 0
