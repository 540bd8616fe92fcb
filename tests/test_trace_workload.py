"""Workload kind ``trace``: a page-write trace file replayed as one vCPU's writes."""

from __future__ import annotations

import numpy as np
import pytest

from builders import NO_COSTS, of, scenario, simulate
from dirtysim.dirtyrate.config import DirtyRateConfig
from dirtysim.events import schema as ev
from dirtysim.guest.trace import TraceError, load_trace
from dirtysim.scenario.load import ScenarioError, load_scenario
from dirtysim.sim import run_dirtyrate

pytestmark = pytest.mark.rules


def _trace(tmp_path, text: str):
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_each_line_writes_every_page_its_range_touches(tmp_path):
    path = _trace(tmp_path, "# a comment\n0,0x1000\n\n5,8192,8193   # three pages\n5,0x10ff0,32\n")
    times, pages = load_trace(path)
    assert pages.tolist() == [1, 2, 3, 4, 16, 17] and times.tolist() == [0, 5, 5, 5, 5, 5]


@pytest.mark.parametrize("text,message", [
    ("10,0\n5,0\n", ":2: time goes back (previous line at 10 ns)"),
    ("0\n", ":1: expected time_ns,gpa[,length], got 1 fields"),
    ("0,zz\n", ":1: invalid literal"),
    ("0,0,0\n", ":1: time, address and length must be non-negative (length at least 1)"),
    ("# nothing\n", ": the trace has no writes"),
])
def test_a_bad_trace_names_its_line(tmp_path, text, message):
    path = _trace(tmp_path, text)
    with pytest.raises(TraceError) as exc:
        load_trace(path)
    assert str(exc.value).startswith(str(path)) and message in str(exc.value)


def test_a_trace_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"0,0\n\xff\n")
    with pytest.raises(TraceError, match="not UTF-8"):
        load_trace(path)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")


def _guest(path, tracking=None, accel="kvm"):
    return scenario(costs=NO_COSTS, dirty_tracking=tracking or {}, machine={
        "accel": accel, "memory": {"size": "64MiB", "zero_fraction": 0.0}, "vcpus": [
            {"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"}},
            {"count": 1, "workload": {"kind": "trace", "file": str(path)}}]})


def test_the_trace_writes_what_it_says_when_it_says(tmp_path):
    """Window 100..1100 ms: the lines at 50 ms and 1200 ms fall outside, the three inside write 1 + 2 + 16 pages."""
    path = _trace(tmp_path, "50000000,0\n100000000,0x100000\n600000000,0x200000,8192\n"
                            "1099000000,0x300000,65536\n1200000000,0x400000\n")
    result = run_dirtyrate(_guest(path), DirtyRateConfig.from_qmp(1, mode="dirty-bitmap"), 10**8)
    (m,) = of(result.events, ev.DirtyRateMeasured)
    uniform = 256  # the other vCPU: 1 MiB/s for 1 s
    assert m.guest_writes == uniform + 19 and m.dirty_pages == m.written_pages


@pytest.mark.parametrize("tracking,accel", [({}, "kvm"), ({"mode": "ring", "manual_protect": False,
                                                              "initially_set": False, "ring_size": 1024}, "kvm"),
                                            ({"manual_protect": False, "initially_set": False}, "tcg")])
def test_a_migration_with_a_trace_loses_nothing(tmp_path, tracking, accel):
    lines = "".join(f"{t * 10_000_000},{(t * 37 % 4000) * 4096},16384\n" for t in range(300))
    path = _trace(tmp_path, lines)  # 300 writes of 4 pages over 3 s, scattered
    sc = _guest(path, tracking, accel).model_copy()
    result = simulate(**{"costs": NO_COSTS, "dirty_tracking": tracking, "migration": {"start_at": "200ms",
                         "max_bandwidth": "32MiB/s", "timeout": "20s"}, "machine": {
                         "accel": accel, "memory": {"size": "64MiB", "zero_fraction": 0.0}, "vcpus": [
                             {"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"}},
                             {"count": 1, "workload": {"kind": "trace", "file": str(path)}}]}})
    assert sc.machine.vcpus[1].workload.rate == 0
    check = of(result.events, ev.OracleCheck)[-1]
    assert result.stop_reason == "completed" and check.lost_pages == 0
    trace_writes = sum(v.writes for v in of(result.events, ev.VcpuStats) if v.vcpu == 1)
    assert 0 < trace_writes <= 1200


@pytest.mark.parametrize("group,message", [
    ("{count: 2, workload: {kind: trace, file: F}}", "machine.vcpus.0.count: a trace is replayed by one vCPU"),
    ("{count: 1, workload: {kind: trace, file: F, rate: 1MiB/s}}", "a trace sets its own times; it takes no rate"),
    ("{count: 1, workload: {kind: trace, file: NOPE}}", "cannot read the trace"),
])
def test_bad_trace_workloads_fail_before_the_run(tmp_path, group, message):
    trace = _trace(tmp_path, "0,0\n")
    path = tmp_path / "s.yaml"
    path.write_text("machine:\n  memory: {size: 64MiB}\n  vcpus:\n    - " +
                    group.replace("F", str(trace)).replace("NOPE", str(tmp_path / "nope.csv")) + "\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert message in str(exc.value)


def test_the_shipped_example_trace_loads():
    times, pages = load_trace("scenarios/traces/example.csv")
    assert len(pages) == 6 * 16 + 6 * 256 and np.all(np.diff(times) >= 0)
