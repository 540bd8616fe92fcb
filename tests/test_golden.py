"""Golden fingerprints: every shipped scenario and sweep variant still makes the same event log.

Update on purpose with ``make golden`` (see tests/golden/golden.py).
"""

from __future__ import annotations

import pytest

from golden import golden

RUNS = list(golden.runs())
GOLDEN = golden.load()


def test_every_scenario_and_variant_has_a_golden_fingerprint():
    assert sorted(GOLDEN) == sorted(name for name, _, _ in RUNS), "scenarios changed: run `make golden`"


@pytest.mark.parametrize("name,path,overrides", RUNS, ids=[r[0] for r in RUNS])
def test_fingerprint_unchanged(name, path, overrides):
    entry = GOLDEN[name]
    assert entry["set"] == overrides, f"{name}: shrink overrides changed: run `make golden`"
    assert golden.fingerprint(path, overrides) == entry["fingerprint"], (
        f"{name}: the event log changed; if intended, run `make golden` and commit the new fingerprints")
