"""Fault injection: the page oracle finds losses that broken tracking hides from itself.

The oracle learns where a guest write lands from its own map of the guest
(``oracle.GuestMap``, resolved from the region tree), never from the memslots
that dirty logging uses. So a memslot that points at the wrong RAM, or covers
too little, loses writes that the oracle still sees. Each fault below is also
run with the oracle routed through the memslots, as it once was, to show that
the loss is real and would have been hidden.

At a timeout the migration has not finished, so "lost" means "stale and never
to be sent again". The verdict runs the real sync path once more (muted) and
counts stale pages outside bmap; reading the dirty layers instead would let a
bit that never reaches bmap (a stuck L2 word, a listener that never harvests)
pass for remembered.
"""

from __future__ import annotations

import numpy as np
import pytest

from builders import NO_COSTS, of, simulate
from dirtysim.accel.kvm import KvmDirtyLog, KvmMemoryListener
from dirtysim.dirty import kernels
from dirtysim.events import schema as ev
from dirtysim.guest.vcpu import Guest
from dirtysim.machine import Machine

pytestmark = pytest.mark.rules

SLOT_CHUNK = 64 * 4096  # memslots are 256 KiB aligned


def _memslot_off_by_64_pages(real):
    def set_user_memory_region(self, gpa, size, ram_addr, readonly=False):
        return real(self, gpa, size - SLOT_CHUNK, ram_addr + SLOT_CHUNK, readonly)  # RAM page = guest page + 64
    return set_user_memory_region


