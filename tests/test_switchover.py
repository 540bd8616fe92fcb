"""The switchover's own costs (``migration_completion_precopy`` -> ``vm_stop_force_state``) and the downtime split.

Downtime = stopping the VM (vCPU pause, vhost device stop, block drain) + the
final sync + the remaining RAM at link speed + the device state.
"""

from __future__ import annotations

import pytest

from builders import NO_COSTS, merge, of, simulate
from dirtysim.events import schema as ev
from dirtysim.report.tables import summary

pytestmark = pytest.mark.rules

DEVICES = [{"kind": "vhost-user-net", "queues": 2, "rx": "0B/s", "buffers": "8MiB"},
           {"kind": "vhost-user-blk", "queues": 1, "read": "0B/s", "buffers": "8MiB"},
           {"kind": "virtio-blk"}, {"kind": "vfio-pci", "state": "2MiB"}]
STOP = {"vm_stop_per_vcpu": "10us", "vhost_stop_per_queue": "50us", "block_drain": "500us"}


def run(costs: dict, devices=DEVICES):
    """An idle 64 MiB guest with 3 vCPUs on 1 Gbit/s, unlimited bandwidth, no other cost."""
    return simulate(**{"machine": {"memory": {"size": "64MiB", "zero_fraction": 0.0},
                                   "vcpus": [{"count": 3, "workload": {"kind": "uniform", "rate": "0B/s"}}],
                                   "devices": devices},
                       "network": {"bandwidth": "1Gbit/s"}, "costs": merge(NO_COSTS, costs),
                       "migration": {"max_bandwidth": "0B/s", "start_at": "0ns"}})


def test_stopping_the_vm_costs_each_vcpu_each_virtqueue_and_each_block_device():
    res = run(STOP)
    steps = [(e.step, e.device, e.cost_ns) for e in of(res.events, ev.SwitchoverStep)]
    assert steps == [("vm-stop", None, 3 * 10_000),
                     ("vhost-stop", "0:vhost-user-net", 2 * 2 * 50_000),  # two queue pairs: rx and tx each
                     ("vhost-stop", "1:vhost-user-blk", 50_000),
                     ("block-drain", "1:vhost-user-blk", 500_000),
                     ("block-drain", "2:virtio-blk", 500_000)]
    stopped = next(e.t_ns for e in res.events if isinstance(e, ev.VcpusStopped))
    device = next(e.t_ns for e in res.events if isinstance(e, ev.MigrationStatus) and e.status == "device")
    assert device - stopped == 30_000 + 250_000 + 1_000_000  # DEVICE once the VM is stopped
    assert next(e for e in res.events if isinstance(e, ev.BitmapSync) and e.reason == "final").t_ns >= device


def test_the_downtime_is_the_sum_of_its_parts():
    res = run(STOP)
    s = summary(res.events)
    parts = s["dirtysim"]["downtime-breakdown-ms"]
    assert (parts["vm-stop"], parts["vhost-stop"], parts["block-drain"]) == (0.03, 0.25, 1.0)
    # device state: the machine's 256 KiB, 4 KiB for each virtio device, 2 MiB for the vfio device
    # (and QEMU_VM_EOF); then the vmdesc, in the same flush
    state = next(e for e in of(res.events, ev.Transfer) if e.kind == "device-state")
    vmdesc = next(e for e in of(res.events, ev.Transfer) if e.kind == "vmdesc")
    assert state.bytes == (256 << 10) + 3 * (4 << 10) + (2 << 20) + 1
    assert vmdesc.bytes == 5 + (16 << 10)
    assert parts["device-state"] == round((state.bytes + vmdesc.bytes) * 8 / 1e6, 3)  # 8 ns per byte at 1 Gbit/s
    assert sum(parts.values()) == pytest.approx(s["dirtysim"]["downtime-ns"] / 1e6, abs=0.002)


def test_without_stop_costs_the_stop_is_free():
    free = run({}, devices=[])
    costly = run(STOP, devices=[])
    d0, d1 = (summary(r.events)["dirtysim"]["downtime-ns"] for r in (free, costly))
    assert d1 - d0 == 30_000  # only the three vCPUs: no device to stop or drain


def test_no_cancel_once_the_vm_is_stopping():
    """A cancel requested while the devices stop is refused: the VM is stopped (migrate-cancel after vm stop)."""
    res = simulate(**{"machine": {"memory": {"size": "64MiB", "zero_fraction": 0.0},
                                  "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "0B/s"}}],
                                  "devices": [{"kind": "virtio-blk"}]},
                      "network": {"bandwidth": "1Gbit/s"}, "costs": merge(NO_COSTS, {"block_drain": "1s"}),
                      "migration": {"max_bandwidth": "0B/s", "start_at": "0ns"}})
    stopped = next(e.t_ns for e in res.events if isinstance(e, ev.VcpusStopped))
    res2 = simulate(**{"machine": {"memory": {"size": "64MiB", "zero_fraction": 0.0},
                                   "vcpus": [{"count": 1, "workload": {"kind": "uniform", "rate": "0B/s"}}],
                                   "devices": [{"kind": "virtio-blk"}]},
                       "network": {"bandwidth": "1Gbit/s"}, "costs": merge(NO_COSTS, {"block_drain": "1s"}),
                       "migration": {"max_bandwidth": "0B/s", "start_at": "0ns"},
                       "timeline": [{"at": f"{stopped + 500_000_000}ns", "migrate-cancel": {}}]})
    assert summary(res2.events)["status"] == "completed"
