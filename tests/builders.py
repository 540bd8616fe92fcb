"""Small scenarios for tests, built as dicts and validated by the real schema."""

from __future__ import annotations

import copy

from dirtysim.events import schema as ev
from dirtysim.accel.kvm import KVM_TRACKING_COSTS
from dirtysim.migration.sending import SENDING_COSTS
from dirtysim.scenario.schema import Scenario
from dirtysim.sim import run

BASE = {
    "name": "test",
    "seed": 3,
    "machine": {
        "memory": {"size": "1GiB", "zero_fraction": 0.25},
        "vcpus": [{"count": 2, "workload": {"kind": "hotset", "rate": "40MiB/s", "hot": "64MiB", "hot_share": 0.9}}],
    },
    "network": {"bandwidth": "10Gbit/s"},
    "migration": {"max_bandwidth": "512MiB/s", "start_at": "200ms", "timeout": "30s"},
}

NO_SENDING_COSTS = {name: "0ns" for name in SENDING_COSTS}  # a slice costs its wire time only
NO_COSTS = {"write_fault": "0ns", "get_dirty_log_per_gib": "0ns", "clear_dirty_log_per_page": "0ns", "clear_dirty_log_huge_per_page": "0ns",
            "bitmap_sync_per_gib": "0ns", **NO_SENDING_COSTS, **{name: "0ns" for name in KVM_TRACKING_COSTS}}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def scenario(**over) -> Scenario:
    return Scenario.model_validate(merge(BASE, over))


def simulate(**over):
    result = run(scenario(**over), progress=False)
    assert result.error is None, result.error
    return result


def of(events, cls):
    return [e for e in events if isinstance(e, cls)]


def syncs(events) -> list[ev.BitmapSync]:
    return of(events, ev.BitmapSync)
