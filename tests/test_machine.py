"""Machine presets, the listeners devices register, and memory-map actions (the timeline)."""

from __future__ import annotations

import numpy as np
import simpy
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import of, scenario, simulate
from dirtysim.cli import main
from dirtysim.events import schema as ev
from dirtysim.events.log import Recorder
from dirtysim.machine import Machine
from dirtysim.scenario.schema import TimelineEntry
from dirtysim.timeline import apply_action

DEVICES = [{"kind": "vhost-net", "queues": 2, "rx": "100Mbit/s", "buffers": "4MiB"},
           {"kind": "vhost-net", "queues": 2, "rx": "100Mbit/s", "buffers": "4MiB"},
           {"kind": "virtio-blk"}, {"kind": "virtio-blk"}, {"kind": "vfio-pci"}]


def _machine(**over):
    sc = scenario(**over)
    env = simpy.Environment()
    rec = Recorder(lambda: env.now)
    return sc, rec, Machine(env, sc, rec, np.random.SeedSequence(sc.seed))


def _registered(rec):
    return [(e.listener, e.address_space) for e in of(rec.events, ev.ListenerRegistered)]


def test_kvm_registration_order():
    """kvm-memory, kvm-io, vhost per vhost device, device-memory, virtio per virtio device, vfio."""
    _, rec, _ = _machine(machine={"devices": DEVICES, "device_memory": "4GiB"})
    assert _registered(rec) == [("kvm-memory", "memory"), ("kvm-io", "I/O"), ("vhost", "memory"),
                                ("vhost", "memory"), ("device-memory", "device-memory")] + \
        [("virtio", "memory")] * 4 + [("vfio", "memory")]


def test_tcg_registration_and_no_eventfds():
    sc, rec, machine = _machine(machine={"accel": "tcg", "devices": [{"kind": "virtio-blk"}],
                                         "vcpus": [{"count": 2, "workload": {"kind": "uniform",
                                                                             "rate": "1MiB/s"}}]})
    names = _registered(rec)
    assert ("kvm-memory", "memory") not in names and ("kvm-io", "I/O") not in names
    assert names[:4] == [("tcg", "cpu-memory-0"), ("tcg", "cpu-smm-0"), ("tcg", "cpu-memory-1"), ("tcg", "cpu-smm-1")]
    entry = TimelineEntry.model_validate({"at": "1s", "ioeventfd": {"device": 0}})
    apply_action(entry, sc, machine, False, rec)
    assert of(rec.events, ev.TimelineAction)[-1].result.startswith("refused: ioeventfds need KVM")


def test_tcg_migration_loses_nothing():
    result = simulate(machine={"accel": "tcg"})
    assert result.stop_reason == "completed"
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0
    calls = [e for e in of(result.events, ev.ListenerCall) if e.listener == "tcg"]
    assert any(e.hook == "log_global_after_sync" for e in calls) and any(e.hook == "commit" for e in calls)


def test_atomic_memslot_update_stalls_every_vcpu():
    """PAM on: the RAM slot is deleted and three slots overlap it: KVM holds all vCPUs out (commit f39b7d2b)."""
    result = simulate(timeline=[{"at": "100ms", "pam": {"enabled": True}}, {"at": "150ms", "bar": {
        "device": 0, "addr": "64GiB"}}], machine={"devices": [{"kind": "virtio-net"}]})
    updates = [e for e in of(result.events, ev.KvmMemslotUpdate) if e.t_ns > 0]
    assert [(u.deleted, u.added, u.inhibited) for u in updates] == [(1, 3, True)]  # the BAR is MMIO: no memslot
    stalls = [e.inhibit_ns for e in of(result.events, ev.VcpuStats)]
    assert sum(stalls) == 2 * updates[0].stall_ns > 0
    assert of(result.events, ev.OracleCheck)[-1].lost_pages == 0


def test_hotplug_during_migration_is_refused_by_default():
    result = simulate(machine={"device_memory": "1GiB"}, timeline=[{"at": "400ms", "hotplug": {
        "id": "dimm0", "size": "256MiB"}}])
    action = of(result.events, ev.TimelineAction)[0]
    assert action.result == "refused: device_add not allowed while migrating"


def test_migration_across_a_hotplug_stays_correct():
    """what_if: the new RAMBlock gets its bitmaps (all dirty), the scan restarts, nothing is lost."""
    result = simulate(machine={"device_memory": "1GiB", "memory": {"size": "1GiB", "zero_fraction": 0.25}},
                      timeline=[{"at": "400ms", "hotplug": {"id": "dimm0", "size": "256MiB"}}],
                      what_if={"hotplug_during_migration": True})
    action = of(result.events, ev.TimelineAction)[0]
    assert action.result == "done"
    syncs_before = [s for s in of(result.events, ev.BitmapSync) if s.seq < action.seq]
    assert syncs_before, "the hotplug must land in the middle of the migration"
    check = of(result.events, ev.OracleCheck)[-1]
    assert (check.at, check.stale_pages, check.lost_pages) == ("switchover", 0, 0)
    sent = sum(e.normal + e.zero for e in of(result.events, ev.Transfer))
    assert sent >= (1 << 30) // 4096 + (256 << 20) // 4096  # the DIMM's pages were all sent too


