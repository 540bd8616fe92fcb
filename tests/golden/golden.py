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

# scenario stem -> overrides applied to it and to each of its sweep variants
SHRINK: dict[str, list[str]] = {
    "bench-1t-64vcpu": ["machine.memory.size=64GiB", "machine.vcpus.0.workload.hot=8GiB", "migration.timeout=1s"],
    "bench-64g-16vcpu": ["migration.timeout=2s"],
    "lab-db": ["migration.timeout=3s"],
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


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    update()
