"""The destination oracle as an adversary, and broken invariants that must end a run instead of hanging.

The oracle (``Machine.oracle``) compares the destination with the source page
by page; the switchover (``migration_completion``: the guest resumes on the
destination) must report every stale page as lost. A sync that breaks QEMU's
0->1 counting (``physical_memory_sync_dirty_bitmap``) must end the run with a
clear error (exit 1, ``error-desc``), not spin in ``ram_find_and_save_block``.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import simpy
import yaml
from click.testing import CliRunner

from builders import BASE, merge, of
from dirtysim.cli import main
from dirtysim.dirty import kernels, reference
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.migration.precopy import PrecopyMigration
from dirtysim.migration.slices import FusedSlices
from dirtysim.sim import run, run_deadline
from test_rules_precopy import _dirtying, simulate, tiny

pytestmark = [pytest.mark.rules, pytest.mark.timeout(20)]  # a hang (a broken bound) fails fast


@pytest.fixture(params=["fused", "python"])
def path(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(FusedSlices, "eligible", lambda self: False)
    return request.param


def _keep_in_l2(src, dst, w0, w1):
    """A sync that never moves L2 into the migration bitmap: the writes stay remembered in L2, never sent."""
    return 0


def _drop_odd_words(src, dst, w0, w1):
    """A sync that forgets the writes in every odd word of L2 (cleared, never set in the migration bitmap)."""
    src[w0 + 1:w1:2] = 0
    return sum(int(reference.sync_xchg(src, dst, w, w + 1)) for w in range(w0, w1, 2))


def _count_every_bit(src, dst, w0, w1):
    """The issue's broken sync: counts every set bit of the result, not the 0->1 transitions."""
    reference.sync_xchg(src, dst, w0, w1)
    return reference.count_set(dst, w0, w1)


def test_the_switchover_reports_stale_pages_the_tracking_still_remembers(monkeypatch, path):
    """Pages written after their send stay stale; L2 still holds their bits, so ``Machine.oracle`` calls
    them tracked (not lost). At the switchover the guest resumes on the destination: all are lost."""
    monkeypatch.setattr(kernels, "sync_xchg", _keep_in_l2)
    result = simulate(_dirtying())
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.at == "switchover"
    assert check.stale_pages > 0
    assert check.lost_pages == check.stale_pages


def test_at_a_timeout_only_forgotten_stale_pages_are_lost(monkeypatch, path):
    """At a timeout the source still runs: unsent pages are stale but tracked (the bitmap holds them);
    only pages whose bits a sync dropped are lost. Both counts are non-zero and differ."""
    monkeypatch.setattr(kernels, "sync_xchg", _drop_odd_words)
    result = simulate(_dirtying(migration={"timeout": "3s"}))
    check = of(result.events, ev.OracleCheck)[-1]
    assert check.at == "timeout"
    assert 0 < check.lost_pages < check.stale_pages


def test_the_oracle_counts_each_layer_on_a_hand_built_state():
    """Stale pages 1..4: page 2's bit is in L2, page 3's in the migration bitmap, page 4 is unstale-d by a
    send; pages 1 and 5 are stale and untracked. The oracle unions L2, every bmap and the listeners."""
    sc = tiny()
    env = simpy.Environment()
    m = Machine(env, sc, Recorder(lambda: env.now), np.random.SeedSequence(1))
    rl, block = m.ram_list, m.ram_list.blocks[0]
    rl.dirty_memory[:] = 0
    rl.stale[:] = 0
    block.bmap = np.zeros_like(rl.stale[block.words])
    for page in (1, 2, 3, 5):
        rl.stale[page >> 6] |= np.uint64(1) << np.uint64(page & 63)
    rl.dirty_memory[0] |= np.uint64(1 << 2)
    block.bmap[0] |= np.uint64(1 << 3)
    for tracker in m.trackers:
        for layer in tracker.pending_dirty():
            layer[:] = 0
    assert m.oracle() == (4, 2)


def test_a_sync_counting_every_set_bit_is_an_error_not_a_hang(monkeypatch, path):
    """migration_dirty_pages outgrows the bitmap; the pass that finds no dirty page raises."""
    monkeypatch.setattr(kernels, "sync_xchg", _count_every_bit)
    result = run(_dirtying(), progress=False)
    assert result.stop_reason == "error"
    assert re.fullmatch(r"BrokenInvariant: migration_dirty_pages is \d+ but a whole pass over the RAMBlocks found "
                        r"no dirty page: the dirty count and the bitmaps disagree", result.error)
    assert isinstance(result.events[-1], ev.RunFinished) and result.events[-1].error == result.error


def test_the_command_line_exits_1_with_error_desc(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "sync_xchg", _count_every_bit)
    spec = merge(BASE, {"machine": {"memory": {"size": "8MiB"}, "vcpus": [
        {"count": 1, "workload": {"kind": "uniform", "rate": "900KiB/s"}}]},
        "migration": {"max_bandwidth": "2MiB/s", "start_at": "0ms", "timeout": "10s"}})
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(path), "-o", str(out), "--no-progress"])
    assert res.exit_code == 1, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error-desc"].startswith("BrokenInvariant: migration_dirty_pages is ")
    assert summary["status"] == "failed"


def test_a_thread_that_neither_sends_nor_sleeps_is_an_error(monkeypatch):
    """``migration_rate_limit`` must close the window or sleep to its end; doing neither would spin forever."""
    monkeypatch.setattr(PrecopyMigration, "rate_limit", lambda self: iter(()))
    result = run(tiny(migration={"max_bandwidth": "10MiB/s"}), progress=False)
    assert result.error.startswith("BrokenInvariant: the migration thread neither sent nor waited in 2 turns")


def test_a_thread_waiting_forever_is_stopped_at_the_deadline(monkeypatch):
    """A migration thread blocked past its timeout and any switchover ends the run with an error."""
    def never(self):
        yield self.env.event()

    monkeypatch.setattr(PrecopyMigration, "completion", never)
    sc = tiny()
    result = run(sc, progress=False)
    assert result.error.startswith("BrokenInvariant: the migration thread is still running")
    assert run_deadline(sc) < result.sim_time_ns <= run_deadline(sc) + 100 * 10**6


@pytest.mark.parametrize("shadow_rom", [True, False])
def test_the_check_reports_writes_that_hit_no_ram(shadow_rom):
    """With the PAM shadow ROM over 0xC0000-0xFFFFF, the guest's writes there land nowhere (ROM)."""
    writer = {"kind": "uniform", "rate": "1MiB/s", "working_set": "256KiB", "offset": "768KiB"}
    result = simulate(tiny(machine={"vcpus": [{"count": 1, "workload": writer}]}, migration={"start_at": "5ms"},
                           timeline=[{"at": "0ms", "pam": {"enabled": shadow_rom}}]))
    check = of(result.events, ev.OracleCheck)[-1]
    assert (check.unassigned_writes > 0) == shadow_rom
    assert check.stale_pages == 0


def test_a_fused_call_that_neither_sends_nor_waits_is_an_error(monkeypatch):
    def idle(self, t0_ms):
        return False
        yield

    monkeypatch.setattr(FusedSlices, "run", idle)
    result = run(tiny(), progress=False)
    assert result.error == "BrokenInvariant: the fused send loop returned without sending or waiting"
