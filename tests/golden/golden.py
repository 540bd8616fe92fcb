"""Golden event-log fingerprints of every shipped scenario (and every sweep variant).

A fingerprint is the blake2b of a run's event lines: any change in what the
engine decides (a sync, a send slice, a clear, a listener call, a field of the
resolved scenario) changes it. The test in ``tests/test_golden.py`` reruns each
entry and compares. When a change of behaviour is intended, update the file on
purpose and commit it with the change that explains it:

    make golden        # = .venv/bin/python tests/golden/golden.py

Scenarios that take more than about a second are run shrunk by the ``--set``
overrides in ``SHRINK`` (a shorter ``migration.timeout``); the quick start and
the memory map run as written, to completion.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("fingerprints.json")
# Each entry's summary with the sending side's per-page costs at zero: first recorded before those costs existed
# (commit 4824fc7), so they stay additive (tests/test_sending.py).
SUMMARIES = Path(__file__).with_name("summaries-no-sending-costs.json")

# scenario stem -> overrides applied to it and to each of its sweep variants
SHRINK: dict[str, list[str]] = {
    "bench-1t-64vcpu": ["machine.memory.size=64GiB", "machine.vcpus.0.workload.hot=8GiB", "migration.timeout=1s"],
    "bench-64g-16vcpu": ["migration.timeout=2s"],
    "lab-db": ["migration.timeout=3s"],
    "multifd": ["machine.memory.size=4GiB", "machine.vcpus.0.workload.hot=512MiB"],
    "zero-heavy": ["machine.memory.size=8GiB"],
}


def runs() -> Iterator[tuple[str, Path, list[str]]]:
    """(name, scenario file, overrides) for each scenario in scenarios/ and each variant in scenarios/variants/."""
    from dirtysim.sweep import load_variants

    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        shrink = SHRINK.get(path.stem, [])
        yield path.stem, path, shrink
        variants = ROOT / "scenarios" / "variants" / path.name
        if variants.exists():
            for name, over in load_variants(variants).items():
                yield f"{path.stem}/{name}", path, [*shrink, *over]


@functools.lru_cache(maxsize=None)
def result(path: Path, overrides: tuple[str, ...]):
    """The run of one entry, kept for the session: the golden and the replay tests share it."""
    from dirtysim.scenario.load import load_scenario
    from dirtysim.sim import run

    res = run(load_scenario(path, list(overrides)), progress=False)
    assert res.error is None, f"{path} {overrides}: {res.error}"
    return res


def fingerprint(path: Path, overrides: list[str]) -> str:
    return result(path, tuple(overrides)).fingerprint


def load() -> dict:
    return json.loads(GOLDEN.read_text())


def no_sending_costs(path: Path, overrides: list[str]) -> list[str]:
    """Overrides that zero the sending side's and the switchover's costs, and each device's own state."""
    from dirtysim.accel.kvm import KVM_TRACKING_COSTS
    from dirtysim.migration.sending import SENDING_COSTS
    from dirtysim.scenario.load import load_scenario

    devices = load_scenario(path, overrides).machine.devices
    return [f"costs.{name}=0ns" for name in (*SENDING_COSTS, *KVM_TRACKING_COSTS)] + [f"machine.devices.{i}.state=0B"
                                                               for i in range(len(devices))]


def summary_without_sending_costs(path: Path, overrides: list[str]) -> dict:
    """The run's summary (without its event count, which the sending events' fields do not change)."""
    from dirtysim.report.tables import summary

    out = summary(result(path, tuple(overrides + no_sending_costs(path, overrides))).events)
    out["dirtysim"].pop("events")
    return json.loads(json.dumps(out))  # as the file holds it: tuples as lists


def update() -> None:
    table = {name: {"scenario": str(path.relative_to(ROOT)), "set": over, "fingerprint": fingerprint(path, over)}
             for name, path, over in runs()}
    old = load() if GOLDEN.exists() else {}
    for name, entry in table.items():
        before = old.get(name, {}).get("fingerprint")
        if before != entry["fingerprint"]:
            print(f"{name}: {before} -> {entry['fingerprint']}")
    for name in old.keys() - table.keys():
        print(f"{name}: removed")
    GOLDEN.write_text(json.dumps(table, indent=2) + "\n")
    print(f"wrote {GOLDEN.relative_to(ROOT)} ({len(table)} runs)")
    summaries = {name: summary_without_sending_costs(path, over) for name, path, over in runs()}
    SUMMARIES.write_text(json.dumps(summaries, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SUMMARIES.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    update()
