"""Nothing is lost with correct semantics, and the oracle does catch a loss when there is one."""

from __future__ import annotations

import pytest

from builders import of, simulate
from dirtysim.dirty import kernels, reference
from dirtysim.events import schema as ev


@pytest.mark.parametrize("tracking", [
    {"manual_protect": True, "initially_set": True, "clear_bitmap_shift": 18},
    {"manual_protect": True, "initially_set": False, "clear_bitmap_shift": 6},
    {"manual_protect": True, "initially_set": True, "clear_bitmap_shift": 12},
    {"manual_protect": False},
])
def test_correct_tracking_loses_nothing(tracking):
    result = simulate(dirty_tracking=tracking, seed=9)
    check = of(result.events, ev.OracleCheck)[-1]
    assert result.stop_reason == "completed"
    assert (check.at, check.stale_pages, check.lost_pages) == ("switchover", 0, 0)


def _clear_all(kvm, mask, w0, w1):
    """A wrong KVM_CLEAR_DIRTY_LOG: clears the whole range, not just QEMU's fetched mask."""
    n = reference.count_set(kvm & mask, w0, w1)
    kvm[w0:w1] = 0
    mask[w0:w1] = 0
    return n


def test_the_oracle_sees_pages_lost_by_a_clear_that_ignores_the_mask(monkeypatch):
    monkeypatch.setattr(kernels, "clear_by_mask", _clear_all)
    result = simulate(seed=9)
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.lost_pages > 0 and check.lost_pages == check.stale_pages


def test_untracked_stale_pages_are_counted_at_timeout():
    """At a timeout only stale pages no dirty layer remembers count as lost: with correct tracking, 0."""
    result = simulate(migration={"max_bandwidth": "32MiB/s", "timeout": "3s"})
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.at == "timeout" and check.stale_pages > 0 and check.lost_pages == 0
