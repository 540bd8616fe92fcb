"""The closed-form precopy model (Liu et al., HPDC 2011; dirtysim/migration/model.py): a uniform writer over a fixed link.

Legacy KVM dirty logging (GET re-protects at the sync) and no costs, so the
only difference from the model is the discretisation: writes arrive in 1 ms
quanta and pages in 1 ms send slices.
"""

from __future__ import annotations

import pytest

from builders import NO_COSTS, simulate, syncs
from dirtysim.migration.model import dirtied_pages, precopy_syncs

N = 262_144  # 1 GiB of 4 KiB pages
LINK = 125_000_000  # 1 Gbit/s
R = LINK / 4104  # normal pages per second (header + data)
THRESHOLD_PAGES = LINK / 1000 * 300 / 4096


def _run(dirty_over_bandwidth: float, timeout: str):
    writes = dirty_over_bandwidth * LINK / 4096  # D / B
    result = simulate(
        machine={"memory": {"size": "1GiB", "zero_fraction": 0.0},
                 "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": f"{int(writes * 4096)}B/s"}}]},
        dirty_tracking={"manual_protect": False, "initially_set": False},
        costs=NO_COSTS,
        network={"bandwidth": "1Gbit/s", "latency": "0ns"},
        migration={"max_bandwidth": "100GiB/s", "start_at": "0s", "timeout": timeout},
    )
    return result, writes


def _check_volumes(result, writes):
    """Each sync's new dirty pages = distinct pages written since the last sync, minus those still pending."""
    ss = [s for s in syncs(result.events) if s.reason != "final"]
    compared = 0
    for prev, s in zip(ss, ss[1:]):
        expected = dirtied_pages(N, writes, (s.t_ns - prev.t_ns) / 1e9) * (1 - s.pending_before / 4096 / N)
        if expected > 1000:
            assert s.new_dirty_pages == pytest.approx(expected, rel=0.05)
            compared += 1
    return compared


def test_converging_uniform_writer_matches_the_model():
    result, writes = _run(0.5, "60s")
    assert result.stop_reason == "completed"
    assert _check_volumes(result, writes) >= 5
    model, converged = precopy_syncs(N, writes, R, THRESHOLD_PAGES, check_s=0.051)
    assert converged
    exact = [s for s in syncs(result.events) if s.reason == "exact"]
    assert len(exact) == len(model)  # setup + these + final = dirty-sync-count
    for sim, mod in zip(exact, model):
        if mod.new_pages > 1000:
            assert sim.new_dirty_pages == pytest.approx(mod.new_pages, rel=0.05)
            assert sim.t_ns / 1e9 == pytest.approx(mod.t, rel=0.05)


@pytest.mark.parametrize("ratio", [1.5, 2.0])
def test_no_convergence_when_dirty_rate_exceeds_bandwidth(ratio):
    result, writes = _run(ratio, "25s")
    assert result.stop_reason == "timeout"
    model, converged = precopy_syncs(N, writes, R, THRESHOLD_PAGES, check_s=0.051, max_syncs=50)
    assert not converged
    assert _check_volumes(result, writes) >= 2
    # the remaining set settles at the writable working set, far above the threshold
    last = syncs(result.events)[-1]
    assert last.migration_dirty_pages > 2 * THRESHOLD_PAGES
