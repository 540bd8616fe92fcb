"""``dirtysim.load(DIR)``: a run's tables as pandas DataFrames (the optional ``[pandas]`` extra)."""

from __future__ import annotations

import csv
import json
import sys

import pytest

import dirtysim
from builders import simulate
from dirtysim.report.files import write_run


def test_load_returns_the_run_tables(tmp_path):
    result = simulate(seed=8)
    write_run(result, tmp_path, plots=False)
    t = dirtysim.load(tmp_path)
    rounds = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert len(t.rounds) == len(rounds) and list(t.rounds.columns) == list(rounds[0])
    assert t.rounds["remaining"].tolist() == [int(r["remaining"]) for r in rounds]
    assert len(t.vcpus) == 2 * len(rounds)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(t.summary) == 1 and t.summary.loc[0, "ram.transferred"] == summary["ram"]["transferred"]
    assert t.summary.loc[0, "dirtysim.fingerprint"] == result.fingerprint
    assert len(t.events) == len(result.events) and t.events["seq"].tolist() == list(range(len(result.events)))
    sent = t.events[(t.events["type"] == "transfer") & (t.events["kind"] == "pages")]
    assert int(sent["normal"].sum()) == summary["ram"]["normal"]


def test_load_without_pandas_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(ImportError, match=r"^dirtysim.load needs pandas: pip install 'dirtysim\[pandas\]'$"):
        dirtysim.load(tmp_path)