# -- a hypothesis test: the listeners' views always equal the FlatView ------------------------------------

DIMM = 256 << 10  # DIMMs are 1..8 x 256 KiB in a 4 MiB device-memory area

actions = st.lists(st.one_of(
    st.builds(lambda i, n: {"hotplug": {"id": f"d{i}", "size": n * DIMM}}, st.integers(0, 3), st.integers(1, 8)),
    st.builds(lambda i: {"unplug": {"id": f"d{i}"}}, st.integers(0, 3)),
    st.builds(lambda d, a: {"bar": {"device": d, "addr": (1 << 36) + (a << 24)}}, st.integers(0, 4),
              st.integers(0, 200)),  # above RAM and the DIMM area, as the scenario validator demands
    st.builds(lambda on: {"pam": {"enabled": on}}, st.booleans()),
    st.builds(lambda d, on: {"ioeventfd": {"device": d, "enabled": on}}, st.integers(0, 3), st.booleans()),
), max_size=14)


def _applicable(machine, kind: str, act: dict, fds: set) -> bool:
    """Skip steps the scenario validator would reject (double plug, unplug of nothing, area full, no-op fds)."""
    if kind == "hotplug":
        return act["id"] not in machine.dimms and machine._free_dimm_offset(act["size"]) + act["size"] <= 4 << 20
    if kind == "unplug":
        return act["id"] in machine.dimms
    if kind == "ioeventfd":
        return (act["device"] in fds) != act["enabled"]
    return True


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=actions)
def test_listener_views_follow_the_flatview(steps):
    """After any sequence of map changes, KVM's memslots and vfio's DMA mappings equal the RAM ranges of the
    current FlatView (a vfio BAR's mmap, a RAM device, included), and every vhost memory table holds exactly its
    non-ROM RAM ranges that are not RAM devices."""
    sc, rec, machine = _machine(machine={"devices": DEVICES, "device_memory": "4MiB",
                                         "memory": {"size": "64MiB"},
                                         "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "1MiB/s"}}]},
                                timeline=[{"at": "30s", "pam": {"enabled": False}}])  # the board gets pc.rom
    vfio = next(d["vfio"] for d in machine.devices if "vfio" in d)
    fds: set[int] = set()
    for step in steps:
        kind, act = next(iter(step.items()))
        if not _applicable(machine, kind, act, fds):
            continue
        apply_action(TimelineEntry.model_validate({"at": "0s", **step}), sc, machine, False, rec)
        if kind == "ioeventfd":
            (fds.add if act["enabled"] else fds.discard)(act["device"])
        view = machine.as_memory.current_map
        ram = {(fr.addr, fr.size) for fr in view if fr.mr.is_ram}
        assert {(s.gpa, s.size) for s in machine.kvm.slots} == ram
        assert set(vfio.mappings.items()) == ram
        writable = {(fr.addr, fr.size) for fr in view if fr.mr.is_ram and not fr.mr.is_rom and not fr.mr.is_ram_device}
        for vhost in machine.trackers[1:]:
            assert {(s.offset_within_address_space, s.size) for s in vhost.sections} == writable
        # an ioeventfd counts where its BAR is rendered (a newer BAR at the same address hides an older one)
        visible = [d for d in fds if any(fr.mr is machine.devices[d]["bar"] for fr in view)]
        assert len(machine.kvm_listener.ioeventfds) == sum(machine.devices[d]["spec"].queues for d in visible)


def test_listeners_cli_lists_and_traces(tmp_path):
    import yaml

    from builders import BASE, merge

    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(merge(BASE, {"machine": {"devices": DEVICES[2:4]},
                                                "timeline": [{"at": "1s", "pam": {"enabled": True}}]})))
    res = CliRunner().invoke(main, ["listeners", str(path)])
    assert res.exit_code == 0
    assert [line.split()[0] for line in res.output.splitlines()] == ["kvm-memory", "kvm-io", "virtio", "virtio"]
    res = CliRunner().invoke(main, ["listeners", str(path), "--trace"])
    traced = res.output.split("# at 1s: pam")[1].splitlines()
    dels = [i for i, line in enumerate(traced) if "region_del" in line]
    adds = [i for i, line in enumerate(traced) if "region_add" in line]
    assert dels and adds and max(dels) < min(adds)  # fact 15: every deletion before any addition


def test_vhost_log_grows_to_the_highest_gpa_on_commit():
    """``vhost_get_log_size``: one 64-bit word per 256 KiB up to the last GPA; grown (with headroom) at commit."""
    sc, rec, machine = _machine(machine={"devices": DEVICES[:1], "device_memory": "1GiB"})
    vhost = machine.trackers[1]
    vhost.log_global_start()
    assert vhost.log_size() == (1 << 30) // (256 << 10)  # 1 GiB of RAM at GPA 0
    entry = TimelineEntry.model_validate({"at": "0s", "hotplug": {"id": "d0", "size": "256MiB"}})
    apply_action(entry, sc, machine, False, rec)
    top = sc.device_memory_base() + (256 << 20)
    assert vhost.log_size() == (top - 1) // (256 << 10) + 1
    assert vhost.log.words.shape[0] >= vhost.log_size()
