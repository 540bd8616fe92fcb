"""Workloads write where and how often the scenario says."""

from __future__ import annotations

import numpy as np

from builders import scenario
from dirtysim.dirty import kernels
from dirtysim.guest.vcpu import Vcpu
from dirtysim.guest.workload import make_workload


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


def test_write_count_follows_rate_and_owed_fault_time():
    v = Vcpu(0, None, None, rate=4096 * 1000)  # 1000 page writes per second
    assert sum(v.writes_in(1_000_000) for _ in range(1000)) == 1000  # exact over 1 s, remainders carried
    v.debt_ns = 500_000_000  # half a second of faults owed
    assert sum(v.writes_in(1_000_000) for _ in range(1000)) == 500