def _memslot_covering_half(real):
    def set_user_memory_region(self, gpa, size, ram_addr, readonly=False):
        return real(self, gpa, size // 2 // SLOT_CHUNK * SLOT_CHUNK, ram_addr, readonly)
    return set_user_memory_region


FAULTS = {"off-by-64-pages": _memslot_off_by_64_pages, "half-the-ram": _memslot_covering_half}


def _run():
    result = simulate(machine={"memory": {"size": "64MiB", "zero_fraction": 0.0},
                               "vcpus": [{"count": 1, "workload": {"kind": "hotset", "rate": "16MiB/s", "hot": "8MiB", "hot_share": 0.5}}]},
                      costs=NO_COSTS, migration={"max_bandwidth": "64MiB/s", "start_at": "100ms"})
    return result, of(result.events, ev.OracleCheck)[-1]


def _oracle_through_memslots(monkeypatch):
    """What the oracle did before it had its own map: translate writes with the memslot table."""
    real = Guest.write_args

    def write_args(self):
        w = self.writer
        return tuple(np.stack([w.slot_gpa, w.slot_pages, w.slot_ram]) if a is self.guest_map.table else a
                     for a in real(self))

    monkeypatch.setattr(Guest, "write_args", write_args)


def test_correct_memslots_lose_nothing():
    result, check = _run()
    assert result.stop_reason == "completed" and (check.stale_pages, check.lost_pages) == (0, 0)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_wrong_memslot_loses_pages_and_the_oracle_sees_it(monkeypatch, fault):
    monkeypatch.setattr(KvmDirtyLog, "set_user_memory_region", FAULTS[fault](KvmDirtyLog.set_user_memory_region))
    result, check = _run()
    assert result.stop_reason == "completed"
    assert check.at == "switchover" and check.lost_pages > 100 and check.lost_pages == check.stale_pages


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_the_same_fault_is_hidden_from_an_oracle_that_trusts_the_memslots(monkeypatch, fault):
    monkeypatch.setattr(KvmDirtyLog, "set_user_memory_region", FAULTS[fault](KvmDirtyLog.set_user_memory_region))
    _oracle_through_memslots(monkeypatch)
    result, check = _run()
    assert (check.stale_pages, check.lost_pages) == (0, 0)  # the blind spot the oracle's own map removes


def _stuck_l2_word(monkeypatch, stuck: int = 7):
    """A word of L2 that the sync never takes (pages 64*stuck .. 64*stuck+63 of the block)."""
    real = kernels.sync_xchg

    def sync_xchg(src, dst, w0, w1):
        if w1 - w0 <= stuck:  # the kernel warm-up's tiny arrays
            return real(src, dst, w0, w1)
        keep = src[w0 + stuck]
        src[w0 + stuck] = 0
        new = real(src, dst, w0, w1)
        src[w0 + stuck] |= keep
        return new

    monkeypatch.setattr(kernels, "sync_xchg", sync_xchg)


def test_a_stuck_bit_in_global_dirty_memory_is_lost_at_switchover(monkeypatch):
    """A word of L2 the sync never takes: its pages are 'remembered' forever and never sent again."""
    _stuck_l2_word(monkeypatch)
    result, check = _run()
    assert check.at == "switchover" and 0 < check.lost_pages <= 64


def test_writes_to_a_rom_over_ram_are_counted_as_unassigned():
    """A read-only shadow (PAM) over low RAM: guest writes there change no RAM page and are reported."""
    hot = {"kind": "hotset", "rate": "16MiB/s", "hot": "1MiB", "hot_share": 1.0}
    runs = {}
    for pam in (False, True):
        result = simulate(machine={"memory": {"size": "64MiB"}, "vcpus": [{"count": 1, "workload": hot}]},
                          migration={"max_bandwidth": "64MiB/s", "start_at": "100ms"},
                          timeline=[{"at": "0s", "pam": {"enabled": pam}}])
        written = sum(e.writes for e in of(result.events, ev.VcpuStats))
        runs[pam] = of(result.events, ev.OracleCheck)[-1], written
    (off, _), (on, written) = runs[False], runs[True]
    assert off.unassigned_writes == 0 and off.lost_pages == 0
    # the ROM covers 0xC0000..0xFFFFF: a quarter of the 1 MiB hot set, so about a quarter of all writes
    assert 0.2 < on.unassigned_writes / written < 0.3 and on.lost_pages == 0


# --- at a timeout: the verdict follows the real sync path, so a bit that never reaches bmap is lost ---

def _run_to_timeout():
    result = simulate(machine={"memory": {"size": "64MiB", "zero_fraction": 0.0},
                               "vcpus": [{"count": 1, "workload": {"kind": "hotset", "rate": "16MiB/s", "hot": "8MiB", "hot_share": 0.5}}]},
                      costs=NO_COSTS, migration={"max_bandwidth": "8MiB/s", "start_at": "100ms", "timeout": "3s"})
    return result, of(result.events, ev.OracleCheck)[-1]


def _verdict_reads_the_layers(monkeypatch):
    """What the timeout verdict did before: a page counts as remembered if any dirty layer holds it."""
    real = Machine.oracle
    monkeypatch.setattr(Machine, "oracle", lambda self, layers=True: real(self, True))


def _kvm_never_harvests(monkeypatch):
    monkeypatch.setattr(KvmMemoryListener, "log_sync", lambda self, section: None)


TIMEOUT_FAULTS = {"stuck-l2-word": _stuck_l2_word, "kvm-log-sync-does-nothing": _kvm_never_harvests}


def test_a_correct_run_that_times_out_loses_nothing():
    result, check = _run_to_timeout()
    assert result.stop_reason == "timeout" and check.at == "timeout"
    assert check.stale_pages > 0 and check.lost_pages == 0  # pages in flight are stale, none forgotten


@pytest.mark.parametrize("fault", sorted(TIMEOUT_FAULTS))
def test_a_bit_that_never_reaches_bmap_is_lost_at_the_timeout(monkeypatch, fault):
    TIMEOUT_FAULTS[fault](monkeypatch)
    result, check = _run_to_timeout()
    assert result.stop_reason == "timeout" and check.at == "timeout"
    assert 0 < check.lost_pages <= check.stale_pages
    if fault == "stuck-l2-word":
        assert check.lost_pages <= 64


@pytest.mark.parametrize("fault", sorted(TIMEOUT_FAULTS))
def test_the_same_fault_is_hidden_from_a_verdict_that_reads_the_layers(monkeypatch, fault):
    TIMEOUT_FAULTS[fault](monkeypatch)
    _verdict_reads_the_layers(monkeypatch)
    result, check = _run_to_timeout()
    assert check.at == "timeout" and check.lost_pages == 0  # the blind spot the sync-path verdict removes


def test_the_look_ahead_sync_leaves_no_trace_in_the_event_log():
    """Unmuted, the verdict's sync would log a listener call and a GET just before the check."""
    result, check = _run_to_timeout()
    assert [e.seq for e in result.events] == list(range(len(result.events)))
    before = [e for e in result.events[:check.seq] if not isinstance(e, ev.GuestSample)][-1]  # the sampler is no sync
    assert isinstance(before, ev.Transfer), before
